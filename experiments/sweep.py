"""The sweep runner: a config file in, a run folder of per-example records, tables, figures and checks out.

Work is split into units (the clean pass per model; each attack × implementation per model and chunk
of examples; the minimal-perturbation bisection; the model's checks). A unit's files are written
atomically and then a ``done/<unit>.json`` names them with their sha256; a unit counts as finished
only if that file exists and every file it names is intact. Run the same command after a Ctrl-C or a
killed process and the sweep continues from the finished units. Each unit's result depends only on
the model, its examples and the seeds, never on what ran before it in the same process, so a resumed
sweep ends with the same records as an uninterrupted one.

The run folder ``results/<sweep name>/<run id>/`` is named by a hash of what makes the records: the resolved config,
the models' content hashes, a digest of the sources that compute records as they ran (committed or not; see
:data:`advsweep.experiments.units.RECORD_SOURCES`) and the device-dependent choices (device kind, rows per model
call). The same sweep of the same code on the same kind of device always lands in the same folder; a changed attack,
config or device kind starts a new one; a changed figure, table or command line does not (``advsweep report``
rebuilds the outputs from the records). A folder named by ``--run-id`` is resumed only by the sweep that made it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from advsweep.assets.files import sha256_file as file_sha256
from advsweep.assets.files import write_atomic
from advsweep.experiments.config import ModelSpec, SweepConfig, SweepError, digest, plain_name, select_examples
from advsweep.experiments.units import (
    Finish,
    LoadedModel,
    SweepInputs,
    Unit,
    UnitOutput,
    UnloadableModel,
    classifier_from_file,
    compute_unit,
    deterministic_kernels,
    escalation_triggers,
    execution_plan,
    grid_upper_bounds,
    plan,
    source_digest,
    unit_is_done,
    write_unit,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# models


def prepare_models(config: SweepConfig, models_root: Path) -> list[LoadedModel]:
    """Load every model of the sweep, training those given as a model config that are not trained yet.

    Every model given by ``path``, and every already trained one, is loaded before any model is trained,
    so that a corrupt file stops the sweep before an hour of training; the error names the config key.
    """
    from advsweep.experiments.reporting.plots import training_curves
    from advsweep.models.config import ModelConfig
    from advsweep.models.training import train_model
    from advsweep.models.user import code_digest, content_sha256, model_file, user_code_files

    data = config.data

    def file_of(spec: ModelSpec) -> Path:
        if spec.path is not None:
            return model_file(spec.path)
        assert spec.train is not None
        return models_root / spec.train.model_id / "model.keras"

    def load(index: int, spec: ModelSpec) -> LoadedModel:
        file = file_of(spec)
        key = f"models[{index}].{'path' if spec.path is not None else 'train'}"
        written_by_train = (file.parent / "config.json").is_file() and file.name == "model.keras"
        fix = ("point `path` at a .keras, .h5 or SavedModel classifier or a folder written by `advsweep train`"
               if spec.path is not None else f"delete {file.parent} so that the sweep trains it again")

        def unloadable(detail: str) -> SweepError:
            return SweepError(f"config key `{key}` (model {spec.name!r}): {file} cannot be loaded ({detail}); {fix}")

        metrics: dict[str, Any] = {}
        try:  # a trained folder's own files: its config must parse, its metrics go into the manifest
            if written_by_train:
                ModelConfig.from_mapping(json.loads((file.parent / "config.json").read_text()))
                metrics = json.loads((file.parent / "metrics.json").read_text())
        except Exception as error:  # corrupt JSON, a foreign config: many kinds of error
            raise unloadable(f"{type(error).__name__}: {error}") from None
        try:
            model = classifier_from_file(file, spec, data, written_by_train=written_by_train)
        except UnloadableModel as error:
            if spec.custom_objects or "custom_objects" in str(error):
                raise SweepError(f"config key `models[{index}]` (model {spec.name!r}): {error}") from None
            raise unloadable(str(error)) from None
        except ValueError as error:  # the contract, against the data set: shape, one logit per class, no softmax
            raise SweepError(f"config key `{key}` (model {spec.name!r}): {error}") from None
        code = user_code_files(list(spec.custom_objects))
        return LoadedModel(spec=spec, model=model, folder=file if file.is_dir() else file.parent,
                           sha256=content_sha256(file), metrics=metrics, file=file,
                           written_by_train=written_by_train, code=code,
                           code_sha256=code_digest(code) if code else None)

    loaded: dict[int, LoadedModel] = {}
    for index, spec in enumerate(config.models):
        if file_of(spec).exists():
            loaded[index] = load(index, spec)
    for index, spec in enumerate(config.models):
        if index in loaded:
            continue
        assert spec.train is not None  # a missing `path` folder is refused when the config is read
        subset = spec.train.train_examples
        logger.info("model %r: training %s%s", spec.name, spec.train.model_id,
                    f" on {subset} of the 55000 training images (to fit the sweep's time budget)" if subset else "")
        train_model(spec.train, models_root, draw_curves=training_curves)
        loaded[index] = load(index, spec)
    return [loaded[index] for index in range(len(config.models))]


# --------------------------------------------------------------------------------------------
# identity and manifest


def code_version() -> dict[str, Any]:
    """The sources' digest, the package version, and the git commit with whether the tree had uncommitted
    changes (for the manifest: the digest alone decides the run id)."""
    root = Path(__file__).resolve().parents[1]
    version: dict[str, Any] = {"source_sha256": source_digest(), "advsweep": _package_version("advsweep")}
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    check=True, timeout=30).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, check=True, timeout=30).stdout.strip()
            version.update({"git_commit": commit, "git_dirty": bool(dirty)})
        except (OSError, subprocess.SubprocessError):
            pass
    return version


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def identity_parts(config: SweepConfig, models: list[LoadedModel], code: dict[str, Any],
                   execution: dict[str, Any]) -> dict[str, Any]:
    """What makes a run's records, each part as a digest: the resolved config (its description left out, each model's
    content hash standing for its path), the models' contents, the sources that compute records, and the execution
    plan (:func:`advsweep.experiments.units.execution_plan`)."""
    resolved = config.to_dict()
    resolved.pop("description")
    for entry in resolved["models"]:
        entry.pop("path")  # the model's content hash stands for it, wherever it lies
        if "custom_objects" in entry:  # and the code's digest for the code's paths
            entry["custom_objects"] = len(entry["custom_objects"])
    if isinstance(resolved["dataset"], dict):  # a data set file: its content hash stands for its path
        resolved["dataset"].pop("path")
    contents = {m.spec.name: m.sha256 if m.code_sha256 is None else [m.sha256, m.code_sha256] for m in models}
    return {"config": digest(resolved), "models": digest(contents),
            "code": code["source_sha256"], "execution": digest(execution)}


def run_identity(config: SweepConfig, models: list[LoadedModel], code: dict[str, Any],
                 execution: dict[str, Any]) -> str:
    """12 hex digits of a hash of what makes the records (:func:`identity_parts`)."""
    return digest(identity_parts(config, models, code, execution))[:12]


def _describe(execution: dict[str, Any]) -> str:
    plans = ", ".join(f"{name} {plan['gradient']['rows']}/{plan['forward']['rows']}"
                      for name, plan in execution.get("plans", {}).items())
    return f"{execution.get('device')} (rows per gradient/forward call: {plans})"


def check_resumable(run_dir: Path, previous: dict[str, Any], parts: dict[str, Any],
                    execution: dict[str, Any]) -> None:
    """Refuse, in one line, to resume a run folder whose records were made by another config, models, code or device
    plan than this sweep's (a folder named by ``--run-id``; a derived run id cannot collide)."""
    before = previous.get("identity")
    if before == parts:
        return
    if not before:
        raise SweepError(f"run folder {run_dir} was made by an older advsweep that did not record what made its "
                         "records, so it cannot be resumed safely: start a new run (leave out --run-id)")
    if before.get("execution") != parts["execution"]:
        raise SweepError(f"run folder {run_dir} holds records made on {_describe(previous.get('execution', {}))}; "
                         f"this sweep would make them on {_describe(execution)}, which gives other records: resume it "
                         "with the executor and devices it was started with, or start a new run (leave out --run-id)")
    words = {"config": "config", "models": "model", "code": "version of the attack and model code"}
    differing = " and another ".join(word for name, word in words.items() if before.get(name) != parts[name])
    raise SweepError(f"run folder {run_dir} holds records made with another {differing} than this sweep's: resume it "
                     "with what made it, or start a new run (leave out --run-id)")


def manifest(config: SweepConfig, models: list[LoadedModel], code: dict[str, Any], assets: list[dict[str, Any]],
             examples: np.ndarray) -> dict[str, Any]:
    import tensorflow as tf

    return {
        "sweep": config.name,
        "code": code,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
                     **{name: _package_version(name)
                        for name in ("numpy", "foolbox", "pandas", "pyarrow", "matplotlib", "scikit-learn")}},
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()},
        "dataset": config.data.to_dict(),
        "assets": assets,
        "models": [{"name": m.spec.name, "folder": str(m.folder), "model_keras_sha256": m.sha256,
                    **({"custom_objects": {str(f): file_sha256(f) for f in m.code}, "code_sha256": m.code_sha256}
                       if m.code else {}),
                    "model_id": m.metrics.get("model_id"), "clean_test_accuracy": m.metrics.get("clean_test_accuracy"),
                    "train_examples": m.metrics.get("train_examples"), "training": training_of(m.metrics)}
                   for m in models],
        "seeds": {"attacks": config.seed, "example_selection": config.selection_seed},
        "examples": {"count": len(examples), "selection": config.selection,
                     "test_indices_sha256": hashlib.sha256(examples.astype(np.int64).tobytes()).hexdigest()},
    }


def training_of(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """How a model was trained, from its ``metrics.json``: kind, natural or adversarial, the training ε (0 for
    natural training), and any collapse; ``None`` for a classifier the harness did not train. The ε-budget figures
    read this from the manifest."""
    config = metrics.get("config")
    if not config:
        return None
    adversarial = metrics.get("adversarial")
    return {"kind": config.get("kind"), "method": adversarial["method"] if adversarial else "natural",
            "label": adversarial["label"] if adversarial else "natural",
            "eps": float(adversarial["options"]["eps"]) if adversarial else 0.0,
            "collapse": adversarial.get("collapse") if adversarial else None}


def write_json(path: Path, value: Any) -> Path:
    return write_atomic(path, lambda p: p.write_text(json.dumps(value, indent=2, default=_json_default) + "\n"))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# the sweep


def local_worker() -> dict[str, Any]:
    return {"executor": "local", "host": socket.gethostname(), "pid": os.getpid()}


def run_local(inputs: SweepInputs, todo: list[Unit], finish: Finish,
              progress: Callable[[str], None] | None = None) -> None:
    """The in-process executor: the units one after another, in plan order (a minimal-ε unit after its model's
    attacks, whose records give its starting bounds)."""
    for unit in todo:
        if progress is not None:
            progress(unit.key)
        started = time.perf_counter()
        bounds = (grid_upper_bounds(inputs.run_dir, unit.model, inputs.config.minimal.norm,
                                    inputs.examples[unit.start:unit.stop]) if unit.kind == "minimal" else None)
        surrogate = inputs.models[unit.surrogate].model if unit.surrogate is not None else None
        randomized = inputs.randomized.get(unit.model, False)
        triggers = (escalation_triggers(inputs.run_dir, unit.model, randomized=randomized)
                    if unit.kind == "escalation" else None)
        output = compute_unit(inputs.config, unit, inputs.models[unit.model].model, inputs.x, inputs.labels,
                              inputs.examples, bounds, surrogate, randomized=randomized, triggers=triggers)
        finish(unit, output, time.perf_counter() - started, local_worker())


def detect_randomized(models: list[LoadedModel], x: np.ndarray) -> dict[str, bool]:
    """Per model, whether its logits differ between two calls on the sweep's first images: such a model's points are
    all judged by the rule of :mod:`advsweep.attacks.adaptive.randomized`. A randomized model whose draws do not obey the
    judge's reset is named in a warning (its ε = 0 column then equals clean accuracy up to the draws' noise)."""
    from advsweep.attacks.engine.core import BLOCK
    from advsweep.attacks.adaptive.randomized import draws_reproducible, is_randomized

    found = {}
    for loaded in models:
        found[loaded.spec.name] = is_randomized(loaded.model, x[:BLOCK])
        if found[loaded.spec.name]:
            logger.info("model %r is randomized: every point is judged by the mean of its draws' probabilities",
                        loaded.spec.name)
            if not draws_reproducible(loaded.model, x[:BLOCK]):
                logger.warning("model %r: its random draws do not follow TensorFlow's seed (random ops compiled into "
                               "a graph?): judgements of the same point can differ", loaded.spec.name)
    return found


def run_sweep(config: SweepConfig, results_root: Path, *, run_id: str | None = None,
              on_unit_done: Callable[[Unit], None] | None = None) -> Path:
    """Run (or resume) a sweep and write its tables and figures; returns the run folder.

    Everything that can fail on bad input (assets, model files, the Ray cluster's address) is done before the run
    folder is made. The units run in this process or as Ray tasks (``config.run``); either way this process alone
    writes the run folder, and the records are the same to the byte.
    """
    from advsweep.experiments.reporting.report import build_report

    if run_id is not None:  # it names a folder under results_root: a plain name, or nothing starts
        plain_name("run_id", run_id)
    started = time.time()
    cluster = None
    if config.run.executor == "ray":  # a wrong address is refused before anything is loaded, trained or written
        from advsweep.experiments.cluster import connect

        cluster = connect(config.run)
    try:
        deterministic_kernels()
        inputs, info = _open_run(config, results_root, run_id, cluster)
        units = plan(config)
        _run_units(inputs, units, cluster, on_unit_done)
    finally:
        if cluster is not None:
            cluster.close()
    build_report([inputs.run_dir], inputs.run_dir)
    _close_run(inputs.run_dir, info, units, started)
    return inputs.run_dir


def _open_run(config: SweepConfig, results_root: Path, run_id: str | None, cluster: Any
              ) -> tuple[SweepInputs, dict[str, Any]]:
    """The sweep's data, models and examples loaded, its run folder made (or found, and checked resumable), and
    its manifest, resolved config and examples written: the inputs every unit reads, and the manifest so far."""
    from advsweep.assets import load_dataset
    from advsweep.attacks.engine.core import device_kind

    dataset = load_dataset(config.data)
    y_test = dataset.test_labels
    models = prepare_models(config, results_root / "models")
    assets = {dataset.resolved.name: dataset.resolved.to_dict()}
    for loaded in models:  # the weights each model was built from, as its training recorded them
        for entry in loaded.metrics.get("assets", {}).values():
            assets.setdefault(entry["name"], entry)
    examples = select_examples(y_test, count=config.examples, selection=config.selection,
                               seed=config.selection_seed, classes=dataset.info.classes)
    x, labels = dataset.test_images(examples), y_test[examples]
    code = code_version()
    # the device the units run on: this process', or the Ray tasks' (a task without GPUs sees none)
    device = device_kind() if cluster is None else ("gpu" if config.run.gpus_per_task > 0 else "cpu")
    execution = execution_plan({m.spec.name: m.model for m in models}, device)
    parts = identity_parts(config, models, code, execution)
    run_id = run_id or run_identity(config, models, code, execution)
    run_dir = results_root / config.name / run_id
    previous = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {}
    if previous:
        check_resumable(run_dir, previous, parts, execution)
    run_dir.mkdir(parents=True, exist_ok=True)
    randomized = detect_randomized(models, x)
    inputs = SweepInputs(config=config, models={m.spec.name: m for m in models}, x=x, labels=labels,
                         examples=examples, run_dir=run_dir, code=code, execution=execution, randomized=randomized)

    info = manifest(config, models, code, list(assets.values()), examples)
    executor = {"name": config.run.executor, **(cluster.describe() if cluster is not None else {})}
    info["randomized"] = {name: {"draws": config.draws, "rule": "mean of the draws' softmax probabilities"}
                          for name, flagged in randomized.items() if flagged}
    info.update({"run_id": run_id, "identity": parts, "execution": execution, "status": "running",
                 "started": previous.get("started") or _now(), "executor": executor,
                 "sessions": previous.get("sessions", []) + [{"started": _now(), "executor": config.run.executor}]})
    write_json(run_dir / "config.resolved.json", config.to_dict())
    write_json(run_dir / "manifest.json", info)
    write_atomic(run_dir / "examples.csv", lambda p: pd.DataFrame(
        {"position": np.arange(len(examples)), "example": examples, "label": labels}).to_csv(p, index=False))
    return inputs, info


def _run_units(inputs: SweepInputs, units: list[Unit], cluster: Any,
               on_unit_done: Callable[[Unit], None] | None) -> None:
    """The units not done yet, run in this process or on the cluster, each written (records, then its done file)
    as it finishes, with a progress bar counted in gradient computations."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    config, run_dir = inputs.config, inputs.run_dir
    todo = [u for u in units if not unit_is_done(run_dir, u)]
    logger.info("sweep %s, run %s: %d of %d units to do on the %s executor (%s)", config.name, run_dir.name,
                len(todo), len(units), config.run.executor, run_dir)
    bar = tqdm(total=sum(u.cost for u in units), initial=sum(u.cost for u in units if u not in todo),
               unit="grad", unit_scale=True, desc=config.name, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")

    def finish(unit: Unit, output: UnitOutput, seconds: float, worker: dict[str, Any]) -> None:
        writing = time.perf_counter()
        record = write_unit(run_dir, output)
        record.update({"seconds": seconds, "write_seconds": time.perf_counter() - writing, "finished": _now(),
                       "worker": worker})
        write_json(run_dir / unit.done_path, record)
        bar.update(unit.cost)
        logger.info("%s: done in %.1f s%s", unit.key, seconds,
                    f" on {worker['host']} (pid {worker['pid']})" if worker["executor"] != "local" else "")
        if on_unit_done is not None:
            on_unit_done(unit)

    with logging_redirect_tqdm(), bar:
        if cluster is None:
            run_local(inputs, todo, finish, progress=bar.set_postfix_str)
        else:
            cluster.execute(inputs, units, todo, finish, progress=bar.set_postfix_str)


def _close_run(run_dir: Path, info: dict[str, Any], units: list[Unit], started: float) -> None:
    """The manifest of a finished run: complete, when, and each unit's seconds and worker."""
    info["status"] = "complete"
    info["finished"] = _now()
    info["sessions"][-1]["finished"] = info["finished"]
    done = {u.key: json.loads((run_dir / u.done_path).read_text()) for u in units}
    info["unit_seconds"] = {key: record["seconds"] for key, record in done.items()}
    info["units"] = {key: {"seconds": record["seconds"], "write_seconds": record.get("write_seconds"),
                           "finished": record.get("finished"), "worker": record.get("worker")}
                     for key, record in done.items()}
    info["wall_seconds_this_session"] = time.time() - started
    write_json(run_dir / "manifest.json", info)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
