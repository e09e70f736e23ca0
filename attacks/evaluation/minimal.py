"""Minimal-perturbation mode: each example's smallest successful ε, hence a whole robustness curve.

Bisection over a per-example ε with PGD (early stop on, the margin loss by default; in L1, which PGD has no step
for, l1-APGD with the DLR loss, scale-invariant as the margin is, or cross-entropy): an example's interval
[lo, hi] always has the attack failing at lo (or lo = 0) and an adversarial known at hi (found by the
search, or proved by another attack: ``upper_bounds``), and it halves until hi − lo ≤ tolerance.
foolbox's Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021) is the reference
(:func:`advsweep.attacks.gradient.foolbox_adapter.fmn_minimal_norms`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from advsweep.attacks.engine.core import (
    Call,
    check_model,
    check_norm,
    check_positive_int,
    checked_call,
    eps_limit,
    predict_logits,
    success_of,
)
from advsweep.attacks.gradient.apgd import apgd_engine
from advsweep.attacks.gradient.pgd import pgd_engine
from advsweep.attacks.engine.spec import L1_NORMS
from advsweep.defaults import APGD_CE, ATTACK, MINIMAL


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
    norm: str = MINIMAL["norm"],
    eps_max: float | None = None,
    tolerance: float | None = None,
    steps: int = MINIMAL["steps"],
    rel_stepsize: float | None = None,
    random_start: bool = True,
    loss: str = MINIMAL["loss"],
    upper_bounds: Any = None,
    seed: int = ATTACK["seed"],
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> MinimalResult:
    """Bisect each example's ε with PGD (early stop) until the interval is at most ``tolerance`` wide.

    Args:
        model: logits model.
        x: clean images ``(N, 28, 28, 1)`` in [0, 1].
        labels: true classes ``(N,)``.
        norm: ``"linf"``, ``"l2"`` or ``"l1"`` (each round then runs l1-APGD, ``steps`` steps, one run; ``loss``
            "margin" takes APGD's DLR loss, "ce" cross-entropy).
        eps_max: upper end of the search (default 0.5 for L∞, 6.0 for L2, 40 for L1).
        tolerance: final interval width (default 1/255 ≈ 0.0039 for L∞, 0.02 for L2, 0.1 for L1).
        steps: PGD steps per bisection round (default 20, as in sweeps: :data:`advsweep.defaults.MINIMAL`).
        rel_stepsize: PGD step as a fraction of ε (default 2.5 / steps, Madry et al.'s rule, so that
            the steps can travel 2.5 ε: the minimum sits on the ball's boundary).
        random_start: PGD's random start.
        loss: ``"margin"`` (Carlini–Wagner, the default: it cannot saturate) or ``"ce"``. Cross-entropy PGD
            saturates on confident models (the frozen VGG16: see docs/attacks.md), and a bisection run with a weak
            attack overstates every example's minimal ε.
        upper_bounds: ``(N,)`` budgets at which an adversarial is already known for each example (``inf``
            where none is), e.g. the smallest grid ε at which any attack of a sweep fooled it. An example's
            search starts with that bound as its upper end, so its minimal ε never exceeds what another
            attack has proved.
        seed: seeds the random starts, one stream per example and round (see :mod:`advsweep.attacks.engine.core`).
        example_ids: test-set indices ``(N,)`` (default ``0 … N−1``).
        gradient: ``"auto"``, ``"fast"`` or ``"plain"`` input gradient (as
            :func:`advsweep.attacks.projected_gradient_descent`).

    Returns:
        A :class:`MinimalResult`. Where an example's minimal ε is its upper bound and no round of this
        search found an adversarial at it, ``x_adv`` is the clean image (the adversarial is the other
        attack's).
    """
    check_model(model)
    norm = check_norm(norm, L1_NORMS)
    eps_max = MINIMAL["eps_max"][norm] if eps_max is None else eps_max
    tolerance = MINIMAL["tolerance"][norm] if tolerance is None else tolerance
    shape = np.shape(x)[1:]
    for name, value, upper in (("eps_max", eps_max, eps_limit(norm, shape)), ("tolerance", tolerance, eps_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= upper:
            raise ValueError(f"`{name}` must be a number in (0, {upper:g}]. Received: {name}={value!r}")
    steps = check_positive_int("steps", steps)
    call = checked_call(model, x, labels, [eps_max], norm=norm, seed=seed, example_ids=example_ids, loss=loss,
                        random_start=random_start, gradient=gradient, norms=L1_NORMS,
                        rel_stepsize=2.5 / steps if rel_stepsize is None else rel_stepsize)
    n = len(call.x)
    bounds = np.full(n, np.inf) if upper_bounds is None else np.asarray(upper_bounds, dtype=np.float64)
    if bounds.shape != (n,) or np.isnan(bounds).any() or (bounds < 0).any():
        raise ValueError(f"`upper_bounds` must be {n} non-negative budgets (inf where none is known). "
                         f"Received: shape={bounds.shape}")
    attack = _round_attack(model, call, norm, steps)
    clean_wrong = success_of(predict_logits(model, call.x, example_ids=call.example_ids), call.labels, None)
    found_eps, x_adv = _bisect(attack, call.x, clean_wrong, np.minimum(float(eps_max), bounds),
                               known=np.isfinite(bounds) & (bounds <= eps_max) & ~clean_wrong, tolerance=tolerance)
    return MinimalResult(eps=found_eps, x_adv=x_adv, norm=norm, eps_max=float(eps_max), tolerance=float(tolerance))


def _round_attack(model: keras.Model, call: Call, norm: str, steps: int) -> Any:
    """``attack(index, eps, round_) -> (x_adv, success)``: one bisection round on the examples ``index``, each at its
    own ε: PGD with early stop (l1-APGD in L1), its random starts drawn from the round's own stream."""
    x, labels, ids, seed = call.x, call.labels, call.example_ids, call.seed
    loss, random_start, rel, gradient = (call.params[k] for k in ("loss", "random_start", "rel_stepsize", "gradient"))

    def attack(index: np.ndarray, eps: np.ndarray, round_: int) -> tuple[np.ndarray, np.ndarray]:
        if norm == "l1":
            result = apgd_engine(model, x[index], labels[index], np.zeros(1), budgets=eps[None, :], norm=norm,
                                 loss="dlr" if loss == "margin" else loss, steps=steps, restarts=1,
                                 rho=APGD_CE["rho"], seed=seed,
                                 example_ids=ids[index], stream=f"minimal-{round_}", gradient=gradient,
                                 target_ranks=None)
            return result.x_adv[0], result.success[0]
        result = pgd_engine(model, x[index], labels[index], None, eps[None, :], norm=norm, steps=steps, loss=loss,
                            random_start=random_start, restarts=1, early_stop=True, seed=seed,
                            example_ids=ids[index], attack=f"minimal-{round_}", grid=np.zeros(1),
                            rel_stepsize=rel, gradient=gradient)
        return result.x_adv[0], result.success[0]

    return attack


def _bisect(attack: Any, x: np.ndarray, clean_wrong: np.ndarray, hi: np.ndarray, known: np.ndarray,
            tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """The search (module notes): ``(minimal ε, adversarial)`` per example. ``hi``: each example's upper end,
    ``known``: where an adversarial at ``hi`` is proved already (another attack's); round 0 asks whether there is an
    adversarial at ``hi`` at all for the others, each later round halves every open interval."""
    n = len(x)
    found_eps = np.full(n, np.inf)
    x_adv = x.copy()
    found_eps[clean_wrong] = 0.0
    lo = np.zeros(n)
    hi = hi.copy()
    found_eps[known] = hi[known]
    todo = np.flatnonzero(~clean_wrong & ~known)
    if len(todo):  # is there an adversarial at eps_max at all?
        x_found, ok = attack(todo, hi[todo], 0)
        x_adv[todo[ok]] = x_found[ok]
        found_eps[todo[ok]] = hi[todo[ok]]
        todo = todo[ok]
    todo = np.union1d(todo, np.flatnonzero(known))
    todo = todo[(hi[todo] - lo[todo]) > tolerance]
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
    return found_eps, x_adv
