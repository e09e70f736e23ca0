"""Own (tf.GradientTape) and foolbox implementations held to each other on both real models."""

from __future__ import annotations

import numpy as np
import pytest

from attacks import run_attack

PARITY_GRID = [round(0.05 * i, 2) for i in range(7)]  # 0, 0.05, …, 0.3


def _model(name, small_cnn, vgg16_model):
    return small_cnn if name == "small_cnn" else vgg16_model


@pytest.mark.parametrize("model_name", ["small_cnn", "vgg16"])
@pytest.mark.parametrize("attack,norm,grid", [("fgsm", "linf", [0.0, 0.05, 0.1, 0.2, 0.3]),
                                              ("fgm", "l2", [0.0, 0.5, 1.0, 2.0, 3.0])], ids=["fgsm", "fgm-l2"])
def test_fast_gradient_adversarials_agree(model_name, attack, norm, grid, small_cnn, vgg16_model, test_images):
    model = _model(model_name, small_cnn, vgg16_model)
    x, y = test_images
    n = 200 if model_name == "vgg16" else 500
    own = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="own")
    reference = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="foolbox")
    assert np.abs(own.x_adv - reference.x_adv).max() <= 1e-6
    np.testing.assert_array_equal(own.success, reference.success)


@pytest.mark.parametrize("model_name", ["small_cnn", "vgg16"])
@pytest.mark.parametrize("attack,norm,grid,params", [
    ("bim", "linf", [0.1, 0.3], {}),
    ("bim", "l2", [1.0, 3.0], {}),
    ("pgd", "linf", [0.1, 0.3], {"random_start": False, "steps": 10, "rel_stepsize": 0.1}),
], ids=["bim-linf", "bim-l2", "pgd-linf-no-random-start"])
def test_iterative_attacks_without_random_start_agree(model_name, attack, norm, grid, params, small_cnn, vgg16_model,
                                                      test_images):
    model = _model(model_name, small_cnn, vgg16_model)
    x, y = test_images
    n = 64 if model_name == "vgg16" else 300
    own = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="own", **params)
    reference = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="foolbox", **params)
    np.testing.assert_allclose(own.x_adv, reference.x_adv, atol=1e-4)
    assert np.mean(own.success != reference.success) <= 0.01


def _random_start_parity(model, x, y, steps: int, rel_stepsize: float):
    own = run_attack("pgd", model, x, y, PARITY_GRID, implementation="own", steps=steps, rel_stepsize=rel_stepsize,
                     seed=0)
    reference = run_attack("pgd", model, x, y, PARITY_GRID, implementation="foolbox", steps=steps,
                           rel_stepsize=rel_stepsize, seed=0)
    return own.robust_accuracy, reference.robust_accuracy


def test_pgd_random_start_parity_small_cnn_quick(small_cnn, test_images):
    """The default run's version: 200 images, PGD-40 at foolbox's defaults, within 2 points."""
    x, y = test_images
    own, reference = _random_start_parity(small_cnn, x[:200], y[:200], steps=40, rel_stepsize=0.01 / 0.3)
    assert np.all(np.abs(own - reference) <= 0.02), (own, reference)


@pytest.mark.slow
def test_pgd_random_start_parity_small_cnn(small_cnn, test_images):
    """PGD-40 (Madry et al.'s setting) with random start, 500 test images, within 1 percentage point at every ε."""
    x, y = test_images
    own, reference = _random_start_parity(small_cnn, x, y, steps=40, rel_stepsize=0.01 / 0.3)
    assert np.all(np.abs(own - reference) <= 0.01 + 1e-9), (own, reference)


@pytest.mark.slow
def test_pgd_random_start_parity_vgg16(vgg16_model, test_images):
    """The real VGG16, 200 test images, PGD with random start at 10 steps of 0.25 ε (a full PGD-40 sweep of 500
    images through foolbox would take hours on 2 CPU cores), within 1 percentage point at every ε."""
    x, y = test_images
    own, reference = _random_start_parity(vgg16_model, x[:200], y[:200], steps=10, rel_stepsize=0.25)
    assert np.all(np.abs(own - reference) <= 0.01 + 1e-9), (own, reference)
