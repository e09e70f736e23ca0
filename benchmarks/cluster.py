"""The Ray executor against the in-process one, and what paper.toml would take on 1, 8 and 64 workers.

    python benchmarks/cluster.py compare     # part 1: the two executors side by side, in one run (about 10 min)
    python benchmarks/cluster.py paper       # part 2: paper.toml's units, measured and projected (about 25 min)

Part 1 runs two sweeps, one dominated by the small CNN (2000 images in 8 chunks) and one by the VGG16 (200 images in
8 chunks), FGSM and PGD-20/PGD-10 by both implementations, first in this process, then on a local Ray started for the
sweep with two one-CPU workers (each with one TensorFlow thread). It prints the wall times, their ratio, and Ray's
overhead per unit: the Ray run's wall time less the start of Ray, less the work its two workers did (the sum of the
units' own times over two) and less what the in-process run spent outside its units (loading, the report), divided
by the units. Both runs' records are compared byte for byte.

Part 2 plans paper.toml (its units and their kinds), then measures a representative unit of every kind on Ray with
two one-CPU workers, on the first 32 test images (one unit of 32 per kind); every measurement is taken warm (the same
units run twice, the second timed) except AutoAttack's, whose cost is the examples that survive its first attacks. Per-example costs times the paper's chunk (1000 images) give each
unit's expected time; a list schedule of those units, longest first as the executor sends them, with each model's
minimal-ε unit after that model's attacks, gives the expected wall time on 1, 8 and 64 workers and chunk sizes 1000,
250 and 100 (with part 1's overhead per unit added to each unit).

Models are trained by the sweeps' `train` tables the first time (results/models), outside the timings.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from advsweep.experiments.config import RunSpec, parse_config  # noqa: E402
from advsweep.experiments.sweep import Unit, plan, prepare_models, run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"small_cnn": '{ kind = "small_cnn", train_examples = 10000, epochs = 1 }',
          "vgg16": '{ kind = "vgg16", train_examples = 5000, epochs = 2 }'}


def _config(text: str, run: RunSpec | None = None) -> Any:
    config = parse_config(tomllib.loads(text), base=ROOT)
    return dataclasses.replace(config, run=run) if run is not None else config


def _sweep_text(model: str, count: int, chunk: int, steps: int) -> str:
    return f'''
name = "bench-{model}"
seed = 0
chunk_size = {chunk}
[examples]
count = {count}
selection = "first"
[[models]]
name = "{model}"
train = {MODELS[model]}
[epsilons]
linf = [0.1, 0.2, 0.3]
[[attacks]]
name = "fgsm"
[[attacks]]
name = "pgd"
steps = {steps}
[minimal]
enabled = false
'''


def _units(run_dir: Path) -> dict[str, dict[str, Any]]:
    return json.loads((run_dir / "manifest.json").read_text())["units"]


def _same_records(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.glob("records/*/*.parquet"))
    return bool(files) and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def ray_start_seconds() -> float:
    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.get(ray.remote(lambda: 1).remote())
    seconds = time.perf_counter() - started
    ray.shutdown()
    return seconds


def compare(results: Path) -> dict[str, Any]:
    """Part 1: in-process against a local Ray with two one-CPU workers, side by side."""
    rows = {}
    start = ray_start_seconds()
    print(f"Ray's start (ray.init of a two-CPU local Ray and one task): {start:.1f} s")
    for model, count, chunk, steps in (("small_cnn", 2000, 250, 20), ("vgg16", 200, 25, 10)):
        text = _sweep_text(model, count, chunk, steps)
        prepare_models(_config(text), results / "models")  # trained once, outside the timings
        timings = {}
        for executor in ("local", "ray"):
            config = _config(text, RunSpec(executor=executor, cpus_per_task=1))
            started = time.perf_counter()
            run_dir = run_sweep(config, results, run_id=executor)
            timings[executor] = (time.perf_counter() - started, run_dir)
        (local, local_dir), (ray_wall, ray_dir) = timings["local"], timings["ray"]
        units = _units(ray_dir)
        work = sum(u["seconds"] for u in units.values())
        local_work = sum(u["seconds"] for u in _units(local_dir).values())
        # what is neither units nor what the in-process run spends outside its units (loading, the report)
        overhead = (ray_wall - start - work / 2 - (local - local_work)) / len(units)
        rows[model] = {"units": len(units), "local_s": local, "ray_s": ray_wall, "ratio": local / ray_wall,
                       "ray_work_s": work, "local_work_s": local_work,
                       "overhead_per_unit_s": overhead, "identical_records": _same_records(local_dir, ray_dir)}
        print(f"{model}: {len(units)} units; in-process {local:.1f} s, Ray 2×1 CPU {ray_wall:.1f} s, ratio "
              f"{local / ray_wall:.2f}; units' own time: in-process {rows[model]['local_work_s']:.1f} s, on Ray "
              f"{work:.1f} s over 2 workers; Ray overhead per unit {overhead:.2f} s; records identical: "
              f"{rows[model]['identical_records']}")
    rows["ray_start_s"] = start
    return rows


# --------------------------------------------------------------------------------------------
# part 2: paper.toml


def _kind(unit: Unit) -> str:
    if unit.kind == "attack":
        assert unit.attack is not None
        return f"{unit.model}/{unit.attack.label}/{unit.implementation}"
    return f"{unit.model}/{unit.kind}"


def _schedule(durations: list[tuple[float, float, str, str]], workers: int) -> float:
    """Makespan of a list schedule: units sent in order of their estimated cost (longest first), each to the first
    free worker; a model's minimal-ε unit only once that model's attack units are done. ``durations``: (estimated
    cost, seconds, model, kind) per unit."""
    free = [0.0] * workers
    heapq.heapify(free)
    attacks_end: dict[str, float] = {}
    ordered = sorted((d for d in durations if d[3] != "minimal"), key=lambda d: -d[0])
    for _, seconds, model, kind in ordered:
        begin = heapq.heappop(free)
        heapq.heappush(free, begin + seconds)
        if kind == "attack":
            attacks_end[model] = max(attacks_end.get(model, 0.0), begin + seconds)
    end = max(free)
    for _, seconds, model, _ in (d for d in durations if d[3] == "minimal"):
        begin = max(heapq.heappop(free), attacks_end.get(model, 0.0))
        heapq.heappush(free, begin + seconds)
        end = max(end, begin + seconds)
    return max(end, max(free))


def paper(results: Path, overhead: float) -> None:
    """Part 2: measure each kind of paper.toml unit, then project the sweep's wall time."""
    raw = tomllib.loads((ROOT / "experiments" / "configs" / "paper.toml").read_text())
    full = parse_config(raw, base=ROOT)
    units = plan(full)
    kinds: dict[str, list[Unit]] = {}
    for unit in units:
        kinds.setdefault(_kind(unit), []).append(unit)
    print(f"paper.toml: {len(units)} units: " + ", ".join(
        f"{sum(1 for u in units if u.kind == k)} {k}" for k in ("clean", "attack", "minimal", "checks")))

    def reduced(count: int, autoattack: bool) -> Any:
        text = dict(raw, name=f"paper-sample-{'aa' if autoattack else 'main'}", chunk_size=count,
                    examples={"count": count, "selection": "first"},
                    attacks=[a for a in raw["attacks"] if (a["name"] == "autoattack") == autoattack],
                    minimal={**raw["minimal"], "examples": count, "enabled": not autoattack},
                    figures={"grid_examples": min(count, 6)})
        return dataclasses.replace(parse_config(text, base=ROOT), run=RunSpec(executor="ray", cpus_per_task=1))

    per_example: dict[str, float] = {}
    writing: dict[str, float] = {}  # the driver's time to write a unit's files, per example
    main_config, aa_config = reduced(32, False), reduced(32, True)
    prepare_models(main_config, results / "models")  # the paper's models: all 55,000 images (long the first time)
    run_sweep(main_config, results, run_id="cold")  # traces and loads everything in the workers
    for config, run_id, count in ((main_config, "warm", 32), (aa_config, "once", 32)):
        started = time.perf_counter()
        run_dir = run_sweep(config, results, run_id=run_id)
        print(f"  sample sweep {config.name} ({count} images): {time.perf_counter() - started:.0f} s")
        measured = _units(run_dir)
        for unit in plan(config):
            if config is aa_config and unit.kind != "attack":
                continue  # the clean pass and checks are measured on the 32 images
            per_example[_kind(unit)] = measured[unit.key]["seconds"] / (unit.stop - unit.start)
            writing[_kind(unit)] = measured[unit.key]["write_seconds"] / (unit.stop - unit.start)
    print("\nunit kind | units | measured s per example | expected s per unit (paper) | driver's writing, s per "
          "example")
    for kind, members in kinds.items():
        unit = members[0]
        print(f"{kind} | {len(members)} | {per_example[kind]:.3f} | {per_example[kind] * (unit.stop - unit.start):.0f}"
              f" | {writing.get(kind, float('nan')):.5f}")
    from advsweep.experiments.sweep import prepare_models as load

    sizes = {m.spec.name: m.file.stat().st_size / 1e6 for m in load(full, results / "models")}
    print(f"object store: the examples {10000 * 28 * 28 * 4 / 1e6:.0f} MB (float32), the model files "
          + ", ".join(f"{name} {mb:.0f} MB" for name, mb in sizes.items()) + ", put once per sweep")
    for chunk in (1000, 250, 100):
        config = dataclasses.replace(full, chunk_size=chunk)
        durations = [(u.cost, per_example[_kind(u)] * (u.stop - u.start) + overhead, u.model, u.kind)
                     for u in plan(config)]
        total = sum(d[1] for d in durations)
        longest = max(durations, key=lambda d: d[1])
        walls = {n: _schedule(durations, n) for n in (1, 8, 64)}
        print(f"chunk_size {chunk}: {len(durations)} units, {total / 3600:.1f} worker-hours; longest unit "
              f"{longest[1] / 3600:.2f} h ({longest[2]}/{longest[3]}); expected wall: "
              + ", ".join(f"{n} worker{'s' if n > 1 else ''} {w / 3600:.1f} h" for n, w in walls.items()))


def main() -> None:
    part = sys.argv[1] if len(sys.argv) > 1 else "compare"
    results = Path(os.environ.get("ADVSWEEP_RESULTS", ROOT / "results"))
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(scratch)
        (results / "models").mkdir(parents=True, exist_ok=True)
        (runs / "models").symlink_to(results / "models", target_is_directory=True)  # trained models are kept
        if part == "compare":
            print(json.dumps(compare(runs), indent=1))
        elif part == "paper":
            overhead = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
            paper(runs, overhead)
        else:
            raise SystemExit(f"unknown part {part!r}: compare or paper")


if __name__ == "__main__":
    main()
