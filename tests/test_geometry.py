"""The threat models' geometry (attacks/engine/geometry.py), each piece against an independent formula: float64
norms from NumPy's linalg, the L∞ projection as a per-pixel interval, the L2 projection as the closest point of the
ball (no point of the ball ∩ box is closer), the starts on or in their balls, and foolbox's TensorFlow normalisation
and projection against the same formulas in float64."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from advsweep.attacks.engine.geometry import (
    edge_start,
    l1_point,
    l2_normalize,
    l2_project,
    linf_project,
    normalize,
    project,
    sizes_of,
    to_box,
    uniform_start,
)

RNG = np.random.default_rng(7)
X0 = RNG.random((6, 8, 8, 1)).astype(np.float32)
POINTS = (X0 + RNG.normal(0, 0.4, X0.shape)).astype(np.float32)


def _flat64(v: np.ndarray) -> np.ndarray:
    return v.reshape(len(v), -1).astype(np.float64)


@pytest.mark.parametrize("norm,order", [("linf", np.inf), ("l2", 2), ("l1", 1)])
def test_sizes_are_the_linalg_norms(norm, order):
    delta = POINTS - X0
    np.testing.assert_allclose(sizes_of(delta, norm), np.linalg.norm(_flat64(delta), ord=order, axis=1), rtol=1e-6)


def test_l2_normalize_gives_unit_norms_and_keeps_directions():
    unit = l2_normalize(POINTS - X0)
    np.testing.assert_allclose(np.linalg.norm(_flat64(unit), axis=1), 1.0, rtol=1e-6)
    cosine = np.sum(_flat64(unit) * _flat64(POINTS - X0), axis=1) / np.linalg.norm(_flat64(POINTS - X0), axis=1)
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-6)


def test_linf_projection_is_the_per_pixel_interval():
    eps = np.float32(0.1)
    expected = np.minimum(np.maximum(POINTS.astype(np.float64), np.maximum(X0 - 0.1, 0.0)), np.minimum(X0 + 0.1, 1.0))
    np.testing.assert_allclose(linf_project(X0, POINTS, eps), expected, atol=1e-7)


def test_l2_projection_is_the_closest_point_of_the_ball_then_the_box():
    eps = np.full(len(X0), 0.5, np.float32)
    projected = l2_project(X0, POINTS, eps)
    scale = np.minimum(1.0, 0.5 / np.linalg.norm(_flat64(POINTS - X0), axis=1))
    expected = np.clip(_flat64(X0) + _flat64(POINTS - X0) * scale[:, None], 0.0, 1.0).reshape(X0.shape)
    np.testing.assert_allclose(projected, expected, atol=1e-6)
    assert (np.linalg.norm(_flat64(projected - X0), axis=1) <= 0.5 + 1e-5).all() and to_box(projected).min() >= 0
    inside = (X0 + 0.01 * (POINTS - X0)).astype(np.float32)  # inside the ball and the box: unchanged
    np.testing.assert_allclose(l2_project(X0, np.clip(inside, 0, 1), eps), np.clip(inside, 0, 1), atol=1e-6)


def test_l1_point_lies_in_the_ball_and_the_box_and_no_ball_point_is_closer():
    eps = 3.0
    moved = l1_point(X0, POINTS - X0, eps)
    assert (np.abs(_flat64(moved - X0)).sum(axis=1) <= eps + 1e-4).all() and moved.min() >= 0 and moved.max() <= 1
    best = np.linalg.norm(_flat64(moved - POINTS), axis=1)
    for _ in range(30):  # random points of the ball ∩ box are never closer to the target
        other = l1_point(X0, (POINTS - X0) + RNG.normal(0, 0.2, X0.shape).astype(np.float32), eps)
        assert (np.linalg.norm(_flat64(other - POINTS), axis=1) >= best - 1e-4).all()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_edge_start_lies_on_its_ball_and_fabs_start_halfway(norm):
    x0 = np.full((8, 8, 1), 0.5, np.float32)
    eps = {"linf": 0.1, "l2": 1.0, "l1": 2.0}[norm]
    order = {"linf": np.inf, "l2": 2, "l1": 1}[norm]
    size = np.linalg.norm((edge_start(x0, eps, norm, np.random.default_rng(0)) - x0).ravel().astype(np.float64), order)
    assert size == pytest.approx(eps, rel=1e-4)
    half = edge_start(x0, eps, norm, np.random.default_rng(0), fraction=0.5, floor=False)
    # FAB's start divides by the draw's own L2 (or L1, max) norm: half the radius in its norm (L1: in L1)
    assert np.linalg.norm((half - x0).ravel().astype(np.float64), order) == pytest.approx(eps / 2, rel=1e-4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_uniform_start_is_inside_the_ball_and_spreads_to_its_edge(norm):
    x0 = np.full((400, 4, 4, 1), 0.5, np.float32)
    eps = np.full(400, 0.3 if norm == "l2" else 0.2, np.float32)
    delta = uniform_start(x0, eps, norm, [np.random.default_rng(i) for i in range(400)]) - x0
    sizes = np.linalg.norm(_flat64(delta), ord=np.inf if norm == "linf" else 2, axis=1)
    assert (sizes <= eps + 1e-6).all() and sizes.max() > 0.9 * eps[0]


def test_foolbox_normalisation_and_projection_in_tensorflow_match_the_formulas():
    delta = tf.constant(POINTS - X0)
    np.testing.assert_array_equal(normalize(delta, "linf").numpy(), np.sign(POINTS - X0))
    unit = normalize(delta, "l2").numpy()
    np.testing.assert_allclose(np.linalg.norm(_flat64(unit), axis=1), 1.0, rtol=1e-6)
    eps = tf.constant(np.full(len(X0), 0.5, np.float32))
    l2 = project(tf.constant(POINTS), tf.constant(X0), eps, "l2").numpy()
    scale = np.minimum(1.0, 0.5 / np.linalg.norm(_flat64(POINTS - X0), axis=1))
    np.testing.assert_allclose(l2, (_flat64(X0) + _flat64(POINTS - X0) * scale[:, None]).reshape(X0.shape), atol=1e-6)
    linf = project(tf.constant(POINTS), tf.constant(X0), eps, "linf").numpy()
    np.testing.assert_allclose(linf, np.clip(POINTS, X0 - 0.5, X0 + 0.5), atol=1e-7)
