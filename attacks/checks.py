"""Evaluation checks that run with every evaluation and are reported with it.

After N. Carlini et al., "On Evaluating Adversarial Robustness" (arXiv:1902.06705, 2019), and the
sanity checks of AutoAttack (Croce & Hein, ICML 2020). A failed check does not stop an evaluation; it
is logged at WARNING level with what it suggests, and written next to the results.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from attacks.core import BALL_TOLERANCE, AttackResult, gradient_fn, predict_logits

logger = logging.getLogger(__name__)

UNBOUNDED_EPS = 0.5
UNBOUNDED_MAX_ACCURACY = 0.01
ZERO_GRADIENT_MAX_FRACTION = 0.01


@dataclasses.dataclass(frozen=True)
class Check:
    """One check's verdict. ``detail`` says what was measured; ``suggestion`` what a failure means."""

    name: str
    passed: bool
    detail: str
    suggestion: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_result_validity(result: AttackResult, x: np.ndarray, *, label: str = "") -> Check:
    """No adversarial input leaves [0, 1] or its ε-ball, and none contains NaN."""
    delta = (result.x_adv - x[None]).reshape(len(result.epsilons), len(x), -1)
    sizes = np.abs(delta).max(axis=2) if result.norm == "linf" else np.linalg.norm(delta, axis=2)
    excess = float(np.max(sizes - result.epsilons[:, None], initial=-np.inf)) if delta.size else 0.0
    nan = bool(np.isnan(result.x_adv).any())
    low, high = (float(result.x_adv.min()), float(result.x_adv.max())) if result.x_adv.size else (0.0, 1.0)
    passed = not nan and low >= 0.0 and high <= 1.0 and excess <= BALL_TOLERANCE
    return Check(
        name=f"valid adversarials{f' ({label})' if label else ''}",
        passed=passed,
        detail=f"range [{low:.6g}, {high:.6g}], largest excess over ε {max(excess, 0.0):.3g} "
               f"({result.norm}), NaN: {nan}",
        suggestion="" if passed else "the attack leaves the threat model: its numbers are not robust accuracies",
    )


def check_monotone(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> list[Check]:
    """Robust accuracy does not rise with ε, for each attack ``name → (epsilons, accuracies)``."""
    checks = []
    for name, (epsilons, accuracies) in curves.items():
        order = np.argsort(epsilons)
        acc = np.asarray(accuracies, dtype=float)[order]
        rises = np.diff(acc)
        worst = float(rises.max()) if len(rises) else 0.0
        passed = worst <= 0.0
        checks.append(Check(
            name=f"accuracy falls with ε ({name})",
            passed=passed,
            detail=f"largest rise between neighbouring ε: {max(worst, 0.0):.4f}",
            suggestion="" if passed else "a stronger budget doing worse means the attack is not converging "
                                         "(too few steps, a step size too small or too large) or gradients are "
                                         "masked; try more steps, restarts or the margin loss",
        ))  # fmt: skip
    return checks


def check_pgd_beats_fgsm(epsilons: Sequence[float], pgd: Sequence[float], fgsm: Sequence[float], *,
                         examples: int, label: str = "") -> Check:
    """PGD is at least as strong as FGSM at every ε (tolerance: one example)."""
    gap = np.asarray(pgd, dtype=float) - np.asarray(fgsm, dtype=float)
    tolerance = 1.0 / max(examples, 1)
    worst = int(np.argmax(gap)) if len(gap) else 0
    passed = bool(np.all(gap <= tolerance + 1e-12))
    return Check(
        name=f"PGD at least as strong as FGSM{f' ({label})' if label else ''}",
        passed=passed,
        detail=(f"largest excess of PGD over FGSM accuracy: {gap[worst]:+.4f} at ε={epsilons[worst]}"
                if len(gap) else "no common ε"),
        suggestion="" if passed else "an iterative attack losing to a single step points to gradient masking "
                                     "or a broken step size",
    )


def check_unbounded(model: keras.Model, x: np.ndarray, labels: np.ndarray, *, batch_size: int = 128,
                    seed: int = 0) -> Check:
    """L∞ PGD-40 (cross-entropy, random start) at ε = 0.5 must bring accuracy to (near) zero.

    If it does not, the same attack is run with the Carlini–Wagner margin loss, which cannot saturate:
    if that one wins, the failure is the cross-entropy's softmax saturating (zero gradients at
    confident points), and the suggestion says so.
    """
    from attacks.pgd import projected_gradient_descent

    def accuracy(loss: str) -> float:
        result = projected_gradient_descent(model, x, labels, [UNBOUNDED_EPS], norm="linf", early_stop=True,
                                            loss=loss, seed=seed, batch_size=batch_size)
        return float(result.robust_accuracy[0])

    cross_entropy = accuracy("ce")
    passed = cross_entropy <= UNBOUNDED_MAX_ACCURACY
    detail = (f"L∞ PGD-40 at ε={UNBOUNDED_EPS}: accuracy {cross_entropy:.4f} on {len(x)} examples "
              f"(must be ≤ {UNBOUNDED_MAX_ACCURACY})")
    suggestion = ""
    if not passed:
        margin = accuracy("margin")
        detail += f"; with the margin loss: {margin:.4f}"
        if margin <= UNBOUNDED_MAX_ACCURACY:
            suggestion = ("the cross-entropy saturates (zero gradients at confident points, here from the random "
                          "start): PGD with loss='margin' is the reliable attack on this model")
        else:
            suggestion = ("an attack that cannot win with an unbounded budget is broken or the model masks its "
                          "gradients; the reported robustness is not trustworthy")
    return Check(name="unbounded attack wins", passed=passed, detail=detail, suggestion=suggestion)


def check_logits(model: keras.Model, x: np.ndarray) -> Check:
    """The model's outputs are logits, not probabilities (attacks on softmax outputs saturate)."""
    outputs = predict_logits(model, x)
    sums = outputs.sum(axis=1)
    probability_like = bool(np.all(outputs >= 0) and np.all(outputs <= 1) and np.allclose(sums, 1.0, atol=1e-3))
    return Check(
        name="model returns logits",
        passed=not probability_like,
        detail=f"outputs in [{outputs.min():.3g}, {outputs.max():.3g}], row sums in [{sums.min():.3g}, {sums.max():.3g}]",
        suggestion="" if not probability_like else "the model ends in a softmax: the loss saturates and gradients "
                                                    "vanish; attack the logits (drop the softmax)",
    )


def check_gradients(model: keras.Model, x: np.ndarray, labels: np.ndarray, *, batch_size: int = 128) -> Check:
    """Input gradients of the loss are not zero (a zero gradient hides examples from every gradient attack)."""
    value_and_gradient = gradient_fn(model, "ce")
    norms = []
    for start in range(0, len(x), batch_size):
        _, gradient = value_and_gradient(tf.constant(x[start:start + batch_size]),
                                         tf.constant(labels[start:start + batch_size].astype(np.int64)))
        norms.append(np.linalg.norm(gradient.numpy().reshape(len(gradient), -1), axis=1))
    all_norms = np.concatenate(norms) if norms else np.zeros(0)
    zero = float(np.mean(all_norms < 1e-12)) if len(all_norms) else 0.0
    nan = bool(np.isnan(all_norms).any())
    passed = zero <= ZERO_GRADIENT_MAX_FRACTION and not nan
    return Check(
        name="input gradients are not zero",
        passed=passed,
        detail=f"{zero:.2%} of {len(all_norms)} examples have a zero gradient; median L2 norm "
               f"{float(np.median(all_norms)) if len(all_norms) else 0.0:.3g}; NaN: {nan}",
        suggestion="" if passed else "zero or NaN gradients are gradient masking (saturated softmax, "
                                     "non-differentiable preprocessing): use the margin loss or a gradient-free attack",
    )


def report(checks: Sequence[Check]) -> bool:
    """Log every check (failures loudly); return whether all passed."""
    for check in checks:
        if check.passed:
            logger.info("check passed: %s — %s", check.name, check.detail)
        else:
            logger.warning("CHECK FAILED: %s — %s. Suggests: %s", check.name, check.detail, check.suggestion)
    return all(check.passed for check in checks)
