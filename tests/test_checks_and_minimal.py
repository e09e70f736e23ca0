"""Evaluation checks catch what they claim to catch; minimal-perturbation mode against foolbox's FMN."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from advsweep.attacks import AttackResult, fmn_minimal_norms, minimal_perturbation, robustness_curve
from advsweep.attacks.evaluation.checks import (
    check_deterministic,
    check_gradients,
    check_logits,
    check_loss_stability,
    check_monotone,
    check_pgd_beats_fgsm,
    check_result_validity,
    check_unbounded,
    loss_variation,
)
from advsweep.models import probability_model


def test_logit_check_passes_logits_and_fails_probabilities(small_cnn, test_images):
    x = test_images[0][:64]
    assert check_logits(small_cnn, x).passed
    failed = check_logits(probability_model(small_cnn), x)
    assert not failed.passed and "softmax" in failed.suggestion


def test_gradient_check_fails_on_a_model_with_zero_gradients(small_cnn, test_images):
    x, y = test_images[0][:32], test_images[1][:32]
    assert check_gradients(small_cnn, x, y).passed
    inputs = keras.Input((28, 28, 1))
    dense = keras.layers.Dense(10, kernel_initializer="zeros", bias_initializer="zeros")
    flat_model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))  # constant logits: zero gradient
    failed = check_gradients(flat_model, x, y)
    assert not failed.passed and "100.00%" in failed.detail
    # an interrupted graph (no gradient reaches the input at all) is reported the same way, not a crash
    cut = keras.Model(inputs, small_cnn(keras.layers.Lambda(lambda t: keras.ops.stop_gradient(t))(inputs)))
    interrupted = check_gradients(cut, x, y)
    assert not interrupted.passed and "100.00%" in interrupted.detail and "non-differentiable" in interrupted.suggestion


class _NoiseAtInference(keras.layers.Layer):
    """Fresh Gaussian noise on the input at every call, training or not: a randomized model."""

    def call(self, inputs):
        return inputs + keras.random.normal(keras.ops.shape(inputs), stddev=0.2)


def test_determinism_check_passes_a_real_model_and_fails_a_randomized_one(small_cnn, test_images):
    x = test_images[0][:64]
    assert check_deterministic(small_cnn, x).passed
    inputs = keras.Input((28, 28, 1))
    noisy = keras.Model(inputs, small_cnn(_NoiseAtInference()(inputs)))
    failed = check_deterministic(noisy, x)
    assert not failed.passed and "randomized" in failed.suggestion and 'version = "rand"' in failed.suggestion
    assert failed.detail.startswith("64 of 64 examples got other logits")


def test_loss_stability_check_passes_a_real_model_and_fails_a_randomized_one(small_cnn, test_images):
    """Pintor et al.'s loss form of unstable predictions: the real CNN's margin loss barely moves under ± 4/255 of
    noise (no more than a note); a model that adds fresh noise at every call moves it by far more than 10% of itself
    on most examples, which fails the check.
    (A model that rounds its input to 0 or 1 is not caught here, measured: 3 of 64 flagged, most MNIST pixels sit far
    from 0.5; its loss is flat, which the gradient check catches.) Each example's measure comes from its own
    stream: the same on the first 20 examples alone as within the 64."""
    x, y = test_images[0][:64], test_images[1][:64]
    ids = np.arange(64)
    real = check_loss_stability(small_cnn, x, y, seed=0, example_ids=ids)
    assert real.verdict != "FAIL", real.detail
    inputs = keras.Input((28, 28, 1))
    noisy = keras.Model(inputs, small_cnn(_NoiseAtInference()(inputs)))
    failed = check_loss_stability(noisy, x, y, seed=0, example_ids=ids)
    assert failed.verdict == "FAIL" and "erratic" in failed.suggestion, failed.detail
    assert int(failed.detail.split(" of ")[0]) > 32
    alone = loss_variation(small_cnn, x[:20], y[:20], seed=0, example_ids=ids[:20], draws=10)
    within = loss_variation(small_cnn, x, y, seed=0, example_ids=ids, draws=10)
    np.testing.assert_array_equal(alone, within[:20])


def test_unbounded_attack_wins_on_a_real_model(small_cnn, test_images):
    verdict, saturation = check_unbounded(small_cnn, test_images[0][:100], test_images[1][:100])
    assert verdict.passed and not verdict.informational, verdict.detail
    assert saturation.informational and "cross-entropy" in saturation.detail


def test_monotone_and_pgd_fgsm_checks_flag_violations():
    grid = [0.0, 0.1, 0.2]
    passed, failed = check_monotone({"good": (grid, [0.9, 0.5, 0.1]), "bad": (grid, [0.9, 0.1, 0.12])})
    assert passed.passed and not failed.passed and "0.0200" in failed.detail
    assert check_pgd_beats_fgsm(grid, [0.9, 0.2, 0.0], [0.9, 0.4, 0.1], examples=100).passed
    flagged = check_pgd_beats_fgsm(grid, [0.9, 0.5, 0.0], [0.9, 0.4, 0.1], examples=100)
    assert not flagged.passed and "ε=0.1" in flagged.detail and "masking" in flagged.suggestion


def test_one_robust_example_in_a_hundred_is_one_percent_exactly():
    """The unbounded-attack check allows at most 1% robust: a chunk of 100 with one robust example passes (it failed
    on the TRADES model's evaluation when robust accuracy was computed as 1 − success rate, 0.010000000000000009)."""
    success = np.ones((1, 100), bool)
    success[0, 0] = False
    result = AttackResult(np.array([0.5]), np.zeros((1, 100, 28, 28, 1), np.float32),
                          np.zeros((1, 100, 10), np.float32), success, "linf")
    assert result.robust_accuracy[0] == 0.01


def test_validity_check_flags_a_result_outside_its_ball():
    x = np.full((2, 28, 28, 1), 0.5, np.float32)
    inside = AttackResult(np.array([0.1]), (x + 0.1)[None], np.zeros((1, 2, 10), np.float32),
                          np.zeros((1, 2), bool), "linf")
    assert check_result_validity(inside, x).passed
    outside = AttackResult(np.array([0.1]), (x + 0.2)[None], inside.logits, inside.success, "linf")
    assert not check_result_validity(outside, x).passed
    nan = AttackResult(np.array([0.1]), np.full((1, 2, 28, 28, 1), np.nan, np.float32), inside.logits,
                       inside.success, "linf")
    assert not check_result_validity(nan, x).passed


def test_robustness_curve_counts_examples_above_each_eps():
    np.testing.assert_allclose(robustness_curve(np.array([0.0, 0.05, 0.2, np.inf]), [0.0, 0.1, 0.3]),
                               [0.75, 0.5, 0.25])


@pytest.mark.parametrize("norm,tolerance", [("linf", 1 / 255), ("l2", 0.02), ("l1", 0.1)])
def test_minimal_perturbation_is_adversarial_and_agrees_with_fmn(small_cnn, test_images, norm, tolerance):
    x, y = test_images[0][:40], test_images[1][:40]
    result = minimal_perturbation(small_cnn, x, y, norm=norm, steps=20, tolerance=tolerance)
    found = np.isfinite(result.eps) & (result.eps > 0)
    assert found.mean() > 0.9
    predictions = np.argmax(small_cnn(result.x_adv).numpy(), 1)
    assert np.all(predictions[found] != y[found])
    delta = (result.x_adv - x).reshape(len(x), -1)
    size = {"linf": np.abs(delta).max(1), "l2": np.linalg.norm(delta, axis=1), "l1": np.abs(delta).sum(1)}[norm]
    assert np.all(size[found] <= result.eps[found] * (1 + 1e-6) + 1e-5)
    reference = fmn_minimal_norms(small_cnn, x, y, norm=norm, steps=100)
    both = found & np.isfinite(reference) & (reference > 0)
    ratio = result.eps[both] / reference[both]
    # Our ε are verified above (adversarial, inside the ball), so smaller is better: the bisection must be at
    # least nearly as good as FMN's 100 steps (here it finds smaller L∞ perturbations than FMN does; in L1 each
    # round is l1-APGD).
    assert np.median(ratio) <= 1.1, np.median(ratio)


def test_minimal_perturbation_rejects_bad_arguments(small_cnn, test_images):
    x, y = test_images[0][:2], test_images[1][:2]
    with pytest.raises(ValueError, match="eps_max"):
        minimal_perturbation(small_cnn, x, y, eps_max=-1.0)
    with pytest.raises(ValueError, match="tolerance"):
        minimal_perturbation(small_cnn, x, y, eps_max=0.3, tolerance=0.5)
    with pytest.raises(ValueError, match="norm"):
        minimal_perturbation(small_cnn, x, y, norm="l0")


def _curve_check(result, grid, worst_case, examples):
    from advsweep.attacks.evaluation.checks import check_curve_below_worst_case

    curve = robustness_curve(result.eps, np.asarray(grid) + result.tolerance)
    return check_curve_below_worst_case(grid, curve, worst_case, examples=examples, tolerance=result.tolerance)


@pytest.mark.slow
def test_curve_check_fails_a_weakened_minimal_search_on_the_vgg16(vgg16_model, test_images):
    """The bisection the quick sweep used to run (cross-entropy, blind to the grid) overstates
    robustness on the frozen VGG16, and the curve check fails it; the default search (margin loss, each example's
    search bounded by the smallest grid ε at which the grid's attack fooled it) passes on the same examples."""
    from advsweep.attacks import projected_gradient_descent

    x, y = test_images[0][:32], test_images[1][:32]
    grid = [0.05, 0.1, 0.2]
    grid_attack = projected_gradient_descent(vgg16_model, x, y, grid, steps=20, loss="margin", early_stop=True)
    clean_correct = np.argmax(vgg16_model(x).numpy(), 1) == y
    worst_case = (clean_correct[None, :] & ~grid_attack.success).mean(axis=1)
    fooled = grid_attack.success | ~clean_correct[None, :]
    bounds = np.where(fooled.any(0), np.asarray(grid)[np.argmax(fooled, axis=0)], np.inf)
    weak = minimal_perturbation(vgg16_model, x, y, loss="ce", steps=10, tolerance=0.02)
    weak_check = _curve_check(weak, grid, worst_case, len(x))
    assert not weak_check.passed and not weak_check.informational, weak_check.detail
    strong = minimal_perturbation(vgg16_model, x, y, loss="margin", steps=10, tolerance=0.02, upper_bounds=bounds)
    assert _curve_check(strong, grid, worst_case, len(x)).passed
