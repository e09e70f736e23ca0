"""The strength comparison as a (slow) test: on an adversarially trained CNN, the harness's ``autoattack`` leaves no
more examples robust than an independent implementation of AutoAttack run on the same examples with the same
settings, nor than the harness's own PGD-40.

The model is trained here by the harness's adversarial training (``advsweep train``'s, fast training at ε = 0.2,
small: 12000 images, 3 epochs); the reference is torchattacks' APGD, APGDT and Square (ports of the authors' code) attacking the
same Keras model through ``benchmarks/autoattack_reference.py``'s bridge. Both run the same reduced budgets (the
standard ones take about half an hour here); docs/results.md has the standard settings on the three models.
"""

from __future__ import annotations

import numpy as np
import pytest

from advsweep.attacks import autoattack, run_attack
from advsweep.models.config import ModelConfig
from advsweep.models.training import to_float_images, train_model


@pytest.mark.slow
def test_autoattack_is_at_least_as_strong_as_the_reference_on_an_adversarially_trained_cnn(mnist, benchmark_module,
                                                                                            tmp_path):
    reference = benchmark_module("autoattack_reference")
    (_, _, x_test, y_test), _ = mnist
    config = ModelConfig(kind="small_cnn", train_examples=12000, validation_examples=1000, epochs=3, augment_shift=0,
                         batch_size=100, adversarial={"method": "fast", "eps": 0.2, "ramp_epochs": 1.0,
                                                      "eval_examples": 200})
    model = train_model(config, tmp_path).model
    x, y = to_float_images(x_test[:60]), y_test[:60].astype(np.int64)
    eps, attacks = 0.2, ("apgd-ce", "apgd-t", "square")
    settings = {"apgd-ce": {"steps": 50}, "apgd-t": {"steps": 50, "target_classes": 3}, "square": {"queries": 1000}}
    ours = autoattack(model, x, y, [eps], attacks=list(attacks), settings=settings).robust_accuracy[0]
    theirs = reference.reference_robust(reference.KerasModule(model).eval(), x, y, eps, "linf", 10,
                                        settings=settings, attacks=attacks)
    pgd = run_attack("pgd", model, x, y, [eps], steps=40, loss="margin").robust_accuracy[0]
    print(f"robust: ours {ours:.3f}, reference {theirs:.3f}, PGD-40 {pgd:.3f}")
    assert 0.15 <= theirs <= 0.85, "the model must be neither broken nor out of reach for the comparison to mean much"
    assert ours <= theirs + 0.005  # at or below the reference + 0.5 points
    assert ours <= pgd
