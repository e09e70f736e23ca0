"""The L1 threat model's projection onto the ball ∩ box, held to the authors' code (``pyautoattack``'s
``L1_projection``, "Mind the box", Croce & Hein 2021) on real MNIST images."""

from __future__ import annotations

import numpy as np
import pytest

from advsweep.attacks.l1 import l1_box_projection


@pytest.mark.parametrize("scale, eps", [(0.05, 5.0), (0.3, 10.0), (1.0, 12.0), (0.01, 100.0), (2.0, 1.0)])
def test_l1_projection_is_the_authors(test_images, scale, eps):
    import torch
    from pyautoattack.autopgd_base import L1_projection

    x = test_images[0][:64]
    rng = np.random.default_rng(int(scale * 100))
    y = (rng.laplace(0, scale, x.shape) * (rng.random(x.shape) < 0.3)).astype(np.float32)  # sparse proposals
    ours = l1_box_projection(x, y, eps)
    theirs = (torch.tensor(y) + L1_projection(torch.tensor(x), torch.tensor(y), eps)).numpy()
    # the same point up to the original's float32 sums over 2·784 breakpoints (ours are float64: measured
    # differences up to 8e-5 on a few coordinates, where theirs leaves the ball by as much: ‖δ‖₁ = 1.000084 for
    # ε = 1, and so comes up to 2e-5 closer to the proposal than the feasible point)
    np.testing.assert_allclose(ours, theirs, atol=2e-4)
    distance = lambda d: np.linalg.norm((d.astype(np.float64) - y).reshape(len(x), -1), axis=1)  # noqa: E731
    assert (distance(ours) <= distance(theirs) + 1e-4).all()
    flat = ours.reshape(len(x), -1)
    assert (np.abs(flat).sum(axis=1) <= eps * (1 + 1e-5)).all()
    assert ((x + ours >= -1e-6) & (x + ours <= 1 + 1e-6)).all()


def test_l1_projection_is_the_closest_point(test_images):
    """Any other point of the ball ∩ box is at least as far from the proposal (checked against random ones)."""
    x = test_images[0][:8]
    rng = np.random.default_rng(1)
    y = rng.normal(0, 0.4, x.shape).astype(np.float32)
    delta = l1_box_projection(x, y, 8.0)
    best = np.linalg.norm((delta - y).reshape(8, -1), axis=1)
    for _ in range(50):
        other = l1_box_projection(x, y + rng.normal(0, 0.2, x.shape).astype(np.float32), 8.0)
        assert (np.linalg.norm((other - y).reshape(8, -1), axis=1) >= best - 1e-4).all()
    inside = 0.001 * np.sign(y) * (np.abs(y) > 0)
    np.testing.assert_allclose(l1_box_projection(x, np.clip(inside, -x, 1 - x), 1e6),
                               np.clip(inside, -x, 1 - x), atol=1e-7)  # inside the ball and box: unchanged
