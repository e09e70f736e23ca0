"""Own (tf.GradientTape) and foolbox implementations held to each other on both real models."""

from __future__ import annotations

import eagerpy as ep
import foolbox as fb
import numpy as np
import pytest
import tensorflow as tf

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
    n = 64 if model_name == "vgg16" else 500
    own = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="own")
    reference = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="foolbox")
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
    n = 16 if model_name == "vgg16" else 300
    own = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="own", **params)
    reference = run_attack(attack, model, x[:n], y[:n], grid, norm=norm, implementation="foolbox", **params)
    assert np.abs(own.x_adv - reference.x_adv).max() <= 1e-6
    np.testing.assert_array_equal(own.success, reference.success)


def _mean_robust_accuracy(model, x, y, implementation: str, seeds, **params):
    runs = [run_attack("pgd", model, x, y, PARITY_GRID, implementation=implementation, seed=seed, **params)
            for seed in seeds]
    return np.mean([run.robust_accuracy for run in runs], axis=0)


def test_pgd_random_start_parity_small_cnn_quick(small_cnn, test_images):
    """The default run's smoke version: 200 images, one seed each, PGD-40 at foolbox's defaults. One run's
    robust accuracy moves by up to 1.4 points from seed to seed on 500 images (measured), so 3 points here."""
    x, y = test_images
    own = _mean_robust_accuracy(small_cnn, x[:200], y[:200], "own", [0])
    reference = _mean_robust_accuracy(small_cnn, x[:200], y[:200], "foolbox", [0])
    assert np.all(np.abs(own - reference) <= 0.03), (own, reference)


@pytest.mark.slow
def test_pgd_random_start_parity_small_cnn(small_cnn, test_images):
    """PGD-40 (Madry et al.'s setting) with independent random starts, 500 test images: robust accuracy, the mean
    of three seeds per implementation, within 1 percentage point of foolbox's at every ε of 0, 0.05, …, 0.3."""
    x, y = test_images
    own = _mean_robust_accuracy(small_cnn, x, y, "own", [0, 1, 2])
    reference = _mean_robust_accuracy(small_cnn, x, y, "foolbox", [0, 1, 2])
    assert np.all(np.abs(own - reference) <= 0.01 + 1e-9), (own, reference)


class _SharedStartLinfPGD(fb.attacks.LinfProjectedGradientDescentAttack):
    """foolbox's L∞ PGD, starting from a given point instead of its own random draw."""

    start: np.ndarray

    def get_random_start(self, x0, epsilon):
        return ep.astensor(tf.constant(self.start))


@pytest.mark.slow
def test_pgd_random_start_parity_vgg16(vgg16_model, test_images):
    """The real VGG16, 200 test images, grid 0.05 … 0.3: given the same random start, own and foolbox PGD
    produce the same adversarials (≤ 1e-6) and so the same robust accuracy at every ε. (Independent random
    starts are compared on the small CNN; the start's distribution is tested on its own.) 10 steps of 0.1 ε
    keep this within CI's budget on 2 CPU cores."""
    from attacks.core import random_start
    from attacks.pgd import pgd_run

    x, y = test_images[0][:200], test_images[1][:200]
    fmodel = fb.TensorFlowModel(vgg16_model, bounds=(0.0, 1.0))
    for k, eps in enumerate(PARITY_GRID[1:]):
        rng = np.random.default_rng([0, k])
        start = random_start(x, np.full(len(x), eps), "linf", np.random.default_rng([0, k]))
        own_x, own_logits = pgd_run(vgg16_model, x, y, None, np.full(len(x), eps), stepsize=0.1 * eps, steps=10,
                                    norm="linf", loss="ce", random_start=True, early_stop=False, rng=rng,
                                    batch_size=100, gradient="plain")
        attack = _SharedStartLinfPGD(steps=10, rel_stepsize=0.1, random_start=True)
        parts = []
        for i in (0, 100):
            attack.start = start[i:i + 100]
            criterion = fb.criteria.Misclassification(tf.constant(y[i:i + 100]))
            parts.append(attack.run(fmodel, tf.constant(x[i:i + 100]), criterion, epsilon=eps).numpy())
        reference_x = np.concatenate(parts)
        assert np.abs(own_x - reference_x).max() <= 1e-6, eps
        reference_accuracy = np.mean(np.argmax(vgg16_model(reference_x).numpy(), 1) == y)
        assert np.mean(np.argmax(own_logits, 1) == y) == pytest.approx(reference_accuracy, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("attack,norm,grid", [("fgsm", "linf", [0.0, 0.05, 0.1, 0.2, 0.3]),
                                              ("fgm", "l2", [0.0, 0.5, 1.0, 2.0, 3.0])], ids=["fgsm", "fgm-l2"])
def test_fast_gradient_adversarials_agree_vgg16_300_images(attack, norm, grid, vgg16_model, test_images):
    x, y = test_images
    own = run_attack(attack, vgg16_model, x[:300], y[:300], grid, norm=norm, implementation="own")
    reference = run_attack(attack, vgg16_model, x[:300], y[:300], grid, norm=norm, implementation="foolbox")
    assert np.abs(own.x_adv - reference.x_adv).max() <= 1e-6
    np.testing.assert_array_equal(own.success, reference.success)


@pytest.mark.slow
def test_pgd_without_random_start_agrees_vgg16_200_images(vgg16_model, test_images):
    x, y = test_images
    params = {"random_start": False, "steps": 10, "rel_stepsize": 0.1}
    own = run_attack("pgd", vgg16_model, x[:200], y[:200], [0.05, 0.1], implementation="own", **params)
    reference = run_attack("pgd", vgg16_model, x[:200], y[:200], [0.05, 0.1], implementation="foolbox", **params)
    assert np.abs(own.x_adv - reference.x_adv).max() <= 1e-6
    np.testing.assert_array_equal(own.success, reference.success)
