"""How close the harness' attacks come to the machine's limit, measured side by side in one run.

Parts (each prints a Markdown table; ``--out`` also writes them to a file):

1. ``gradient``: input-gradient throughput on the default model (32×32 pad, base to ``block4_pool``):
   plain ``tf.GradientTape``, the fast path (:mod:`advsweep.models.fast_gradient`) and the forward pass alone, in
   interleaved rounds; the ratio fast/plain and the fast path as a fraction of the two-forward-pass bound.
2. ``sweep``: FGSM and L∞ PGD-40 (foolbox's defaults: step 0.01/0.3 ε, random start) over ε = 0, 0.05, …, 0.3
   on the first 200 test images, run by the harness (``run_attack``: fast gradient, early stop, ε carried
   upwards, one FGSM gradient for all ε) and by a plain foolbox loop over the same Keras model; wall-time
   ratio and robust accuracy of each at every ε.
3. ``head``: training the head for 10 epochs on cached base features against ``model.fit`` through the
   frozen base (the tutorials' way), on the same examples.
4. ``memory``: peak resident memory of a 10,000-example sweep (FGSM, both implementations, chunks of 1000),
   run as a child process.

Only ratios are reported as results; seconds are printed for context (timings on a shared 2-core
machine are noisy). Usage::

    python benchmarks/attack_speed.py [--parts gradient,sweep,head,memory] [--model-dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]

from advsweep.assets import load_mnist, load_vgg16_weights  # noqa: E402
from advsweep.attacks import run_attack  # noqa: E402
from advsweep.attacks.engine.core import gradient_fn, logits_fn  # noqa: E402
from advsweep.models.config import ModelConfig  # noqa: E402
from advsweep.models.training import load_trained, to_float_images  # noqa: E402

logger = logging.getLogger("benchmark")
GRID = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def _timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def part_gradient(model, x: np.ndarray, y: np.ndarray, *, batch: int = 128, rounds: int = 5) -> str:
    xb, yb = tf.constant(x[:batch]), tf.constant(y[:batch])
    forward = logits_fn(model)
    plain, fast = gradient_fn(model, "ce", "plain"), gradient_fn(model, "ce", "fast")
    calls = {
        "forward pass": lambda: forward(xb).numpy(),
        "plain tf.GradientTape": lambda: plain(xb, yb)[1].numpy(),
        "fast path": lambda: fast(xb, yb)[1].numpy(),
    }
    for call in calls.values():
        call()  # trace and warm up
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):  # interleaved, so that a slow moment of the machine hits all three
        for name, call in calls.items():
            seconds[name] += _timed(call, 2)
    rate = {name: batch / statistics.median(times) for name, times in seconds.items()}
    bound = rate["forward pass"] / 2
    lines = [f"Input gradient, default model, batch {batch}, median of {2 * rounds} interleaved calls:", "",
             "| path | images/s | relative to plain |", "|---|---|---|"]
    for name in calls:
        lines.append(f"| {name} | {rate[name]:.0f} | {rate[name] / rate['plain tf.GradientTape']:.2f}× |")
    lines += ["", f"- fast / plain: **{rate['fast path'] / rate['plain tf.GradientTape']:.2f}×**",
              f"- fast path / bound of two forward passes per gradient ({bound:.0f} images/s): "
              f"**{rate['fast path'] / bound:.0%}**"]
    return "\n".join(lines)


def part_sweep(model, x: np.ndarray, y: np.ndarray) -> str:
    import foolbox as fb

    timings: dict[str, float] = {}
    accuracy: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    accuracy["harness FGSM"] = run_attack("fgsm", model, x, y, GRID).robust_accuracy
    accuracy["harness PGD-40"] = run_attack("pgd", model, x, y, GRID, early_stop=True, seed=0).robust_accuracy
    timings["harness"] = time.perf_counter() - started

    started = time.perf_counter()
    fmodel = fb.TensorFlowModel(model, bounds=(0.0, 1.0))
    images, labels = tf.constant(x), tf.constant(y)
    tf.random.set_seed(0)
    for name, attack in (("foolbox FGSM", fb.attacks.LinfFastGradientAttack()),
                         ("foolbox PGD-40", fb.attacks.LinfProjectedGradientDescentAttack())):
        _, _, success = attack(fmodel, images, labels, epsilons=GRID)
        accuracy[name] = 1.0 - success.numpy().astype(float).mean(axis=1)
    timings["foolbox"] = time.perf_counter() - started

    lines = [f"FGSM + L∞ PGD-40 (step 0.01/0.3 ε, random start), {len(x)} test images, ε = 0…0.3:", "",
             f"- wall time, plain foolbox loop / harness: **{timings['foolbox'] / timings['harness']:.1f}×** "
             f"({timings['foolbox']:.0f} s against {timings['harness']:.0f} s in this run)", "",
             "| robust accuracy | " + " | ".join(f"ε = {e:g}" for e in GRID) + " |", "|---|" + "---|" * len(GRID)]
    for name, values in accuracy.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}%" for v in values) + " |")
    gap = np.abs(accuracy["harness PGD-40"] - accuracy["foolbox PGD-40"])
    lines += ["", f"- largest PGD-40 gap, harness − foolbox: "
                  f"{100 * float(np.max(accuracy['harness PGD-40'] - accuracy['foolbox PGD-40'])):+.1f} points; "
                  f"largest |gap| {100 * float(gap.max()):.1f} points at ε = {GRID[int(gap.argmax())]:g}"]
    return "\n".join(lines)


def part_head(examples: int, epochs: int = 10) -> str:
    """Cached features + head against model.fit through the frozen base, same examples and epochs."""
    import keras

    from advsweep.models.training import compute_features
    from advsweep.models.vgg16 import build_vgg16_classifier, feature_extractor

    (x_train, y_train, _, _), _ = load_mnist()
    weights, _ = load_vgg16_weights()
    x_uint8, labels = x_train[:examples], y_train[:examples].astype(np.int64)

    def compiled(model):
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        return model

    keras.utils.set_random_seed(0)
    tutorial = build_vgg16_classifier(weights, feature_scaling=False)
    started = time.perf_counter()
    compiled(tutorial).fit(to_float_images(x_uint8), labels, epochs=epochs, batch_size=128, verbose=0)
    tutorial_seconds = time.perf_counter() - started

    keras.utils.set_random_seed(0)
    cached = build_vgg16_classifier(weights, feature_scaling=False)
    started = time.perf_counter()
    features = compute_features(feature_extractor(cached), x_uint8)
    features_seconds = time.perf_counter() - started
    started = time.perf_counter()
    compiled(cached.get_layer("head")).fit(features, labels, epochs=epochs, batch_size=128, verbose=0)
    head_seconds = time.perf_counter() - started
    cold = features_seconds + head_seconds
    return "\n".join([
        f"Head training, {epochs} epochs on {examples} training images, batch 128:", "",
        f"- `model.fit` through the frozen base / cached features computed in this run: "
        f"**{tutorial_seconds / cold:.1f}×** ({tutorial_seconds:.0f} s against {features_seconds:.0f} + "
        f"{head_seconds:.0f} s)",
        f"- `model.fit` through the frozen base / head on features already cached: "
        f"**{tutorial_seconds / head_seconds:.0f}×**",
    ])


def part_memory(model_dir: Path) -> str:
    config = textwrap.dedent(f'''
        name = "memory"
        chunk_size = 1000
        [examples]
        count = 10000
        selection = "first"
        [[models]]
        name = "vgg16"
        path = "{model_dir}"
        [epsilons]
        linf = [0.1, 0.3]
        [[attacks]]
        name = "fgsm"
        implementations = ["own", "foolbox"]
        [minimal]
        enabled = false
        [figures]
        grid_eps = [0.3]
    ''')
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "memory.toml"
        path.write_text(config)
        started = time.perf_counter()
        child = subprocess.run([sys.executable, "-m", "advsweep.experiments.cli", "-q", "sweep", str(path), "--results",
                                str(Path(folder) / "results")], cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            raise RuntimeError(child.stderr[-3000:])
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB on Linux
    return (f"A 10,000-example sweep (VGG16, FGSM own + foolbox, ε 0/0.1/0.3, chunks of 1000): peak resident "
            f"memory **{peak_gib:.2f} GiB** ({seconds:.0f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="gradient,sweep,head,memory")
    parser.add_argument("--model-dir", default=str(ROOT / "results" / "models" / ModelConfig().model_id),
                        help="the trained default model (advsweep train --model vgg16)")
    parser.add_argument("--examples", type=int, default=200, help="test images of the sweep part")
    parser.add_argument("--head-examples", type=int, default=5000, help="training images of the head part")
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    parts = [p for p in args.parts.split(",") if p]
    model_dir = Path(args.model_dir)
    model = load_trained(model_dir)[0] if {"gradient", "sweep"} & set(parts) else None
    (_, _, x_test, y_test), _ = load_mnist()
    x, y = to_float_images(x_test[: args.examples]), y_test[: args.examples].astype(np.int64)
    sections = [f"`python benchmarks/attack_speed.py --parts {args.parts}` on {ModelConfig().model_id}, "
                f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads"]
    for part in parts:
        logger.info("part %s", part)
        if part == "gradient":
            sections.append(part_gradient(model, to_float_images(x_test[:128]), y_test[:128].astype(np.int64)))
        elif part == "sweep":
            sections.append(part_sweep(model, x, y))
        elif part == "head":
            sections.append(part_head(args.head_examples))
        elif part == "memory":
            sections.append(part_memory(model_dir))
        else:
            raise SystemExit(f"unknown part {part!r}; parts: gradient, sweep, head, memory")
        print("\n\n".join(sections[-1:]), flush=True)
    text = "\n\n".join(sections) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
