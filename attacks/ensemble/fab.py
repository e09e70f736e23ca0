"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), L∞, L2 and L1: a minimum-norm attack.

FAB-T linearises the decision boundary between the label y and a target class t at the current point (the
hyperplane where ``z_t − z_y`` crosses 0, from its value and gradient) and moves towards the closest point of
that hyperplane inside the [0, 1] box, both from the current point and from the input; the two moves are mixed
with a weight that favours staying close to the input (at most ``alpha_max``), overshot by ``eta``. Once a point
is misclassified its norm is remembered if it is the smallest yet, and the point is pulled back towards the
input by ``beta``. So FAB-T does not look for any adversarial within ε: it looks for the closest one, and an
example counts as fooled at ε when the closest found lies within ε. One run therefore answers every ε of a
grid at once.

The targets are the classes with the 2nd … (n+1)-th highest clean logits (AutoAttack: 9). The first run of each
target starts at the input; further runs (``restarts``) start at a random point at distance ε/2, one per ε.

FAB, untargeted (:func:`fab_untargeted`, AutoAttack's ``plus`` version), takes at every step the boundary of the
class whose linearisation is closest instead of one target's: ``min_k |z_k − z_y| / ‖∇(z_k − z_y)‖_*`` (the dual
norm), from the gradients of every logit (one backward pass per class, :func:`advsweep.attacks.engine.core.closest_boundary`);
the step is the same. AutoAttack's plus version runs it with 5 restarts.

References: F. Croce, M. Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
ICML 2020; the authors' code in AutoAttack (``autoattack/fab_base.py``, ``fab_projections.py``), which this
follows step by step with AutoAttack's settings (100 steps, ``alpha_max = 0.1``, ``eta = 1.05``, ``beta = 0.9``,
9 targets, one run each). Differences, none of which weakens the attack: an example's run stops once the
closest adversarial found lies within the smallest ε still to be decided (further steps could only shrink a
norm that already decides every ε of the grid); ties in the projection's sort are broken by position (a stable
sort) so that the result is reproducible; the random starts come from each example's own stream.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from advsweep.attacks.engine.core import CLOSEST_BOUNDARY, AttackResult, checked_call, classes_of, target_ranks
from advsweep.attacks.engine.geometry import edge_start, sizes_of, to_box
from advsweep.attacks.engine.programme import Outputs, Programme, Runs, Step, grid_budgets, run_engine
from advsweep.attacks.engine.spec import L1_NORMS, check_combination
from advsweep.defaults import ATTACK, FAB, FAB_UNTARGETED


def fab_untargeted(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    steps: int = FAB_UNTARGETED["steps"],
    restarts: int = FAB_UNTARGETED["restarts"],
    alpha_max: float = FAB_UNTARGETED["alpha_max"],
    eta: float = FAB_UNTARGETED["eta"],
    beta: float = FAB_UNTARGETED["beta"],
    seed: int = ATTACK["seed"],
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> AttackResult:
    """Untargeted FAB for every ε of a list: each step towards the closest linearised boundary of any class.
    Arguments as :func:`fab_targeted` (no targets); AutoAttack's setting: 100 steps, 5 runs (the first from the
    input). Each step costs one backward pass per class and a forward pass."""
    call = checked_call(model, x, labels, epsilons, norm=norm, seed=seed, example_ids=example_ids, steps=steps,
                        restarts=restarts, alpha_max=alpha_max, eta=eta, beta=beta, gradient=gradient,
                        norms=L1_NORMS)
    classes = classes_of(model, call.x)
    check_combination("fab", {}, call.norm, classes)
    return fab_engine(model, call.x, call.labels, call.eps, norm=call.norm, target_ranks=None, seed=call.seed,
                      example_ids=call.example_ids, **call.params)


def fab_targeted(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    steps: int = FAB["steps"],
    target_classes: int = FAB["target_classes"],
    restarts: int = FAB["restarts"],
    alpha_max: float = FAB["alpha_max"],
    eta: float = FAB["eta"],
    beta: float = FAB["beta"],
    seed: int = ATTACK["seed"],
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> AttackResult:
    """FAB-T for every ε of a list.

    Args:
        model, x, labels, epsilons, norm, seed, example_ids, gradient: as
            :func:`advsweep.attacks.projected_gradient_descent`.
        steps: iterations per run (each one gradient of ``z_t − z_y`` and one forward pass).
        target_classes: how many of the classes with the highest clean logits after the top one to target.
        restarts: runs per target; the first starts at the input, the others at a random point at ε/2.
        alpha_max: the largest weight of the step from the input (FAB's bias towards small perturbations).
        eta: overshoot of the projection onto the linearised boundary.
        beta: the pull back towards the input after a misclassified point.

    Returns:
        ``x_adv`` at ε: the closest adversarial found, when it lies within ε (its norm is the example's minimal
        ε as far as FAB-T can tell), else the input.
    """
    call = checked_call(model, x, labels, epsilons, norm=norm, seed=seed, example_ids=example_ids, steps=steps,
                        target_classes=target_classes, restarts=restarts, alpha_max=alpha_max, eta=eta, beta=beta,
                        gradient=gradient, norms=L1_NORMS)
    classes = classes_of(model, call.x)
    check_combination("fab-t", {}, call.norm, classes)
    params = dict(call.params)
    ranks = target_ranks(classes, params.pop("target_classes"))
    return fab_engine(model, call.x, call.labels, call.eps, norm=call.norm, target_ranks=ranks, seed=call.seed,
                      example_ids=call.example_ids, **params)


# --------------------------------------------------------------------------------------------
# projections onto {z : w·z = b} ∩ [0, 1]^D (the authors' fab_projections.py), rows of points at once


def _sum(v: np.ndarray) -> np.ndarray:
    """Row sums of float32 ``(M, D)``, accumulated in float64 and rounded once to float32, as PyTorch's CPU kernels
    sum float32 (the authors' code runs there). NumPy's float32 sums and running sums round at every addition:
    near the boundary, where FAB's iterates converge, ``w·x − b`` is smaller than that error, the projection
    returns no move, and the run stays put for the rest of its steps (measured on the VGG16: stuck 2·10⁻⁴ short
    of the boundary, at L∞ 0.0209 where the reference went on to 0.0193)."""
    return v.sum(axis=1, dtype=np.float64).astype(np.float32)


def _cumsum(v: np.ndarray) -> np.ndarray:
    """Running row sums of float32 ``(M, D)``, accumulated in float64 (see :func:`_sum`)."""
    return np.cumsum(v, axis=1, dtype=np.float64).astype(np.float32)


def stable_argsort(v: np.ndarray) -> np.ndarray:
    """``np.argsort(v, axis=1, kind="stable")`` of float32 ``(M, D)`` without NaN, as one sort of distinct 64-bit keys:
    each value's bits mapped to an unsigned integer in the order of the values (−0 taken as +0, as the comparison
    does), above its position, which breaks ties as the stable sort does. NumPy sorts 64-bit integers with its
    vectorised quicksort, several times faster than its stable sort of float32, which was the largest part of a FAB
    step (measured on 540 rows of MNIST: 17 of 40 ms)."""
    bits = (v.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    ordered = bits ^ np.where(bits >> np.uint32(31), np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    keys = (ordered.astype(np.uint64) << np.uint64(32)) | np.arange(v.shape[1], dtype=np.uint64)
    return (np.sort(keys, axis=1) & np.uint64(0xFFFFFFFF)).astype(np.intp)


def projection_linf(points: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(M, D)`` moves ``d`` of least L∞ norm taking each point ``t`` onto its hyperplane ``w·(t + d) = b`` with
    ``t + d`` in [0, 1] (as far as the box allows)."""
    t, w, b = points.astype(np.float32), w.astype(np.float32).copy(), b.astype(np.float32).copy()
    m, dims = t.shape
    rows = np.arange(m)
    sign = np.where(_sum(w * t) - b >= 0, 1.0, -1.0).astype(np.float32)
    w *= sign[:, None]
    b *= sign
    a = (w < 0).astype(np.float32)
    d = (a - t) * (w != 0)
    p = a - t * (2 * a - 1)
    indp = stable_argsort(p)
    b = b - _sum(w * t)
    b0 = _sum(w * d)
    indp2 = indp[:, ::-1]
    ws = np.take_along_axis(w, indp2, 1)
    bs2 = -ws * np.take_along_axis(d, indp2, 1)
    s = _cumsum(np.abs(ws))
    sb = _cumsum(bs2) + b0[:, None]
    b2 = sb[:, -1] - s[:, -1] * p[rows, indp[:, 0]]
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & (b - b2 <= 0)
    lb = np.zeros(c2.sum(), np.float32)
    ub = np.full(c2.sum(), dims - 1, np.float32)
    indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
    inner = np.arange(len(lb))
    for _ in range(math.ceil(math.log2(dims))):
        middle = np.floor((lb + ub) / 2)
        at = middle.astype(np.int64)
        current = indp_[inner, dims - 1 - at]
        b2_ = sb_[inner, at] - s_[inner, at] * p_[inner, current]
        c = b_ - b2_ > 0
        lb = np.where(c, middle, lb)
        ub = np.where(c, ub, middle)
    lbi = lb.astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if c_l.any():
            lmbd = np.maximum((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), 0)[:, None]
            d[c_l] = (2 * a[c_l] - 1) * lmbd
        if c2.any():
            lmbd = np.maximum((b[c2] - sb[c2, lbi]) / (-s[c2, lbi]), 0)[:, None]
            d[c2] = np.minimum(lmbd, d[c2]) * a[c2] + np.maximum(-lmbd, d[c2]) * (1 - a[c2])
    return (d * (w != 0)).astype(np.float32)


def projection_l2(points: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(M, D)`` moves ``d`` of least L2 norm taking each point ``t`` onto its hyperplane ``w·(t + d) = b`` with
    ``t + d`` in [0, 1] (as far as the box allows)."""
    t, w = points.astype(np.float32), w.astype(np.float32).copy()
    m, dims = t.shape
    c = _sum(w * t) - b.astype(np.float32)
    flip = c < 0
    w[flip] *= -1
    c[flip] *= -1
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(np.maximum(t / w, (t - 1) / w), -1e12, 1e12).astype(np.float32)
    r[np.abs(w) < 1e-8] = 1e12
    r[r == -1e12] *= -1
    indr = stable_argsort(r)
    rs = np.take_along_axis(r, indr, 1)
    rs2 = np.pad(rs[:, 1:], ((0, 0), (0, 1)))
    rs[rs == 1e12] = 0
    rs2[rs2 == 1e12] = 0
    w3s = np.take_along_axis(w ** 2, indr, 1)
    w5 = _sum(w3s)[:, None]
    ws = w5 - _cumsum(w3s)
    d = -(r * w) * (np.abs(w) > 1e-8)
    s = np.concatenate(((-w5[:, 0] * rs[:, 0])[:, None], _cumsum((-rs2 + rs) * ws) - w5 * rs[:, :1]), 1)
    c4 = s[:, 0] + c < 0
    c3 = _sum(d * w) + c > 0
    c2 = ~c4 & ~c3
    lb = np.zeros(c2.sum(), np.float32)
    ub = np.full(c2.sum(), dims - 1, np.float32)
    s_, c_ = s[c2], c[c2]
    inner = np.arange(len(lb))
    for _ in range(math.ceil(math.log2(dims))):
        middle = np.floor((lb + ub) / 2)
        above = s_[inner, middle.astype(np.int64)] + c_ > 0
        lb = np.where(above, middle, lb)
        ub = np.where(above, ub, middle)
    lbi = lb.astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if c4.any():
            alpha = c[c4] / w5[c4, 0]
            d[c4] = -alpha[:, None] * w[c4]
        if c2.any():
            denominator = ws[c2, lbi]
            alpha = (s[c2, lbi] + c[c2]) / denominator + rs[c2, lbi]
            alpha[denominator == 0] = 0
            c5 = (alpha[:, None] > r[c2]).astype(np.float32)
            d[c2] = d[c2] * c5 - alpha[:, None] * w[c2] * (1 - c5)
    return (d * (np.abs(w) > 1e-8)).astype(np.float32)


def projection_l1(points: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(M, D)`` moves ``d`` of least L1 norm taking each point ``t`` onto its hyperplane ``w·(t + d) = b`` with
    ``t + d`` in [0, 1] (as far as the box allows): the coordinates are moved to their bounds in the order of
    ``1 / |w_i|`` (the cheapest change of ``w·t`` per unit of L1 first) until the next one would cross the
    hyperplane, which then moves just onto it; a point that cannot reach the hyperplane moves every coordinate
    to the bound on the hyperplane's side."""
    t, w, b = points.astype(np.float32), w.astype(np.float32).copy(), b.astype(np.float32)
    m, dims = t.shape
    c = _sum(w * t) - b
    side = np.where(c >= 0, 1.0, -1.0).astype(np.float32)
    w *= side[:, None]
    c *= side
    with np.errstate(divide="ignore"):
        r = np.minimum(np.abs(np.float32(1.0) / w), np.float32(1e12))
    indr = stable_argsort(r)
    indr_rev = np.empty_like(indr)  # each coordinate's place in that order
    np.put_along_axis(indr_rev, indr, np.arange(dims)[None], axis=1)
    d = (-t + (w < 0)) * (w != 0)
    ds = np.take_along_axis(np.minimum(-w * t, w * (1 - t)), indr, 1)
    s = _cumsum(np.concatenate((c[:, None], ds), 1))
    c2 = s[:, -1] < 0
    lb = np.zeros(c2.sum(), np.float32)
    ub = np.full(c2.sum(), s.shape[1], np.float32)
    s_, inner = s[c2], np.arange(c2.sum())
    for _ in range(math.ceil(math.log2(dims))):
        middle = np.floor((lb + ub) / 2)
        above = s_[inner, middle.astype(np.int64)] > 0
        lb = np.where(above, middle, lb)
        ub = np.where(above, ub, middle)
    lbi = lb.astype(np.int64)
    if c2.any():
        rows = np.flatnonzero(c2)
        at = indr[rows, lbi]  # the coordinate that stops on the hyperplane
        alpha = -s[rows, lbi] / w[rows, at]
        d[rows] = d[rows] * (indr_rev[rows] < lbi[:, None])  # the coordinates before it go to their bounds
        d[rows, at] = alpha
    return (d * (np.abs(w) > 1e-8)).astype(np.float32)


PROJECTIONS = {"linf": projection_linf, "l2": projection_l2, "l1": projection_l1}


PROJECTION_ROWS = 64  # rows per projection call: their temporaries then stay small enough for the C allocator to
# reuse, where those of a whole block (hundreds of rows) are mapped afresh, page by page, at every call (MNIST, 540
# rows: 8,000 page faults and 32–42 ms a call at once; 0 and 17 ms in calls of 64 rows)


def projected(norm: str, points: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:data:`PROJECTIONS` ``[norm]`` of ``(M, D)`` points, in calls of :data:`PROJECTION_ROWS` rows (each row's move
    depends on its row alone)."""
    project, rows = PROJECTIONS[norm], PROJECTION_ROWS
    return np.concatenate([project(points[i: i + rows], w[i: i + rows], b[i: i + rows])
                           for i in range(0, len(points), rows)] or [np.zeros_like(points)])


def fab_step(x1: np.ndarray, x0: np.ndarray, values: np.ndarray, grads: np.ndarray, norm: str, alpha_max: float,
             eta: float) -> np.ndarray:
    """One FAB step of each of M examples from ``x1`` (inputs ``x0``), given ``z_t − z_y`` (``values``, ``(M,)``) and
    its gradient at ``x1``: project ``x1`` and ``x0`` onto the linearised boundary within the box, mix the two
    moves with ``α = min(max(‖d₁‖ / (‖d₁‖ + ‖d₂‖), 0), alpha_max)``, overshoot by ``eta``, clip to [0, 1]."""
    m = len(x1)
    w = grads.reshape(m, -1)
    b = -values.astype(np.float32) + _sum(w * x1.reshape(m, -1))
    d1, d2 = projected(norm, x1.reshape(m, -1), w, b), projected(norm, x0.reshape(m, -1), w, b)
    size1, size2 = (np.maximum(sizes_of(d, norm), np.float32(1e-8)) for d in (d1, d2))
    alpha = np.minimum(np.maximum(size1 / (size1 + size2), 0.0), alpha_max).astype(np.float32)
    alpha = alpha.reshape((m,) + (1,) * (x1.ndim - 1))
    e = np.float32(eta)
    d1, d2 = d1.reshape(x1.shape), d2.reshape(x1.shape)
    return to_box((x1 + e * d1) * (1 - alpha) + (x0 + e * d2) * alpha).astype(np.float32)


class FabStep(Step):
    """FAB-T's iteration over a block of examples, each in its own run towards its target t (Croce & Hein 2020), as
    the authors' ``attack_single_run``::

        x = start; repeat ``steps`` times:
            f, ∇f = z_t − z_y and its gradient at x;  b = ∇f·x − f                 (the boundary's linearisation)
            d₁, d₂ = the projections of x and x₀ onto {z : ∇f·z = b} ∩ [0, 1]^D
            α = min(max(‖d₁‖ / (‖d₁‖ + ‖d₂‖), 0), alpha_max);  x = clip((x + η d₁)(1 − α) + (x₀ + η d₂) α)
            if x is misclassified (a forward pass; the engine keeps x for every ε whose ball holds it):
                x = x₀ + β (x − x₀)

    So a step costs a gradient and a forward pass. Runs have no end point: an example FAB-T does not fool keeps its
    input.
    """

    trace_sign = None  # the loss aims FAB's steps; FAB minimises the perturbation, not the loss

    def __init__(self, n: int, shape: tuple[int, ...], *, steps: int, alpha_max: float, eta: float, beta: float,
                 norm: str, classes: int | None = None):
        self.steps, self.alpha_max, self.eta, self.beta, self.norm = steps, alpha_max, eta, beta, norm
        # targeted: z_t − z_y for the run's target; untargeted (``classes`` given): the closest boundary of any class
        self.loss = "logit-difference" if classes is None else f"{CLOSEST_BOUNDARY}{norm}"
        self.gradients = 1 if classes is None else classes
        self.x0 = np.zeros((n,) + shape, np.float32)
        self.i, self.checking = np.zeros(n, np.int64), np.zeros(n, dtype=bool)

    def start(self, runs: Runs) -> np.ndarray:
        e = runs.examples
        self.x0[e], self.i[e], self.checking[e] = runs.x0, 0, False
        return np.stack([x0 if restart == 0 else edge_start(x0, float(eps), self.norm, rng, fraction=0.5, floor=False)
                         for x0, eps, restart, rng in zip(runs.x0, runs.eps, runs.restarts, runs.rngs)])

    def needs_gradient(self, e: np.ndarray) -> np.ndarray:
        """A step's new point is checked by a forward pass; every other point is where a step starts."""
        return ~self.checking[e]

    def step(self, e: np.ndarray, x: np.ndarray, out: Outputs, fooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        moved = x.copy()
        checked, stepping = self.checking[e], ~self.checking[e]
        pull = checked & fooled
        moved[pull] = self.x0[e[pull]] + (x[pull] - self.x0[e[pull]]) * np.float32(self.beta)
        if stepping.any():
            assert out.loss is not None and out.grad is not None
            moved[stepping] = fab_step(x[stepping], self.x0[e[stepping]], out.loss[stepping], out.grad[stepping],
                                       self.norm, self.alpha_max, self.eta)
        self.i[e] += stepping
        self.checking[e] = stepping
        return moved, checked & (self.i[e] >= self.steps)

    def end(self, e: np.ndarray, x: np.ndarray, out: Outputs) -> tuple[np.ndarray, np.ndarray]:
        return x, out.logits


def fab_engine(
    model: keras.Model,
    x: np.ndarray,
    labels: np.ndarray,
    eps: np.ndarray,
    *,
    norm: str,
    steps: int,
    target_ranks: list[int] | None,
    restarts: int,
    alpha_max: float,
    eta: float,
    beta: float,
    seed: int,
    example_ids: np.ndarray,
    gradient: str,
    limit: np.ndarray | None = None,
) -> AttackResult:
    """FAB-T (untargeted FAB with ``target_ranks=None``) on validated inputs over an ε grid ``(K,)``: :class:`FabStep`
    run by the engine (:func:`advsweep.attacks.engine.programme.run_engine`). An example's programme, target by target: one
    run from the input, which decides every ε below ``limit`` at once, then for each further restart one run per ε
    still undecided, from a random start at ε/2; it ends once every ε is decided."""
    targeted = target_ranks is not None
    step = FabStep(len(x), x.shape[1:], steps=steps, alpha_max=alpha_max, eta=eta, beta=beta, norm=norm,
                   classes=None if targeted else classes_of(model, x))
    programme = Programme(stream="fab-t" if targeted else "fab", restarts=restarts, target_ranks=target_ranks,
                          any_budget=True, classes_with_label=targeted)
    return run_engine(model, step, programme, x, labels, grid_budgets(eps, len(x)), seed=seed, example_ids=example_ids,
                      grid=eps, norm=norm, gradient=gradient, limit=limit)
