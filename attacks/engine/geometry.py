"""The geometry of the threat models, each piece once: per-example norms, projections onto the ε-balls of L∞, L2
and L1 intersected with the image box [0, 1], and the random starts.

Two float conventions live here side by side, because two references are matched to the bit: foolbox's (FGSM,
PGD, BIM: TensorFlow, eager, a norm floored at 1e-12 and multiplied by its inverse; :func:`normalize`,
:func:`project`, :func:`uniform_start`) and the AutoAttack authors' (APGD, FAB, Square: NumPy float32, 1e-12 added
to a norm before dividing; :func:`l2_normalize`, :func:`l2_project`, :func:`linf_project`, :func:`edge_start`).
Each is written once and named for what it does; ``tests/test_geometry.py`` holds each to an independent formula.

The L1 ball ∩ box projection (:func:`l1_box_projection`): for the L1 threat model a perturbation must satisfy
``‖δ‖₁ ≤ ε`` *and* keep the image in ``[0, 1]``; projecting onto
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

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


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


def to_box(x: np.ndarray) -> np.ndarray:
    """``x`` clipped to the image box [0, 1]."""
    return np.clip(x, 0.0, 1.0)


def per_example(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Per-example values ``(M,)`` as float32, shaped to broadcast against ``like`` ``(M, …)``."""
    return np.asarray(values, np.float32).reshape((-1,) + (1,) * (like.ndim - 1))


def sizes_of(deltas: np.ndarray, norm: str) -> np.ndarray:
    """Each row's size in ``norm`` of float32 perturbations ``(M, …)``, in float32 (as the budgets it is compared
    with, and as FAB's step weighs its moves)."""
    flat = np.abs(deltas.reshape(len(deltas), -1))
    if norm == "linf":
        return flat.max(axis=1)
    return flat.sum(axis=1) if norm == "l1" else np.sqrt((flat * flat).sum(axis=1))


def l2_norms(v: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """Per-example L2 norms of float32 ``(M, …)``, ``√Σ v²`` (with ``keepdims``: shaped to broadcast against ``v``)."""
    return np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=keepdims))


def l2_normalize(v: np.ndarray) -> np.ndarray:
    """Each example of ``v`` ``(M, …)`` scaled to unit L2 norm (1e-12 added to the norm, as the authors)."""
    return v / (per_example(l2_norms(v), v) + np.float32(1e-12))


def linf_project(x0: np.ndarray, point: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """``point`` projected onto the L∞ ball of radius ``eps`` (broadcast against it) around ``x0``, then the box."""
    return to_box(np.minimum(np.maximum(point, x0 - eps), x0 + eps))


def l2_project(x0: np.ndarray, point: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """``point`` projected onto the L2 ball of radius ``eps`` ``(M,)`` around ``x0``, then the box (the authors')."""
    delta = point - x0
    return to_box(x0 + l2_normalize(delta) * per_example(np.minimum(np.asarray(eps, np.float32), l2_norms(delta)),
                                                          delta))


def l1_point(x0: np.ndarray, delta: np.ndarray, eps: np.ndarray | float) -> np.ndarray:
    """``x₀ + δ`` projected onto the L1 ball of radius ``eps`` ∩ [0, 1], rows at once, float32."""
    return to_box(x0 + l1_box_projection(x0, delta, eps)).astype(np.float32)


def edge_start(x0: np.ndarray, eps: float, norm: str, rng: np.random.Generator, *, fraction: float = 1.0,
               floor: bool = True) -> np.ndarray:
    """The AutoAttack authors' random start of one example: ``x + fraction · ε · t / ‖t‖`` with ``t`` uniform in
    [−1, 1] and ‖·‖ the max (L∞), or ``t`` standard normal and ‖·‖ its L2 or L1 norm; clipped to [0, 1].
    APGD's (``fraction = 1``, 1e-12 added to the norm; L1: ``t`` projected onto the L1 ball ∩ box instead) starts
    on the ball's edge, FAB's (``fraction = 0.5``, ``floor = False``) halfway."""
    if norm == "linf":
        t = rng.uniform(-1.0, 1.0, size=x0.shape).astype(np.float32)
        size = np.abs(t).max()
    else:
        t = rng.standard_normal(size=x0.shape).astype(np.float32)
        if norm == "l1" and floor:
            return l1_point(x0[None], t[None], eps)[0]
        size = np.abs(t).sum() if norm == "l1" else np.sqrt(np.sum(t * t))
    if floor:
        return to_box(x0 + np.float32(eps) * t / (size + np.float32(1e-12))).astype(np.float32)
    return to_box(x0 + np.float32(eps) * t / size * np.float32(fraction)).astype(np.float32)


def uniform_start(x0: np.ndarray, eps: np.ndarray, norm: str, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """foolbox's random start: a uniform draw from the ε-ball around each ``x0[i]`` with its own generator
    ``rngs[i]`` (L∞: uniform per pixel; L2: uniform in the ball, Voelker et al. 2017), clipped to [0, 1]."""
    dims = int(np.prod(x0.shape[1:]))
    noise = np.empty(x0.shape, dtype=np.float32)
    for i, rng in enumerate(rngs):
        if norm == "linf":
            noise[i] = rng.uniform(-1.0, 1.0, size=x0.shape[1:]).astype(np.float32)
        else:
            gauss = rng.standard_normal(size=dims + 2)
            noise[i] = (gauss / np.linalg.norm(gauss))[:dims].reshape(x0.shape[1:]).astype(np.float32)
    eps_b = np.asarray(eps, dtype=np.float32).reshape((-1,) + (1,) * (x0.ndim - 1))
    return to_box(x0 + eps_b * noise).astype(np.float32)


# foolbox's normalisation and projection, in TensorFlow. They run eagerly, with foolbox's exact sequence of float32
# operations: a compiled graph may rewrite them (x * (1 / y) into x / y) and so differ from foolbox in the last bit.


def _per_example_tf(values: tf.Tensor, ndim: int) -> tf.Tensor:
    return tf.reshape(values, [-1] + [1] * (ndim - 1))


def _l2_norms_tf(values: tf.Tensor) -> tf.Tensor:
    """Per-example L2 norms as eagerpy computes them: ``sqrt(sum(square(x)))``."""
    return tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(values, [tf.shape(values)[0], -1])), axis=-1))


def normalize(gradient: tf.Tensor, norm: str) -> tf.Tensor:
    """Sign (L∞) or unit L2 norm per example (norms floored at 1e-12, as foolbox)."""
    if norm == "linf":
        return tf.sign(gradient)
    factor = 1.0 / tf.maximum(_l2_norms_tf(gradient), 1e-12)
    return gradient * _per_example_tf(factor, gradient.shape.rank)


def project(x: tf.Tensor, x0: tf.Tensor, eps: tf.Tensor, norm: str) -> tf.Tensor:
    """Project ``x`` onto the ε-ball around ``x0``; ``eps`` is per example ``(N,)`` float32."""
    delta = x - x0
    if norm == "linf":
        eps_b = _per_example_tf(eps, x.shape.rank)
        return x0 + tf.clip_by_value(delta, -eps_b, eps_b)
    factor = tf.minimum(1.0, eps / tf.maximum(_l2_norms_tf(delta), 1e-12))
    return x0 + delta * _per_example_tf(factor, x.shape.rank)


def project_in_box(x: tf.Tensor, x0: tf.Tensor, eps: tf.Tensor, norm: str) -> tf.Tensor:
    """:func:`project`, then clipped to [0, 1] (foolbox's order: the ball first, the box second)."""
    return tf.clip_by_value(project(x, x0, eps, norm), 0.0, 1.0)
