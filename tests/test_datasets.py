"""Data sets and classifiers the harness did not build: the UCI digits (8×8) through a whole sweep with
a Keras model trained here, a CIFAR-shaped colour model (32×32×3, random weights) through the attacks, records
and figure, and models that return probabilities or expect another shape refused before any work."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import matplotlib.image

import keras
import numpy as np
import pandas as pd
import pytest

from advsweep.assets import DATASETS, load_dataset
from advsweep.assets.datasets import DIGITS_CONTENT_SHA256
from advsweep.attacks import minimal_perturbation, run_attack
from advsweep.experiments.cli import main
from advsweep.experiments.config import ConfigError, parse_config
from advsweep.experiments.reporting.plots import plot_adversarial_grid
from advsweep.experiments.reporting.records import COLUMNS, attack_records


from conftest import digits_classifier as _classifier  # noqa: E402


def test_digits_are_the_verified_scikit_learn_copy(digits):
    assert digits.info is DATASETS["digits"]
    assert digits.resolved.content_sha256 == DIGITS_CONTENT_SHA256
    x = digits.test_images()
    assert x.shape == (597, 8, 8, 1) and x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    assert digits.train_images().shape == (1200, 8, 8, 1)
    assert sorted(set(digits.test_labels.tolist())) == list(range(10))
    assert DATASETS["digits"].eps_limit("l2") == 8.0 and DATASETS["cifar10"].eps_limit("l2") == pytest.approx(3072 ** 0.5)


def _digits_config(model: Path, **overrides: object) -> str:
    values = {"count": 100, "grid": "[0.0, 0.1, 0.2, 0.3]", "model_extra": ""}
    values.update(overrides)
    return f'''
name = "digits"
dataset = "digits"
chunk_size = 50
[examples]
count = {values["count"]}
[[models]]
name = "cnn"
path = "{model}"
{values["model_extra"]}
[epsilons]
linf = {values["grid"]}
l2 = [0.0, 1.0, 2.0]
[[attacks]]
name = "fgsm"
[[attacks]]
name = "pgd"
steps = 40
rel_stepsize = 0.0625
loss = "margin"
[[attacks]]
name = "pgd"
norm = "l2"
steps = 40
rel_stepsize = 0.0625
loss = "margin"
implementations = ["own"]
[minimal]
examples = 30
steps = 10
[figures]
grid_attack = "pgd-linf"
'''


def test_a_sweep_on_the_digits_with_a_keras_model_trained_here(digits, digits_model, tmp_path, capsys):
    """FGSM, PGD (L∞ and L2), the robustness curve and the checks, end to end on 8×8 inputs."""
    config = tmp_path / "digits.toml"
    config.write_text(_digits_config(digits_model))
    assert main(["-q", "sweep", str(config), "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    run = next((tmp_path / "results" / "digits").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["dataset"]["input_shape"] == [8, 8, 1]
    assert manifest["assets"][0]["content_sha256"] == DIGITS_CONTENT_SHA256
    records = pd.concat(pd.read_parquet(p) for p in (run / "records" / "cnn").glob("*chunk*.parquet"))
    assert set(records.dtypes.astype(str).items()) == set(COLUMNS.items())
    assert records["example"].max() < 597 and records["example"].nunique() == 100
    by_class = records[records["attack"] == "clean"].groupby("label").size()
    assert by_class.tolist() == [10] * 10  # balanced over the digits' classes
    assert records.loc[records["norm"] == "linf", "linf"].max() <= 0.3 + 1e-6
    assert records.loc[records["norm"] == "l2", "l2"].max() <= 2.0 + 1e-5
    summary = pd.read_csv(run / "summary.csv")
    worst = summary[(summary["attack"] == "worst case") & (summary["norm"] == "linf")].set_index("eps")
    assert worst.loc[0.0, "robust_accuracy"] > 0.85 and worst.loc[0.3, "robust_accuracy"] < worst.loc[0.0, "robust_accuracy"]
    checks = json.loads((run / "checks.json").read_text())
    failed = [c for c in checks if not c["passed"] and not c.get("informational")]
    assert not failed, failed
    names = {c["name"] for c in checks}
    assert "unbounded attack wins" in names
    assert any(name.startswith("robustness curve not above the worst case") for name in names), names
    minimal = pd.read_parquet(run / "records" / "cnn" / "minimal.parquet")
    assert len(minimal) == 30
    finite = minimal["minimal_eps"][np.isfinite(minimal["minimal_eps"])]
    assert len(finite) > 20 and (finite <= 0.5 + 1e-9).all()
    assert (run / "figures" / "adversarial_grid_cnn.png").stat().st_size > 0
    assert "checks:" in out and "0 failed" in out


def test_digits_config_limits_come_from_the_data_set(digits_model, tmp_path):
    with pytest.raises(ConfigError, match=r"`examples.count`: must be an integer from 1 to 597"):
        parse_config(_toml(_digits_config(digits_model, count=600)), base=tmp_path)
    with pytest.raises(ConfigError, match=r"epsilons.l2.*\[0, 8\]"):
        parse_config(_toml(_digits_config(digits_model).replace("l2 = [0.0, 1.0, 2.0]", "l2 = [9.0]")), base=tmp_path)
    with pytest.raises(ConfigError, match=r"`models\[0\].dataset`: the model was trained on 'mnist'"):
        parse_config(_toml(_digits_config(digits_model, model_extra='dataset = "mnist"')), base=tmp_path)
    with pytest.raises(ConfigError, match=r"`dataset`: must be one of 'mnist', 'digits', 'cifar10'"):
        parse_config(_toml(_digits_config(digits_model).replace('dataset = "digits"', 'dataset = "svhn"')),
                     base=tmp_path)
    cifar = parse_config(_toml(_digits_config(digits_model).replace('dataset = "digits"', 'dataset = "cifar10"')
                               .replace('path = "', 'dataset = "cifar10"\npath = "')
                               .replace("l2 = [0.0, 1.0, 2.0]", "l2 = [40.0]")), base=tmp_path)
    assert cifar.epsilons["l2"] == (0.0, 40.0)  # 40 > 28: the L2 limit is the 32×32×3 box's diameter


def _toml(text: str) -> dict:
    return tomllib.loads(text)


@pytest.mark.parametrize("case,expected", [
    ("softmax", "ends in a softmax: the attacks need logits"),
    ("shape", r"must map float32 \(N, 8, 8, 1\) images.*Received: model.input_shape=\(None, 28, 28, 1\)"),
    ("range", r"`models\[0\].input_range`: must be \[low, high\]"),
], ids=["softmax", "shape-mismatch", "bad-input-range"])
def test_a_model_that_cannot_be_attacked_is_refused_before_any_work(digits_model, tmp_path, capsys, case, expected):
    path, extra = digits_model, ""
    if case == "softmax":
        path = tmp_path / "probabilities.keras"
        _classifier((8, 8, 1), softmax=True).save(path)
    elif case == "shape":
        path = tmp_path / "mnist_shaped.keras"
        _classifier((28, 28, 1)).save(path)
    else:
        extra = "input_range = [1, 0]"
    config = tmp_path / "bad.toml"
    config.write_text(_digits_config(path, model_extra=extra))
    assert main(["-q", "sweep", str(config), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "models[0]" in err
    assert re.search(expected, err), err
    assert not (tmp_path / "results" / "digits").exists()  # nothing written


def test_input_range_rescales_a_model_trained_on_0_255(digits, digits_model, tmp_path):
    """A model that expects pixels in [0, 255] gets [0, 1] inputs rescaled; ε stays in [0, 1] units."""
    from advsweep.models import load_classifier

    inner = keras.saving.load_model(digits_model, compile=False)
    inputs = keras.Input(shape=(8, 8, 1))
    wide = keras.Model(inputs, inner(keras.layers.Rescaling(1 / 255.0)(inputs)))  # trained as if on 0..255
    wide.save(tmp_path / "wide.keras")
    model = load_classifier(tmp_path / "wide.keras", input_shape=(8, 8, 1), classes=10, input_range=(0, 255))
    x = digits.test_images()[:32]
    np.testing.assert_allclose(model(x).numpy(), inner(x).numpy(), rtol=1e-5, atol=1e-5)


def test_a_cifar_shaped_colour_model_runs_through_the_attacks_records_and_figure(tmp_path):
    """32×32×3, random weights: FGSM and PGD by both implementations, the minimal search, records and the colour
    grid; the L2 limit is the box's diameter √3072 ≈ 55.4, not MNIST's 28."""
    model = _classifier((32, 32, 3), seed=1)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(40, 32, 32, 3)).astype(np.float32)
    labels = np.argmax(model(x).numpy(), axis=-1)  # correct clean, so that every attack has work to do
    grid = [0.0, 0.01, 0.03]
    for attack in ("fgsm", "pgd"):
        own = run_attack(attack, model, x, labels, grid, **({"steps": 5, "random_start": False} if attack == "pgd" else {}))
        reference = run_attack(attack, model, x, labels, grid, implementation="foolbox",
                               **({"steps": 5, "random_start": False} if attack == "pgd" else {}))
        assert own.x_adv.shape == (3, 40, 32, 32, 3) and own.logits.shape == (3, 40, 10)
        np.testing.assert_allclose(own.x_adv, reference.x_adv, atol=1e-6)
        assert np.abs(own.x_adv - x).max() <= 0.03 + 1e-6 and own.robust_accuracy[-1] < 1.0
        frame = attack_records(model="cifar", attack=attack, implementation="own", iterate="any", norm="linf",
                               epsilons=grid, examples=np.arange(40), labels=labels, x=x, x_adv=own.x_adv,
                               logits=own.logits)
        assert len(frame) == 120 and frame["correct"].iloc[:40].all()
    l2 = run_attack("pgd", model, x, labels, [40.0], norm="l2", steps=2)
    assert l2.success.shape == (1, 40)
    with pytest.raises(ValueError, match=r"epsilons.*\[0, 55.4"):
        run_attack("pgd", model, x, labels, [60.0], norm="l2")
    with pytest.raises(ValueError, match=r"must be images of shape \(N, 32, 32, 3\)"):
        run_attack("fgsm", model, x[:, :28, :28], labels, [0.1])
    with pytest.raises(ValueError, match=r"classes in 0\.\.9"):
        run_attack("fgsm", model, x, labels + 10, [0.1])
    minimal = minimal_perturbation(model, x[:8], labels[:8], steps=5, tolerance=0.01)
    assert minimal.x_adv.shape == (8, 32, 32, 3) and np.isfinite(minimal.eps).all()
    files = plot_adversarial_grid(x[:3], own.x_adv[1:, :3], labels[:3], own.predictions[1:, :3], grid[1:],
                                  tmp_path / "grid")
    image = matplotlib.image.imread(str(next(f for f in files if f.suffix == ".png")))
    assert image[..., 0].std() > 0 and np.abs(image[..., 0] - image[..., 1]).max() > 0.05  # drawn in colour


def test_a_balanced_selection_the_test_set_cannot_give_is_refused(digits_model, tmp_path, capsys):
    """590 balanced digits would need 59 per class; class 8 has 55 test images: exit 2, nothing written."""
    config = tmp_path / "many.toml"
    config.write_text(_digits_config(digits_model, count=590))
    assert main(["-q", "sweep", str(config), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "asks for 59 test images per class, but the test set has only 55 of class 8" in err
    assert not (tmp_path / "results" / "digits").exists()
