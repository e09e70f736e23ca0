"""Measure the frozen-VGG16 configurations that the default model is chosen from.

For each (input size, resize, cut) the base's features of all 70000 MNIST images are computed once
(cached), a linear and an MLP head are trained on them, and the clean accuracy on the full
10000-image test set is recorded. In the same run the input-gradient cost of each configuration is
measured side by side (plain ``tf.GradientTape`` through the whole model, batch 128), and reported as
a ratio to the default configuration, because absolute times on a shared 2-core machine are noise.

Usage::

    python benchmarks/model_selection.py [--configs 32pad-block5_pool,32pad-block4_pool,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from advsweep.assets import load_vgg16_weights
from advsweep.experiments.reporting.plots import training_curves
from advsweep.models.config import ModelConfig
from advsweep.models.training import train_model
from advsweep.models.vgg16 import build_vgg16_classifier

DEFAULT_CONFIGS = "32pad-block5_pool,32pad-block4_pool,64bilinear-block5_pool,64bilinear-block4_pool"
REFERENCE = "32pad-block4_pool"


def parse(name: str) -> tuple[int, str, str]:
    size_resize, cut = name.split("-")
    size = int("".join(c for c in size_resize if c.isdigit()))
    return size, size_resize[len(str(size)):], cut


def gradient_seconds(size: int, resize: str, cut: str, weights: dict, *, batch: int = 128, repeats: int = 3) -> tuple[float, float]:
    """Median seconds per batch of (input gradient, forward pass) with a plain tape."""
    model = build_vgg16_classifier(weights, input_size=size, resize=resize, cut=cut, head="mlp", hidden_units=(512,))
    x = tf.constant(np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32))
    y = tf.constant(np.arange(batch) % 10)

    @tf.function
    def gradient(x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            loss = tf.keras.losses.sparse_categorical_crossentropy(y, model(x, training=False), from_logits=True)
        return tape.gradient(loss, x)

    @tf.function
    def forward(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    timings = {}
    for name, fn in (("gradient", gradient), ("forward", forward)):
        fn(x)  # trace
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn(x).numpy()
            samples.append(time.perf_counter() - started)
        timings[name] = float(np.median(samples))
    return timings["gradient"], timings["forward"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "model_selection")
    parser.add_argument("--skip-training", action="store_true", help="only measure gradient costs")
    parser.add_argument("--skip-timing", action="store_true", help="only train (reuse timings of an earlier run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = args.configs.split(",")
    weights, _ = load_vgg16_weights()
    rows = []
    timings = {} if args.skip_timing else {name: gradient_seconds(*parse(name), weights) for name in names}
    logging.info("gradient and forward seconds per batch of 128: %s", json.dumps(timings))
    reference_gradient = timings[REFERENCE][0] if REFERENCE in timings else timings[names[0]][0] if timings else 1.0
    for name in names:
        size, resize, cut = parse(name)
        row: dict[str, object] = {"config": name}
        if timings:
            row.update(gradient_cost_vs_default=timings[name][0] / reference_gradient,
                       gradient_over_forward=timings[name][0] / timings[name][1],
                       forward_cost_vs_default=timings[name][1] / timings[REFERENCE][1] if REFERENCE in timings else None)
        if not args.skip_training:
            for head in ("linear", "mlp"):
                config = ModelConfig(kind="vgg16", input_size=size, resize=resize, cut=cut, head=head,
                                     hidden_units=(512,), feature_scaling=True)
                trained = train_model(config, args.out / "models", draw_curves=training_curves)
                row[f"{head}_accuracy"] = trained.metrics["clean_test_accuracy"]
                if trained.metrics["features"]["cache"] == "miss":
                    row["feature_seconds"] = trained.metrics["features"]["seconds"]
                row[f"{head}_fit_seconds"] = trained.metrics["training_seconds"]["fit"]
        rows.append(row)
        logging.info("%s", json.dumps(row))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"model_selection{'_training' if args.skip_timing else ''}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
