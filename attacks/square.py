"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), L∞ and L2: a score-based random search
that needs no gradient, only the logits.

Each query changes the current best perturbation inside one random square window (L∞: set the window to ±ε,
one sign per channel; L2: move mass into one window and out of another, keeping the norm at ε) and keeps the
change when the margin loss ``z_y − max_{j≠y} z_j`` falls or the point is misclassified. The side of the window
shrinks with the query count (AutoAttack's schedule for ``p``, starting at ``p_init = 0.8``). Because it never
reads a gradient, it is AutoAttack's check on gradient masking: when Square fools examples that the white-box
attacks left robust, the gradients are not to be trusted (:mod:`advsweep.attacks.ensemble` says so).

References: M. Andriushchenko, F. Croce, N. Flammarion, M. Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020; the authors' code in AutoAttack (``autoattack/square.py``),
which this follows step by step, with AutoAttack's settings (margin loss, 5000 queries, ``p_init = 0.8``, the
schedule not rescaled to the query budget). Difference, none of which weakens the attack: each example draws
its windows, signs and initial stripes from its own random stream (:func:`advsweep.attacks.core.example_stream`),
where the authors draw one window per query for the whole batch; so an example's result does not depend on
which others share its batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.attacks.core import (
    any_iterate_view,
    AttackResult,
    checked_call,
    example_stream,
    logits_fn,
    predict_logits,
    row_block,
)
from advsweep.attacks.pgd import result_of
from advsweep.attacks.rows import run_rows
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
                        p_init=p_init, restarts=restarts)
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
    or at least 3 and odd (L2)."""
    h, w, _ = shape
    side = int(round(math.sqrt(p_schedule(i, p_init) * h * w)))
    if norm == "linf":
        return max(side, 1)
    side = max(side, 3)
    return side + 1 if side % 2 == 0 else side


def _corner(rng: np.random.Generator, length: int, side: int) -> int:
    """A window's first row (or column), as the authors draw it: ``⌊(length − side) · u⌋``, u uniform in [0, 1)."""
    return int((length - side) * rng.random())


def _signs(rng: np.random.Generator, size: Any) -> np.ndarray:
    return np.where(rng.random(size) * 2.0 - 1.0 >= 0.0, 1.0, -1.0).astype(np.float32)


def rectangle_profile(rows: int, cols: int) -> np.ndarray:
    """The authors' ``eta_rectangles``: nested rectangles around the centre, each adding ``1 / (k + 1)²``,
    normalised to unit L2 norm."""
    delta = np.zeros((rows, cols), np.float64)
    r_c, c_c = rows // 2 + 1, cols // 2 + 1
    top, left = r_c - 1, c_c - 1
    for k in range(max(r_c, c_c)):
        delta[max(top, 0): min(top + 2 * k + 1, rows), max(left, 0): min(left + 2 * k + 1, cols)] += 1.0 / (k + 1) ** 2
        top, left = top - 1, left - 1
    return delta / np.sqrt(np.sum(delta ** 2))


def window_profile(side: int, rng: np.random.Generator) -> np.ndarray:
    """The authors' ``eta``: the upper half of the window positive, the lower half negative (nested rectangles),
    unit L2 norm, transposed with probability ½."""
    delta = np.zeros((side, side), np.float64)
    delta[: side // 2] = rectangle_profile(side // 2, side)
    delta[side // 2:] = -rectangle_profile(side - side // 2, side)
    delta /= np.sqrt(np.sum(delta ** 2))
    if rng.random() > 0.5:
        delta = delta.T
    return delta.astype(np.float32)


def _l2(v: np.ndarray) -> np.float32:
    return np.float32(np.sqrt(np.sum(v.astype(np.float32) ** 2)))


def initial_point(x0: np.ndarray, eps: float, norm: str, rng: np.random.Generator) -> np.ndarray:
    """L∞: vertical stripes, each column of each channel at ±ε; L2: a 5 × 5 grid of windows of side ⌊H/5⌋,
    each a signed :func:`window_profile`, scaled to norm ε. Clipped to [0, 1]."""
    h, w, c = x0.shape
    e = np.float32(eps)
    if norm == "linf":
        return np.clip(x0 + e * _signs(rng, (1, w, c)), 0.0, 1.0).astype(np.float32)
    delta = np.zeros_like(x0)
    side = max(h // 5, 1)
    first = (h - side * 5) // 2
    for top in range(first, first + side * (h // side), side):
        for left in range(first, first + side * (w // side), side):
            delta[top: top + side, left: left + side] += window_profile(side, rng)[..., None] * _signs(rng, (1, 1, c))
    return np.clip(x0 + delta / (_l2(delta) + np.float32(1e-12)) * e, 0.0, 1.0).astype(np.float32)


def proposal(x0: np.ndarray, x_best: np.ndarray, eps: float, norm: str, i: int, p_init: float,
             rng: np.random.Generator) -> np.ndarray:
    """Query ``i``'s candidate for one example, from its current best point (the authors' update, per example)."""
    h, w, c = x0.shape
    e = np.float32(eps)
    side = window_side(i, p_init, x0.shape, norm)
    top, left = _corner(rng, h, side), _corner(rng, w, side)
    if norm == "linf":
        candidate = x_best.copy()
        candidate[top: top + side, left: left + side] += np.float32(2.0) * e * _signs(rng, (1, 1, c))
        return np.clip(np.minimum(np.maximum(candidate, x0 - e), x0 + e), 0.0, 1.0).astype(np.float32)
    delta = x_best - x0
    window = (slice(top, top + side), slice(left, left + side))
    norms_window_1 = np.sqrt(np.sum(delta[window] ** 2, axis=(0, 1), keepdims=True))  # per channel
    top2, left2 = _corner(rng, h, side), _corner(rng, w, side)
    window2 = (slice(top2, top2 + side), slice(left2, left2 + side))
    mask = np.zeros((h, w, 1), np.float32)
    mask[window] = 1.0
    mask[window2] = 1.0
    norm_image, norm_windows = _l2(delta), _l2(delta * mask)
    new = window_profile(side, rng)[..., None] * _signs(rng, (1, 1, c))
    new = new + delta[window] / (np.float32(1e-12) + norms_window_1)
    scale = np.sqrt(np.maximum(e * e - norm_image ** 2, 0.0) / c + norm_windows ** 2)
    new = new / (np.float32(1e-12) + np.sqrt(np.sum(new ** 2, axis=(0, 1), keepdims=True))) * scale
    delta = delta.copy()
    delta[window2] = 0.0
    delta[window] = new
    return np.clip(x0 + delta / (_l2(delta) + np.float32(1e-12)) * e, 0.0, 1.0).astype(np.float32)


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``z_y − max_{j≠y} z_j`` per row: positive while the prediction is the label."""
    rows = np.arange(len(labels))
    own = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return own - others.max(axis=-1)


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
    """Square Attack on validated inputs over an ε grid, every example in its own row (:func:`run_rows`).

    An example's programme: for each ε of the grid (ascending, below ``limit``), each restart: evaluate the
    initial point, then up to ``queries`` candidates, keeping a candidate when its margin is lower or it is
    misclassified; the programme ends at the first misclassified point.
    """
    n, k_count = len(x), len(eps)
    forward = logits_fn(model)
    clean_logits = predict_logits(model, x, example_ids=example_ids)
    clean_wrong = np.argmax(clean_logits, axis=-1) != labels
    limit = np.full(n, k_count, dtype=np.int64) if limit is None else np.asarray(limit, dtype=np.int64)

    found = np.zeros((k_count, n), dtype=bool)
    x_found = np.repeat(x[None], k_count, axis=0)
    logits_found = np.repeat(clean_logits[None], k_count, axis=0)
    x_end = np.repeat(x[None], k_count, axis=0)
    logits_end = np.repeat(clean_logits[None], k_count, axis=0)
    zero = eps == 0.0
    found[zero] = clean_wrong
    order = np.argsort(eps, kind="stable")
    runs = [(position, restart) for position in range(k_count) for restart in range(restarts)]

    block = row_block(model)
    shape = (block,) + x.shape[1:]
    x_rows, x_best = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    logits_best = np.zeros((block, clean_logits.shape[1]), np.float32)
    margin_best = np.zeros(block, np.float32)
    row_run, row_query = np.zeros(block, np.int64), np.zeros(block, np.int64)
    row_label = np.zeros(block, np.int64)
    rngs: list[np.random.Generator | None] = [None] * block

    def start_run(row: int, example: int, run: int) -> bool:
        while run < len(runs):
            position, restart = runs[run]
            k = order[position]
            if position >= limit[example] or found[order[: position + 1], example].any():
                return False
            if not zero[k]:
                row_run[row], row_query[row], row_label[row] = run, -1, labels[example]
                rng = example_stream(seed, int(example_ids[example]), "square", float(eps[k]), restart)
                rngs[row] = rng
                x_rows[row] = initial_point(x[example], float(eps[k]), norm, rng)
                return True
            run += 1
        return False

    def evaluate() -> np.ndarray:
        return forward(tf.constant(x_rows)).numpy()

    def advance(row: int, example: int, logits: np.ndarray) -> bool:
        run = int(row_run[row])
        k = order[runs[run][0]]
        margin = margins(logits[row: row + 1], row_label[row: row + 1])[0]
        fooled = int(np.argmax(logits[row])) != row_label[row]  # margin ≤ 0, ties read as the harness reads them
        i = int(row_query[row])
        if i < 0 or margin < margin_best[row] or fooled:
            x_best[row], logits_best[row], margin_best[row] = x_rows[row], logits[row], margin
        if fooled:
            found[k, example], x_found[k, example], logits_found[k, example] = True, x_rows[row], logits[row]
            return start_run(row, example, run + 1)
        if i + 1 >= queries:
            x_end[k, example], logits_end[k, example] = x_best[row], logits_best[row]
            return start_run(row, example, run + 1)
        rng = rngs[row]
        assert rng is not None
        x_rows[row] = proposal(x[example], x_best[row], float(eps[k]), norm, i + 1, p_init, rng)
        row_query[row] = i + 1
        return True

    spent = run_rows(example_ids, lambda row, example: start_run(row, example, 0), evaluate, advance, block)
    rank_order = np.broadcast_to(order[:, None], found.shape)
    x_adv, logits_adv = any_iterate_view(rank_order, found, x_found, logits_found, x_end, logits_end)
    return dataclasses.replace(result_of(eps, x_adv, logits_adv, labels, None, norm), evaluations=spent)
