"""The L1 threat model's projection: onto the L1 ball intersected with the image box.

For the L1 threat model a perturbation must satisfy ``‖δ‖₁ ≤ ε`` *and* keep the image in ``[0, 1]``; projecting onto
the ball and then clipping to the box (what works for L∞ and, nearly, for L2) leaves points far inside the ball,
since the clipping throws away budget the ball had granted. Croce & Hein ("Mind the box: l1-APGD for sparse
adversarial attacks on image classifiers", ICML 2021) project onto the intersection itself; this is that
projection, as the minimiser of ``‖δ − y‖₂`` over the intersection, solved exactly.

For a row with proposed perturbation ``y`` around ``x``, each coordinate may move by at most ``b_i`` in the
direction of ``y_i`` (``1 − x_i`` upwards, ``x_i`` downwards). The projection is ``δ_i = sign(y_i) · clip(|y_i| − λ,
0, b_i)`` with the smallest ``λ ≥ 0`` for which ``‖δ‖₁ ≤ ε``: ``f(λ) = Σ clip(|y_i| − λ, 0, b_i)`` falls piecewise
linearly in λ, with breakpoints ``|y_i| − b_i`` (a coordinate leaves its bound) and ``|y_i|`` (it reaches zero), so
sorting the breakpoints and walking the slopes finds λ exactly, all rows at once. The authors' code
(``L1_projection`` in ``autopgd_base.py``) finds the same λ by bisection over the sorted breakpoints;
``tests/test_l1.py`` holds the two to each other.
"""

from __future__ import annotations

import numpy as np


def l1_box_projection(x: np.ndarray, y: np.ndarray, eps: np.ndarray | float) -> np.ndarray:
    """The perturbation closest to ``y`` (in L2) with ``‖δ‖₁ ≤ eps`` and ``0 ≤ x + δ ≤ 1``, per row.

    Args:
        x: the inputs ``(N, …)`` in [0, 1].
        y: the proposed perturbations ``(N, …)``.
        eps: the L1 radius, one for all rows or one per row ``(N,)``.

    Returns:
        ``δ`` ``(N, …)``, in ``y``'s dtype (computed in float64).
    """
    shape, dtype = y.shape, y.dtype
    x2 = np.asarray(x, np.float64).reshape(len(x), -1)
    y2 = np.asarray(y, np.float64).reshape(len(y), -1)
    radius = np.broadcast_to(np.asarray(eps, np.float64), (len(y2),))
    magnitude = np.abs(y2)
    room = np.where(y2 > 0, 1.0 - x2, x2)  # how far each coordinate may move in its direction
    room = np.maximum(room, 0.0)
    boxed = np.minimum(magnitude, room)  # the box alone (λ = 0)
    inside = boxed.sum(axis=1) <= radius
    lam = np.zeros(len(y2))
    rows = np.flatnonzero(~inside)
    if len(rows):
        a, b, r = magnitude[rows], room[rows], radius[rows]
        d = a.shape[1]
        points = np.concatenate([a - b, a], axis=1)  # λ where a coordinate starts falling, where it reaches 0
        events = np.concatenate([np.ones_like(a), -np.ones_like(a)], axis=1)
        order = np.argsort(points, axis=1, kind="stable")
        points = np.take_along_axis(points, order, axis=1)
        falling = np.cumsum(np.take_along_axis(events, order, axis=1), axis=1)  # coordinates falling after a point
        # f at each breakpoint, walking from f = Σ b (every coordinate at its bound, λ below every breakpoint)
        steps = np.diff(points, axis=1, prepend=points[:, :1])
        slope_before = np.concatenate([np.zeros((len(rows), 1)), falling[:, :-1]], axis=1)
        f = b.sum(axis=1, keepdims=True) - np.cumsum(slope_before * steps, axis=1)
        # the first breakpoint at which f is at or below the radius; λ lies on the segment that ends there
        k = np.argmax(f <= r[:, None], axis=1)
        k = np.where((f <= r[:, None]).any(axis=1), k, 2 * d - 1)
        j = np.arange(len(rows))
        before = np.maximum(k - 1, 0)
        slope = falling[j, before]
        start, f_start = points[j, before], f[j, before]
        lam[rows] = np.where(slope > 0, start + (f_start - r) / np.where(slope > 0, slope, 1.0), points[j, k])
        lam[rows] = np.maximum(lam[rows], 0.0)
    delta = np.sign(y2) * np.clip(magnitude - lam[:, None], 0.0, room)
    return delta.reshape(shape).astype(dtype)
