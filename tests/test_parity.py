"""Own (tf.GradientTape) and foolbox implementations held to each other on both real models.

The reference side always differentiates the Keras model with the plain tape, never through
models/fast_gradient.py; the own side does the same here, so that agreement is exact. The fast path is held
to the tape on its own (tests/test_fast_gradient.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from advsweep.attacks import run_attack

# the steep part of the small CNN's PGD curve, where a dependence on the start would show; each ε is a full
# PGD-40 run for foolbox (no early stop), so the grid is what this slow test's time is made of
PARITY_GRID = [0.1, 0.15]


def _model(name, small_cnn, vgg16_model):
    return small_cnn if name == "small_cnn" else vgg16_model


@pytest.mark.parametrize("model_name", ["small_cnn", "vgg16"])
@pytest.mark.parametrize("attack,norm,grid", [("fgsm", "linf", [0.0, 0.05, 0.1, 0.2, 0.3]),
                                              ("fgm", "l2", [0.0, 0.5, 1.0, 2.0, 3.0])], ids=["fgsm", "fgm-l2"])
def test_fast_gradient_adversarials_agree(model_name, attack, norm, grid, small_cnn, vgg16_model, test_images):
    model = _model(model_name, small_cnn, vgg16_model)
    x, y = test_images
    n = 32 if model_name == "vgg16" else 256  # exact agreement is per row: one block of the VGG16, eight of the CNN
    own = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="own", gradient="plain")
    reference = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="foolbox", gradient="plain")
    assert np.abs(own.x_adv - reference.x_adv).max() <= 1e-6
    np.testing.assert_array_equal(own.success, reference.success)


@pytest.mark.parametrize("model_name", ["small_cnn", "vgg16"])
@pytest.mark.parametrize("attack,norm,grid,params", [
    ("bim", "linf", [0.1, 0.3], {}),
    ("bim", "l2", [1.0, 3.0], {}),
    ("pgd", "l2", [1.0], {"random_start": False, "steps": 10, "loss": "margin"}),
    ("pgd", "linf", [0.1, 0.3], {"random_start": False, "steps": 10, "rel_stepsize": 0.1}),
], ids=["bim-linf", "bim-l2", "pgd-l2-margin-no-random-start", "pgd-linf-no-random-start"])
def test_iterative_attacks_without_random_start_agree(model_name, attack, norm, grid, params, small_cnn, vgg16_model,
                                                      test_images):
    model = _model(model_name, small_cnn, vgg16_model)
    x, y = test_images
    n = 16 if model_name == "vgg16" else 96
    if model_name == "vgg16":  # the plain tape through the VGG16 base is slow on a CPU: 3 steps and one ε suffice
        params, grid = {**params, "steps": 3}, grid[-1:]
    own = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="own", gradient="plain", **params)
    reference = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="foolbox", gradient="plain", **params)
    assert np.abs(own.x_adv - reference.x_adv).max() <= 1e-6
    np.testing.assert_array_equal(own.success, reference.success)


def _mean_robust_accuracy(model, x, y, implementation: str, seeds, **params):
    runs = [run_attack("pgd", model, x, y, PARITY_GRID, implementation=implementation, seed=seed,
                       gradient="plain", **params)
            for seed in seeds]
    return np.mean([run.robust_accuracy for run in runs], axis=0)


@pytest.mark.slow
def test_pgd_random_start_parity_small_cnn(small_cnn, test_images):
    """PGD-40 (Madry et al.'s setting) with independent random starts (seeds 0–2 for the own attack, 3–5 for
    foolbox: with the same seed both draw the same per-example starts and agree to the bit, which
    tests/test_determinism.py checks), 500 test images: robust accuracy, the mean of three seeds per
    implementation, within 1 percentage point of foolbox's at ε = 0.1 and 0.15."""
    x, y = test_images
    own = _mean_robust_accuracy(small_cnn, x, y, "own", [0, 1, 2])
    reference = _mean_robust_accuracy(small_cnn, x, y, "foolbox", [3, 4, 5])
    assert np.all(np.abs(own - reference) <= 0.01 + 1e-9), (own, reference)


@pytest.mark.slow
def test_pgd_random_start_parity_vgg16(vgg16_model, test_images):
    """The real VGG16, 32 test images (one block), ε = 0.05, 0.1, 0.3: with each example's own random start (the same stream
    for both), own and foolbox PGD produce the same adversarials (≤ 1e-6) in both views, the any-iterate
    view and foolbox's last iterate, hence the same robust accuracy at every ε. 5 steps of 0.25 ε keep the
    plain tape through the VGG16 base within CI's budget on 2 CPU cores."""
    x, y = test_images[0][:32], test_images[1][:32]
    params = {"steps": 5, "rel_stepsize": 0.25, "random_start": True}
    grid = [0.05, 0.1, 0.3]
    own = run_attack("pgd", vgg16_model, x, y, grid, implementation="own", gradient="plain", early_stop=False,
                     **params)
    reference = run_attack("pgd", vgg16_model, x, y, grid, implementation="foolbox", gradient="plain", **params)
    assert np.abs(own.x_adv - reference.x_adv).max() <= 1e-6
    assert np.abs(own.last.x_adv - reference.last.x_adv).max() <= 1e-6
    np.testing.assert_array_equal(own.success, reference.success)
    np.testing.assert_array_equal(own.last.success, reference.last.success)


@pytest.mark.slow
@pytest.mark.parametrize("attack,norm,grid", [("fgsm", "linf", [0.0, 0.05, 0.1, 0.2, 0.3]),
                                              ("fgm", "l2", [0.0, 0.5, 1.0, 2.0, 3.0])], ids=["fgsm", "fgm-l2"])
def test_fast_gradient_adversarials_agree_vgg16_128_images(attack, norm, grid, vgg16_model, test_images):
    x, y = test_images
    own = run_attack(attack, vgg16_model, x[:128], y[:128], grid, norm=norm, implementation="own", gradient="plain")
    reference = run_attack(attack, vgg16_model, x[:128], y[:128], grid, norm=norm, implementation="foolbox", gradient="plain")
    assert np.abs(own.x_adv - reference.x_adv).max() <= 1e-6
    np.testing.assert_array_equal(own.success, reference.success)


@pytest.mark.slow
def test_pgd_without_random_start_agrees_vgg16_64_images(vgg16_model, test_images):
    x, y = test_images
    params = {"random_start": False, "steps": 5, "rel_stepsize": 0.25}
    own = run_attack("pgd", vgg16_model, x[:64], y[:64], [0.05, 0.1], implementation="own", gradient="plain", **params)
    reference = run_attack("pgd", vgg16_model, x[:64], y[:64], [0.05, 0.1], implementation="foolbox", gradient="plain", **params)
    assert np.abs(own.x_adv - reference.x_adv).max() <= 1e-6
    np.testing.assert_array_equal(own.success, reference.success)
