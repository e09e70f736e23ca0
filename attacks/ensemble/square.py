"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), L∞, L2 and L1: a score-based random search
that needs no gradient, only the logits.

Each query changes the current best perturbation inside one random square window (L∞: set the window to ±ε,
one sign per channel; L2: move mass into one window and out of another, keeping the norm at ε; L1, AutoAttack's L1
version from "Mind the box" (Croce & Hein, ICML 2021): the same move with L1 profiles and norms, then projected onto
the L1 ball ∩ [0, 1], :func:`advsweep.attacks.engine.geometry.l1_point`) and keeps the
change when the margin loss ``z_y − max_{j≠y} z_j`` falls or the point is misclassified. The side of the window
shrinks with the query count (AutoAttack's schedule for ``p``, starting at ``p_init = 0.8``). Because it never
reads a gradient, it is AutoAttack's check on gradient masking: when Square fools examples that the white-box
attacks left robust, the gradients are not to be trusted (:mod:`advsweep.attacks.ensemble.cascade` says so).

References: M. Andriushchenko, F. Croce, N. Flammarion, M. Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020; the authors' code in AutoAttack (``autoattack/square.py``),
which this follows step by step, with AutoAttack's settings (margin loss, 5000 queries, ``p_init = 0.8``, the
schedule not rescaled to the query budget). Difference, none of which weakens the attack: each example draws
its windows, signs and initial stripes from its own random stream (:func:`advsweep.attacks.engine.core.example_stream`),
where the authors draw one window per query for the whole batch; so an example's result does not depend on
which others share its batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from advsweep.attacks.engine.core import AttackResult, checked_call, classes_of
from advsweep.attacks.engine.geometry import l1_point, l2_norms, linf_project, to_box
from advsweep.attacks.engine.programme import Outputs, Programme, Runs, Step, grid_budgets, run_engine
from advsweep.attacks.engine.spec import L1_NORMS
from advsweep.defaults import ATTACK, SQUARE


def square_attack(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    queries: int = SQUARE["queries"],
    p_init: float = SQUARE["p_init"],
    restarts: int = SQUARE["restarts"],
    seed: int = ATTACK["seed"],
    example_ids: Any = None,
) -> AttackResult:
    """Square Attack for every ε of a list, on the examples not fooled at a smaller ε.

    Args:
        model, x, labels, epsilons, norm, seed, example_ids: as :func:`advsweep.attacks.projected_gradient_descent`.
        queries: model evaluations per run after the initial point (AutoAttack: 5000).
        p_init: the first window's share of the image's pixels (AutoAttack: 0.8).
        restarts: runs per ε from independent random initial points, each on the examples not yet fooled.

    Returns:
        The any-iterate view: ``x_adv`` is the first misclassified point, else the point of lowest margin.
    """
    call = checked_call(model, x, labels, epsilons, norm=norm, seed=seed, example_ids=example_ids, queries=queries,
                        p_init=p_init, restarts=restarts, norms=L1_NORMS)
    return square_engine(model, call.x, call.labels, call.eps, norm=call.norm, seed=call.seed,
                         example_ids=call.example_ids, **call.params)


def p_schedule(i: int, p_init: float) -> float:
    """AutoAttack's share of pixels in the window at query ``i`` (0-based), not rescaled to the budget:
    ``p_init`` halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 queries."""
    for bound, divisor in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16), (200, 8),
                           (50, 4), (10, 2)):
        if i > bound:
            return p_init / divisor
    return p_init


def window_side(i: int, p_init: float, shape: tuple[int, ...], norm: str) -> int:
    """The side of query ``i``'s square on images of ``shape`` (H, W, C): ``round(√(p · H·W))``, at least 1 (L∞)
    or at least 3 and odd (L2, L1)."""
    h, w, _ = shape
    side = int(round(math.sqrt(p_schedule(i, p_init) * h * w)))
    if norm == "linf":
        return max(side, 1)
    side = max(side, 3)
    return side + 1 if side % 2 == 0 else side


def window_sides(i: np.ndarray, p_init: float, shape: tuple[int, ...], norm: str) -> np.ndarray:
    """:func:`window_side` of each example's query count ``i`` ``(M,)``, computed once per distinct count (the
    examples of a block are mostly at the same one)."""
    counts, at = np.unique(i, return_inverse=True)
    return np.array([window_side(int(q), p_init, shape, norm) for q in counts], np.int64)[at]


def _signs(rng: np.random.Generator, size: Any) -> np.ndarray:
    return np.where(rng.random(size) * 2.0 - 1.0 >= 0.0, 1.0, -1.0).astype(np.float32)


def _unit(delta: np.ndarray, norm: str) -> np.ndarray:
    return delta / (np.sum(np.abs(delta)) if norm == "l1" else np.sqrt(np.sum(delta ** 2)))


def _l1_inside(x0: np.ndarray, delta: np.ndarray, eps: np.ndarray | float) -> np.ndarray:
    """``x₀ + δ`` onto the L1 ball of radius ``ε (1 − 10⁻⁶)`` ∩ [0, 1] (the authors keep a hair inside ε), rows at
    once."""
    return l1_point(x0, delta, np.asarray(eps, np.float64) * (1.0 - 1e-6))


def rectangle_profile(rows: int, cols: int, norm: str = "l2") -> np.ndarray:
    """The authors' ``eta_rectangles``: nested rectangles around the centre, each adding ``1 / (k + 1)²`` (L2) or
    ``1 / (k + 1)⁴`` (L1), normalised to unit norm."""
    delta = np.zeros((rows, cols), np.float64)
    r_c, c_c = rows // 2 + 1, cols // 2 + 1
    top, left = r_c - 1, c_c - 1
    power = 4 if norm == "l1" else 2
    for k in range(max(r_c, c_c)):
        delta[max(top, 0): min(top + 2 * k + 1, rows), max(left, 0): min(left + 2 * k + 1, cols)] += 1.0 / (k + 1) ** power
        top, left = top - 1, left - 1
    return _unit(delta, norm)


def half_profile(side: int, norm: str = "l2") -> np.ndarray:
    """The authors' ``eta`` before its random transposition: the upper half of the window positive, the lower half
    negative (nested rectangles), unit norm, float64."""
    delta = np.zeros((side, side), np.float64)
    delta[: side // 2] = rectangle_profile(side // 2, side, norm)
    delta[side // 2:] = -rectangle_profile(side - side // 2, side, norm)
    return _unit(delta, norm)


def window_profile(side: int, rng: np.random.Generator, norm: str = "l2") -> np.ndarray:
    """The authors' ``eta``: :func:`half_profile`, transposed with probability ½."""
    delta = half_profile(side, norm)
    return (delta.T if rng.random() > 0.5 else delta).astype(np.float32)


def initial_point(x0: np.ndarray, eps: float, norm: str, rng: np.random.Generator) -> np.ndarray:
    """L∞: vertical stripes, each column of each channel at ±ε; L2 and L1: a 5 × 5 grid of windows of side ⌊H/5⌋,
    each a signed :func:`window_profile`, scaled to norm ε (L1: projected onto the ball ∩ box). Clipped to
    [0, 1]."""
    h, w, c = x0.shape
    e = np.float32(eps)
    if norm == "linf":
        return to_box(x0 + e * _signs(rng, (1, w, c))).astype(np.float32)
    delta = np.zeros_like(x0)
    side = max(h // 5, 1)
    first = (h - side * 5) // 2
    for top in range(first, first + side * (h // side), side):
        for left in range(first, first + side * (w // side), side):
            delta[top: top + side, left: left + side] += (window_profile(side, rng, norm)[..., None]
                                                          * _signs(rng, (1, 1, c)))
    if norm == "l1":
        return _l1_inside(x0[None], delta[None], eps)[0]
    return to_box(x0 + delta / (l2_norms(delta[None])[0] + np.float32(1e-12)) * e).astype(np.float32)


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``z_y − max_{j≠y} z_j`` per row: positive while the prediction is the label."""
    rows = np.arange(len(labels))
    own = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return own - others.max(axis=-1)


def _window_index(rows: np.ndarray, top: np.ndarray, left: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
    """The index of each row's square window (``array[at]`` is ``(G, side, side, C)``): ``rows`` ``(G,)`` of the
    array, their windows' first rows ``top`` and columns ``left``."""
    return (rows[:, None, None], (top[:, None] + np.arange(side))[:, :, None], (left[:, None] + np.arange(side))[:, None, :])


def linf_proposals(x0: np.ndarray, x_best: np.ndarray, eps: np.ndarray, i: np.ndarray, p_init: float,
                   rngs: list[np.random.Generator]) -> np.ndarray:
    """The authors' L∞ update of M examples at once ``(M, H, W, C)``, at their own query counts ``i`` ``(M,)``: each
    example's window and signs come from its own stream, in the order their code draws them (top, left, signs;
    ``tests/test_autoattack.py`` holds this to their update of one example at a time, to the bit). Only the
    windows are computed: a best point lies in its ball and the box, which the update's clipping leaves as it
    is outside the window (after the first hundreds of queries a window is a few pixels of the image)."""
    m, (h, w, c) = len(x0), x0.shape[1:]
    draws = np.stack([rng.random(2 + c) for rng in rngs]) if m else np.zeros((0, 2 + c))
    sides = window_sides(i, p_init, (h, w, c), "linf")
    signs = np.where(draws[:, 2:] * 2.0 - 1.0 >= 0.0, 1.0, -1.0).astype(np.float32)
    candidates = x_best.copy()
    for side in np.unique(sides).tolist():
        g = np.flatnonzero(sides == side)
        top, left = ((h - side) * draws[g, 0]).astype(np.int64), ((w - side) * draws[g, 1]).astype(np.int64)
        at = _window_index(g, top, left, side)
        e = eps[g].astype(np.float32).reshape(-1, 1, 1, 1)
        moved, centre = x_best[at] + np.float32(2.0) * e * signs[g].reshape(-1, 1, 1, c), x0[at]
        candidates[at] = linf_project(centre, moved, e)
    return candidates


def _window(top: np.ndarray, left: np.ndarray, side: int, shape: tuple[int, ...]) -> np.ndarray:
    """``(M, H, W, 1)`` masks of each example's square window."""
    h, w = shape[:2]
    rows = (np.arange(h) >= top[:, None]) & (np.arange(h) < top[:, None] + side)
    cols = (np.arange(w) >= left[:, None]) & (np.arange(w) < left[:, None] + side)
    return (rows[:, :, None] & cols[:, None, :])[..., None]


def window_proposals(x0: np.ndarray, x_best: np.ndarray, eps: np.ndarray, i: np.ndarray, p_init: float,
                     rngs: list[np.random.Generator], norm: str) -> np.ndarray:
    """The authors' L2 or L1 update of M examples at once, at their own query counts ``i``: the examples whose
    windows have the same side are computed together; each example draws from its own stream in the order their
    code draws (window, second window, transposition, signs). L1: the first window takes a fresh signed L1 profile
    plus its old content, rescaled per channel to the budget left over plus the L1 mass of both windows (times the
    channels, as the authors write it), the second window is emptied, and the result is projected onto the L1 ball
    ∩ [0, 1]."""
    m, shape = len(x0), x0.shape[1:]
    (h, w, c), out = shape, np.empty_like(x0)
    draws = np.stack([rng.random(5 + c) for rng in rngs]) if m else np.zeros((0, 5 + c))
    sides = window_sides(i, p_init, shape, norm)
    for side in np.unique(sides).tolist():
        g = np.flatnonzero(sides == side)
        u, e = draws[g], eps[g].astype(np.float32).reshape(-1, 1, 1, 1)
        top, left = ((h - side) * u[:, 0]).astype(np.int64), ((w - side) * u[:, 1]).astype(np.int64)
        second = _window(((h - side) * u[:, 2]).astype(np.int64), ((w - side) * u[:, 3]).astype(np.int64), side, shape)
        delta = x_best[g] - x0[g]
        at = _window_index(np.arange(len(g)), top, left, side)
        inside = delta[at]  # (G, side, side, C): the first window's content
        both = (_window(top, left, side, shape) | second).astype(np.float32)
        profile = half_profile(side, norm)
        flipped = np.where((u[:, 4] > 0.5)[:, None, None], profile.T.astype(np.float32), profile.astype(np.float32))
        signs = np.where(u[:, 5:] * 2.0 - 1.0 >= 0.0, 1.0, -1.0).astype(np.float32).reshape(-1, 1, 1, c)
        if norm == "l2":
            new = flipped[..., None] * signs + inside / (np.float32(1e-12) + np.sqrt(np.sum(inside ** 2, axis=(1, 2),
                                                                                             keepdims=True)))
            scale = np.sqrt(np.maximum(e * e - l2_norms(delta, keepdims=True) ** 2, 0.0) / c
                            + l2_norms(delta * both, keepdims=True) ** 2)
            new = new / (np.float32(1e-12) + np.sqrt(np.sum(new ** 2, axis=(1, 2), keepdims=True))) * scale
        else:
            new = flipped[..., None] * signs + inside / (np.float32(1e-12) + np.sum(np.abs(inside), axis=(1, 2),
                                                                                    keepdims=True))
            norm_image = np.sum(np.abs(delta), axis=(1, 2, 3), keepdims=True)
            scale = (np.maximum(e - norm_image, 0.0) / c + np.sum(np.abs(delta * both), axis=(1, 2), keepdims=True)) * c
            new = new / (np.float32(1e-12) + np.sum(np.abs(new), axis=(1, 2), keepdims=True)) * scale
        delta = np.where(second, np.float32(0.0), delta)
        delta[at] = new
        out[g] = (to_box(x0[g] + delta / (l2_norms(delta, keepdims=True) + np.float32(1e-12)) * e) if norm == "l2"
                  else _l1_inside(x0[g], delta, eps[g]))
    return out


Proposals = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, list[np.random.Generator]], np.ndarray]
PROPOSALS: dict[str, Proposals] = {"linf": linf_proposals, "l2": functools.partial(window_proposals, norm="l2"),
                                   "l1": functools.partial(window_proposals, norm="l1")}


class SquareStep(Step):
    """Square Attack's random search over a block of examples, each in its own run: evaluate the initial point, then
    up to ``queries`` candidates, each changing the best point found so far inside one random window; a candidate
    is kept when its margin is lower or it is misclassified (the engine ends the run there). The end point is the
    best point."""

    loss = None

    def __init__(self, n: int, shape: tuple[int, ...], classes: int, *, queries: int, p_init: float, norm: str):
        self.queries, self.p_init, self.norm = queries, p_init, norm
        self.x0, self.x_best = np.zeros((n,) + shape, np.float32), np.zeros((n,) + shape, np.float32)
        self.logits_best = np.zeros((n, classes), np.float32)
        self.margin_best, self.eps = np.zeros(n, np.float32), np.zeros(n, np.float64)
        self.query, self.labels = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.rngs: list[np.random.Generator | None] = [None] * n

    def start(self, runs: Runs) -> np.ndarray:
        e = runs.examples
        self.x0[e], self.eps[e], self.labels[e], self.query[e] = runs.x0, runs.eps, runs.labels, -1
        for k, rng in zip(e, runs.rngs):
            self.rngs[k] = rng
        return np.stack([initial_point(x0, float(eps), self.norm, rng)
                         for x0, eps, rng in zip(runs.x0, runs.eps, runs.rngs)])

    def step(self, e: np.ndarray, x: np.ndarray, out: Outputs, fooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        margin = margins(out.logits, self.labels[e])
        i = self.query[e]
        keep = (i < 0) | (margin < self.margin_best[e]) | fooled
        kept = e[keep]
        self.x_best[kept], self.logits_best[kept], self.margin_best[kept] = x[keep], out.logits[keep], margin[keep]
        self.query[e] = i + 1
        rngs = [self.rngs[k] for k in e]
        candidates = PROPOSALS[self.norm](self.x0[e], self.x_best[e], self.eps[e], i + 1, self.p_init, rngs)  # type: ignore[arg-type]
        return candidates, i + 1 >= self.queries

    def end(self, e: np.ndarray, x: np.ndarray, out: Outputs) -> tuple[np.ndarray, np.ndarray]:
        return self.x_best[e], self.logits_best[e]


def square_engine(
    model: keras.Model,
    x: np.ndarray,
    labels: np.ndarray,
    eps: np.ndarray,
    *,
    norm: str,
    queries: int,
    p_init: float,
    restarts: int,
    seed: int,
    example_ids: np.ndarray,
    limit: np.ndarray | None = None,
) -> AttackResult:
    """Square Attack on validated inputs over an ε grid ``(K,)``: :class:`SquareStep` run by the engine
    (:func:`advsweep.attacks.engine.programme.run_engine`): for each ε (ascending, below ``limit``) and each restart, one run,
    until the example is fooled."""
    step = SquareStep(len(x), x.shape[1:], classes_of(model, x),
                      queries=queries, p_init=p_init, norm=norm)
    return run_engine(model, step, Programme(stream="square", restarts=restarts), x, labels, grid_budgets(eps, len(x)),
                      seed=seed, example_ids=example_ids, grid=eps, norm=norm, limit=limit)
