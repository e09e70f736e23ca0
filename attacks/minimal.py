"""Minimal-perturbation mode: each example's smallest successful ε, hence a whole robustness curve.

Bisection over a per-example ε with PGD (early stop on): an example's interval [lo, hi] always has
the attack failing at lo (or lo = 0) and succeeding at hi, and it halves until hi − lo ≤ tolerance.
foolbox's Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021) is the reference
(:func:`attacks.foolbox_adapter.fmn_minimal_norms`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from attacks.core import (
    EPS_LIMITS,
    check_inputs,
    check_model,
    check_norm,
    check_positive_int,
    predict_logits,
    success_of,
)
from attacks.pgd import DEFAULTS, pgd_run


@dataclasses.dataclass
class MinimalResult:
    """Per-example smallest ε found.

    Attributes:
        eps: float64 ``(N,)``: 0 for examples misclassified clean, ``inf`` where the attack fails
            even at ``eps_max``, else the upper end of the final bisection interval.
        x_adv: float32 ``(N, 28, 28, 1)``: the adversarial found at ``eps`` (the clean image where
            ``eps`` is 0 or inf).
        norm: ``"linf"`` or ``"l2"``.
        eps_max: the largest ε tried.
        tolerance: the bisection's final interval width.
    """

    eps: np.ndarray
    x_adv: np.ndarray
    norm: str
    eps_max: float
    tolerance: float

    def robust_accuracy(self, epsilons: Any) -> np.ndarray:
        """Accuracy under this attack at each ε: the fraction of examples whose minimal ε exceeds it."""
        return robustness_curve(self.eps, epsilons)


def robustness_curve(min_eps: np.ndarray, epsilons: Any) -> np.ndarray:
    """``(K,)``: the fraction of examples with minimal ε strictly greater than each ε."""
    grid = np.atleast_1d(np.asarray(epsilons, dtype=np.float64))
    return (np.asarray(min_eps)[None, :] > grid[:, None]).mean(axis=1)


def minimal_perturbation(
    model: keras.Model,
    x: Any,
    labels: Any,
    *,
    norm: str = "linf",
    eps_max: float | None = None,
    tolerance: float | None = None,
    steps: int | None = None,
    rel_stepsize: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 128,
    gradient: str = "fast",
) -> MinimalResult:
    """Bisect each example's ε with PGD until the interval is at most ``tolerance`` wide.

    Args:
        model: logits model.
        x: clean images ``(N, 28, 28, 1)`` in [0, 1].
        labels: true classes ``(N,)``.
        norm: ``"linf"`` or ``"l2"``.
        eps_max: upper end of the search (default 0.5 for L∞, 6.0 for L2).
        tolerance: final interval width (default 1/255 ≈ 0.0039 for L∞, 0.02 for L2).
        steps: PGD steps per bisection round (default 40 for L∞, 50 for L2).
        rel_stepsize: PGD step as a fraction of ε (default 2.5 / steps, Madry et al.'s rule, so that
            the steps can travel 2.5 ε: the minimum sits on the ball's boundary).
        random_start: PGD's random start.
        seed: seeds the random starts.
        batch_size: examples per gradient call.
        gradient: ``"fast"`` or ``"plain"`` input gradient (see :mod:`models.fast_gradient`).

    Returns:
        A :class:`MinimalResult`.
    """
    check_model(model)
    norm = check_norm(norm)
    eps_max = {"linf": 0.5, "l2": 6.0}[norm] if eps_max is None else eps_max
    tolerance = {"linf": 1.0 / 255.0, "l2": 0.02}[norm] if tolerance is None else tolerance
    for name, value, upper in (("eps_max", eps_max, EPS_LIMITS[norm]), ("tolerance", tolerance, eps_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= upper:
            raise ValueError(f"`{name}` must be a number in (0, {upper}]. Received: {name}={value!r}")
    defaults = DEFAULTS[("pgd", norm)]
    steps = check_positive_int("steps", defaults["steps"] if steps is None else steps)
    rel = float(2.5 / steps if rel_stepsize is None else rel_stepsize)
    x, labels, _ = check_inputs(x, labels)

    def attack(index: np.ndarray, eps: np.ndarray, round_: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, round_])
        x_found, logits = pgd_run(model, x[index], labels[index], None, eps, stepsize=rel * eps, steps=steps,
                                  norm=norm, loss="ce", random_start=random_start, early_stop=True, rng=rng,
                                  batch_size=batch_size, gradient=gradient)
        return x_found, success_of(logits, labels[index], None)

    n = len(x)
    found_eps = np.full(n, np.inf)
    x_adv = x.copy()
    clean_wrong = success_of(predict_logits(model, x), labels, None)
    found_eps[clean_wrong] = 0.0
    todo = np.flatnonzero(~clean_wrong)
    lo = np.zeros(n)
    hi = np.full(n, float(eps_max))
    if len(todo):
        x_found, ok = attack(todo, hi[todo], 0)
        x_adv[todo[ok]] = x_found[ok]
        found_eps[todo[ok]] = eps_max
        todo = todo[ok]
    round_ = 1
    while len(todo):
        mid = (lo[todo] + hi[todo]) / 2.0
        x_found, ok = attack(todo, mid, round_)
        hi[todo[ok]] = mid[ok]
        lo[todo[~ok]] = mid[~ok]
        x_adv[todo[ok]] = x_found[ok]
        found_eps[todo[ok]] = mid[ok]
        todo = todo[(hi[todo] - lo[todo]) > tolerance]
        round_ += 1
    return MinimalResult(eps=found_eps, x_adv=x_adv, norm=norm, eps_max=float(eps_max), tolerance=float(tolerance))
