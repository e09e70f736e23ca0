"""Two of Pintor et al.'s indicators of attack failure on a trained model, on the first test images.

1. Unstable predictions, loss form (:func:`advsweep.attacks.evaluation.checks.loss_variation`): per example, the margin loss's
   relative change under 100 uniform perturbations of ± 4/255 per pixel; how many exceed 0.1.
2. Incomplete optimization: how many of the examples an attack leaves robust end a run with the attack's loss still
   rising (``AttackResult.loss_rise`` above 0.05), for PGD of few and of enough steps and for AutoAttack's standard
   ensemble, on the same examples.

    python benchmarks/failure_indicators.py results/models/small_cnn-2f0f82e300 --eps 0.05,0.1 --examples 100
    python benchmarks/failure_indicators.py results/models/madry_cnn-97079c6f3b --eps 0.3 --examples 100
    python benchmarks/failure_indicators.py results/models/vgg16-ce6e9f40c7 --parts stability
    python benchmarks/failure_indicators.py results/models/small_cnn-2f0f82e300 --parts stability --noise 0.05

``--noise SIGMA`` puts the model behind a layer that adds fresh Gaussian noise of that σ to its input at every call
(a randomized model); ``--parts stability`` or ``--parts optimization`` runs one of the two.

Prints each as a Markdown table (count flagged, and the median, 90th and 99th percentile of the measure), with the
CPU it ran on.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import run_attack  # noqa: E402
from advsweep.attacks.evaluation.checks import (  # noqa: E402
    ROUGHNESS_THRESHOLD,
    STABILITY_DRAWS,
    STABILITY_RADIUS,
    STABILITY_THRESHOLD,
    _loss_changes,
)
from advsweep.attacks.engine.core import gradient_fn, input_gradients  # noqa: E402
from advsweep.experiments.config import select_examples  # noqa: E402
from advsweep.attacks.engine.programme import INCOMPLETE_THRESHOLD  # noqa: E402
from presets import machine  # noqa: E402
from advsweep.models.training import load_trained  # noqa: E402
from autoattack_rand import NoisyInput  # noqa: E402

ATTACKS = {
    "PGD-5 (margin, step ε/20)": ("pgd", {"steps": 5, "rel_stepsize": 0.05, "loss": "margin"}),
    "PGD-40 (margin, step ε/16)": ("pgd", {"steps": 40, "rel_stepsize": 0.0625, "loss": "margin"}),
    "AutoAttack (standard)": ("autoattack", {}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a folder written by `advsweep train`")
    parser.add_argument("--eps", default="0.1", help="L∞ budgets, comma-separated (default 0.1)")
    parser.add_argument("--examples", type=int, default=100, help="N test images (default 100)")
    parser.add_argument("--selection", default="first", choices=("first", "balanced"),
                        help="the first N, or N/10 per class as a sweep's balanced selection (seed 0) draws them")
    parser.add_argument("--parts", default="stability,optimization", help="stability, optimization or both")
    parser.add_argument("--noise", type=float, default=0.0, help="σ of Gaussian input noise at every call (0: none)")
    args = parser.parse_args(argv)
    model = load_trained(args.model_dir)[0]
    if args.noise > 0:
        inputs = keras.Input(model.input_shape[1:])
        model = keras.Model(inputs, model(NoisyInput(args.noise)(inputs)))
    eps = [float(e) for e in args.eps.split(",")]
    data = load_dataset("mnist")
    chosen = select_examples(data.test_labels, count=args.examples, selection=args.selection, seed=0)
    x, y = data.test_images(chosen), data.test_labels[chosen]
    print(f"{args.model_dir}{f' behind input noise σ = {args.noise:g}' if args.noise else ''}, {args.selection} "
          f"{args.examples} test images, {machine()}\n")
    parts = args.parts.split(",")
    if "stability" in parts:
        stability(model, x, y)
    if "optimization" in parts:
        optimization(model, x, y, eps)
    return 0


def stability(model: keras.Model, x: np.ndarray, y: np.ndarray) -> None:
    """The loss form of unstable predictions (relative change) and the change against the gradient's prediction
    (:func:`advsweep.attacks.evaluation.checks.check_loss_stability` flags an example where both exceed their thresholds)."""
    ids = np.arange(len(x))
    gradients = input_gradients(gradient_fn(model, "margin"), x, y.astype(np.int64), ids)
    reference, change, predicted = _loss_changes(model, x, y, seed=0, example_ids=ids, draws=STABILITY_DRAWS,
                                                 radius=STABILITY_RADIUS, gradients=gradients)
    variation = np.minimum(change / np.where(reference == 0, 1.0, np.abs(reference)), 1.0)
    ratio = change / np.maximum(predicted, 1e-12)
    moved = variation > STABILITY_THRESHOLD
    print("| measure, 100 draws of ± 4/255 | examples | above its threshold | median | 90% | 99% | largest where the "
          "loss moved > 10% |\n|---|---|---|---|---|---|---|")
    for name, values, threshold in (("change / loss (> 0.1)", variation, STABILITY_THRESHOLD),
                                    (f"change / gradient's prediction (> {ROUGHNESS_THRESHOLD:g})", ratio,
                                     ROUGHNESS_THRESHOLD)):
        print(f"| {name} | {len(x)} | {int((values > threshold).sum())} | "
              + " | ".join(f"{q:.3g}" for q in np.quantile(values, [0.5, 0.9, 0.99]))
              + f" | {float(values[moved].max()) if moved.any() else float('nan'):.3g} |")
    print(f"\nflagged (both): {int((moved & (ratio > ROUGHNESS_THRESHOLD)).sum())} of {len(x)}\n", flush=True)


def optimization(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: list[float]) -> None:
    print("| attack | ε | robust | loss still rising (> 0.05) | median | 90% | 99% |\n|---|---|---|---|---|---|---|")
    for label, (name, params) in ATTACKS.items():
        result = run_attack(name, model, x, y, eps, **params)
        assert result.loss_rise is not None
        for k, e in enumerate(eps):
            rise = result.loss_rise[k][~result.success[k]]
            quantiles = np.nanquantile(rise, [0.5, 0.9, 0.99]) if len(rise) else [np.nan] * 3
            print(f"| {label} | {e:g} | {len(rise)} | {int((rise > INCOMPLETE_THRESHOLD).sum())} | "
                  + " | ".join(f"{q:.3f}" for q in quantiles) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
