"""APGD and APGD-T (issue 11): hand-computed cases of the DLR losses, the checkpoint schedule, the step-size
decision, the random start and the momentum step; the attack's contract on the small CNN."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from advsweep.attacks.apgd import (
    auto_pgd,
    auto_pgd_targeted,
    checkpoints,
    halve_step,
    momentum_step,
    start_point,
)
from advsweep.attacks.core import loss_per_example


def test_dlr_losses_hand_computed():
    logits = tf.constant([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    # label 0 is the top class: −(3 − 2) / (3 − 1); label 2 is not: −(2 − 3) / (3 − 1)
    dlr = loss_per_example(logits, tf.constant([0, 2], tf.int64), "dlr").numpy()
    np.testing.assert_allclose(dlr, [-0.5, 0.5], rtol=1e-6)
    # targeted, label 0 towards 3: −(3 − 0) / (3 − (1 + 0) / 2) = −1.2; towards 2: −(3 − 2) / 2.5 = −0.4
    targeted = loss_per_example(logits, tf.constant([[0, 3], [0, 2]], tf.int64), "dlr-targeted").numpy()
    np.testing.assert_allclose(targeted, [-1.2, -0.4], rtol=1e-6)
    # scale and shift invariance: the property that makes DLR immune to logit scaling
    scaled = loss_per_example(1000.0 * logits + 7.0, tf.constant([0, 2], tf.int64), "dlr").numpy()
    np.testing.assert_allclose(scaled, dlr, rtol=1e-5)


def test_checkpoint_schedule_is_autoattacks():
    assert checkpoints(100) == (22, 6, 3)  # checkpoints after 22, 41, 57, 70, 80, 87, 93, 99 … steps
    assert checkpoints(10) == (2, 1, 1)
    assert checkpoints(1) == (1, 1, 1)


def test_step_halving_decision_hand_computed():
    rising = np.arange(1.0, 101.0)  # every step raises the loss
    assert not halve_step(rising, 21, 22, 0.75, True, 0.0, 22.0)
    flat = np.zeros(100)
    flat[:22] = 5.0  # the first comparison is with the unfilled history[−1] = 0: one raise of 22
    assert halve_step(flat, 21, 22, 0.75, True, 5.0, 5.0)
    # 17 of 22 steps raise the loss (17 > 16.5): no halving for oscillation ...
    history = np.zeros(100)
    history[:22] = np.cumsum([1.0 if c % 4 or c == 0 else -0.5 for c in range(22)])
    raised = sum(history[21 - c] > history[21 - c - 1] for c in range(22))
    assert raised == 17
    assert not halve_step(history, 21, 22, 0.75, True, 0.0, 1.0)
    # ... but halving when the step was kept last time and the best loss has not improved since
    assert halve_step(history, 21, 22, 0.75, False, 3.0, 3.0)
    assert not halve_step(history, 21, 22, 0.75, False, 2.0, 3.0)


def test_random_start_lies_on_the_balls_edge():
    rng = np.random.default_rng(0)
    x0 = np.full((28, 28, 1), 0.5, np.float32)
    linf = start_point(x0, 0.1, "linf", rng)
    assert np.abs(linf - x0).max() == pytest.approx(0.1, abs=1e-6)  # t / max|t|: one pixel at the edge
    l2 = start_point(x0, 1.0, "l2", rng)
    assert np.linalg.norm(l2 - x0) == pytest.approx(1.0, abs=1e-5)
    assert start_point(np.zeros((4, 4, 1), np.float32), 0.3, "linf", rng).min() == 0.0  # clipped to [0, 1]


def test_momentum_step_hand_computed():
    x0 = np.array([0.5, 0.5], np.float32)
    x_cur = np.array([0.55, 0.5], np.float32)
    x_old = np.array([0.5, 0.45], np.float32)
    grad = np.array([1.0, -2.0], np.float32)
    eps, step = np.float32(0.1), np.float32(0.08)
    # first step (a = 1): x + η sign(g) projected: [0.6 (clipped from 0.63), 0.42]
    np.testing.assert_allclose(momentum_step(x_cur, x_old, x0, grad, step, eps, "linf", first=True), [0.6, 0.42],
                               atol=1e-6)
    # later (a = 0.75): x + 0.75 (z − x) + 0.25 (x − x_old) = [0.55 + 0.0375 + 0.0125, 0.5 − 0.06 + 0.0125]
    np.testing.assert_allclose(momentum_step(x_cur, x_old, x0, grad, step, eps, "linf", first=False),
                               [0.6, 0.4525], atol=1e-6)


def test_apgd_result_contract_on_the_small_cnn(small_cnn, test_images):
    x, y = test_images[0][:64], test_images[1][:64]
    grid = [0.0, 0.05, 0.1, 0.2]
    result = auto_pgd(small_cnn, x, y, grid, steps=20)
    assert result.x_adv.shape == (4, 64, 28, 28, 1) and result.success.shape == (4, 64)
    for k, eps in enumerate(grid):
        assert np.abs(result.x_adv[k] - x).max() <= eps + 1e-6
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    np.testing.assert_array_equal(result.success, np.argmax(result.logits, -1) != y)
    assert np.all(np.diff(result.robust_accuracy) <= 0)  # fooled at ε stays fooled at every larger ε
    again = auto_pgd(small_cnn, x, y, grid, steps=20)
    np.testing.assert_array_equal(again.x_adv, result.x_adv)  # the same seed gives the same adversarials
    dlr = auto_pgd(small_cnn, x, y, grid, steps=20, loss="dlr")
    targeted = auto_pgd_targeted(small_cnn, x, y, grid, steps=20, target_classes=3)
    for other in (dlr, targeted):
        assert other.success.shape == (4, 64) and np.all(np.diff(other.robust_accuracy) <= 0)
    l2 = auto_pgd(small_cnn, x, y, [0.0, 1.0, 2.0], norm="l2", steps=20)
    assert np.linalg.norm((l2.x_adv[2] - x).reshape(64, -1), axis=1).max() <= 2.0 + 1e-4
