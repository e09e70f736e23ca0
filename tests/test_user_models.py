"""The models and data researchers bring, on the real UCI digits and a classifier trained on them here: a model with
its own layer class (loaded only with `custom_objects`, refused in one line without), a layer with a seedless random
op, Keras' legacy .h5 and a SavedModel with the records of their .keras twin, a data set file with the records of the
named data set, and malformed data set files refused before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from advsweep.experiments.cli import main
from advsweep.experiments.config import ConfigError, load_config, parse_config
from advsweep.models.user import UserModelError, check_gradient, import_user_code, savedmodel_classifier

ROOT = Path(__file__).resolve().parents[1]
# a defence's own layers, as docs/defenses.md's recipe has them: a 4-level input quantizer and Gaussian input noise
# whose random op has no seed
DEFENSE = (ROOT / "experiments" / "configs" / "defenses" / "my_defense.py").read_text()


class Unregistered(keras.layers.Layer):
    """A layer class no code registers with Keras."""

    def call(self, x):
        return x


def _wrapped(inner: keras.Model, layer: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input(shape=(8, 8, 1))
    return keras.Model(inputs, inner(layer(inputs)))


@pytest.fixture(scope="module")
def defended(digits_model, tmp_path_factory) -> dict[str, Path]:
    """The digits classifier behind each defence layer, saved as .keras, with the code that defines the layers."""
    folder = tmp_path_factory.mktemp("defended")
    code = folder / "my_defense.py"
    code.write_text(DEFENSE)
    (module,) = import_user_code([str(code)])
    inner = keras.saving.load_model(digits_model, compile=False)
    paths = {"code": code}
    for name, layer in (("quantized", module.Quantize()), ("noisy", module.GaussianNoise()),
                        ("unregistered", Unregistered())):
        paths[name] = folder / f"{name}.keras"
        _wrapped(inner, layer).save(paths[name])
    return paths


def _config(models: str, *, dataset: str = 'dataset = "digits"', count: int = 20, escalation: bool = True) -> str:
    return f'''
name = "yours"
{dataset}
chunk_size = {count}
[examples]
count = {count}
selection = "first"
{models}
[epsilons]
linf = [0.1]
[[attacks]]
name = "fgsm"
implementations = ["own"]
[minimal]
enabled = false
[escalation]
enabled = {str(escalation).lower()}
'''


def _records(run: Path, model: str) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_parquet(p) for p in sorted((run / "records" / model).glob("*.parquet"))}


def test_a_model_with_its_own_layer_loads_only_with_custom_objects(defended, tmp_path, capsys):
    unregistered = tmp_path / "bad.toml"
    unregistered.write_text(_config(f'[[models]]\nname = "mine"\npath = "{defended["unregistered"]}"'))
    assert main(["-q", "sweep", str(unregistered), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "`models[0]`" in err and "'Unregistered'" in err and 'custom_objects = "test_user_models.py"' in err, err
    assert not (tmp_path / "results" / "yours").exists()  # nothing written

    config = tmp_path / "mine.toml"
    config.write_text(_config(f'[[models]]\nname = "mine"\npath = "{defended["quantized"]}"\n'
                              f'custom_objects = "{defended["code"]}"', escalation=False))
    assert main(["-q", "sweep", str(config), "--results", str(tmp_path / "results")]) == 0
    run = next((tmp_path / "results" / "yours").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["models"][0]["custom_objects"]) == [str(defended["code"])]
    records = _records(run, "mine")["fgsm--own--chunk-0000.parquet"]
    assert len(records) == 40 and records["correct"].any()
    (v,) = json.loads((run / "verdicts.json").read_text())  # the quantizer's zero gradients fail the checks, and
    assert v["verdict"] == "at risk" and any(r.startswith("input gradients are not zero") for r in v["reasons"])
    assert not list(run.glob("records/*/escalated-*"))  # with escalation switched off nothing adapts

    # an edit to the layer's code is another model: another run id
    from advsweep.experiments.sweep import prepare_models, run_identity

    def run_id() -> str:
        sweep = load_config(config)
        loaded = prepare_models(sweep, tmp_path / "models")
        return run_identity(sweep, loaded, {"source_sha256": "code"}, {"device": "cpu"})

    before = run_id()
    defended["code"].write_text(DEFENSE + "\n# a comment is an edit\n")
    try:
        assert run_id() != before
    finally:
        defended["code"].write_text(DEFENSE)


def test_a_seedless_random_layer_loads_and_runs_in_a_sweep(defended, tmp_path):
    """In a fresh process, as a user runs it: deterministic kernels on, no seed set by anyone but the harness."""
    config = tmp_path / "noisy.toml"
    config.write_text(_config(f'[[models]]\nname = "noisy"\npath = "{defended["noisy"]}"\n'
                              f'custom_objects = "{defended["code"]}"', count=10, escalation=False))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "advsweep.experiments.cli", "-q", "sweep", str(config), "--results",
                           str(tmp_path / "results")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run = next((tmp_path / "results" / "yours").iterdir())
    checks = {c["name"]: c for c in json.loads((run / "checks.json").read_text())}
    assert not checks["logits are the same in two calls"]["passed"]  # detected as randomized, not refused
    (v,) = json.loads((run / "verdicts.json").read_text())  # escalation off here: no attack averaged over draws
    assert v["verdict"] == "at risk" and any(r.startswith("a randomized model is attacked with EOT") for r in v["reasons"])


def test_h5_savedmodel_and_a_data_set_file_give_the_records_of_their_twins(digits, digits_model, tmp_path):
    """The digits classifier as .keras, as legacy .h5 and as a SavedModel, on the digits by name and as a .npz file
    of the same arrays: the same records (to the byte between the data sets; but for the model's name between the
    formats)."""
    inner = keras.saving.load_model(digits_model, compile=False)
    inner.save(tmp_path / "twin.h5")
    inner.export(str(tmp_path / "twin_savedmodel"), verbose=False)
    np.savez(tmp_path / "digits.npz", x_test=digits.x_test, y_test=digits.y_test, x_train=digits.x_train,
             y_train=digits.y_train)
    models = "\n".join(f'[[models]]\nname = "{name}"\npath = "{path}"' for name, path in
                       (("keras", digits_model), ("h5", tmp_path / "twin.h5"),
                        ("savedmodel", tmp_path / "twin_savedmodel")))
    named, from_file = tmp_path / "named.toml", tmp_path / "file.toml"
    named.write_text(_config(f'[[models]]\nname = "keras"\npath = "{digits_model}"'))
    from_file.write_text(_config(models, dataset=f'dataset = {{ path = "{tmp_path / "digits.npz"}", range = [0, 16] }}'))
    assert main(["-q", "sweep", str(named), "--results", str(tmp_path / "named")]) == 0
    assert main(["-q", "sweep", str(from_file), "--results", str(tmp_path / "file")]) == 0
    run_named = next((tmp_path / "named" / "yours").iterdir())
    run_file = next((tmp_path / "file" / "yours").iterdir())
    for name in ("clean--chunk-0000.parquet", "fgsm--own--chunk-0000.parquet"):
        assert (run_file / "records" / "keras" / name).read_bytes() == (run_named / "records" / "keras" / name).read_bytes()
    manifest = json.loads((run_file / "manifest.json").read_text())
    assert manifest["dataset"]["input_shape"] == [8, 8, 1] and manifest["dataset"]["range"] == [0.0, 16.0]
    assert manifest["dataset"]["content_sha256"] == manifest["assets"][0]["content_sha256"]
    assert not list(run_file.glob("records/*/escalated-*"))  # no check fired on these models: nothing escalated
    assert all("escalation" not in v for v in json.loads((run_file / "verdicts.json").read_text()))
    keras_records = _records(run_file, "keras")
    for twin in ("h5", "savedmodel"):
        for name, records in _records(run_file, twin).items():
            pd.testing.assert_frame_equal(records.drop(columns="model"), keras_records[name].drop(columns="model"))


@pytest.mark.parametrize("arrays,expected", [
    ({"x_test": "images"}, "has no array `y_test`"),
    ({"x_test": "images", "y_test": "float_labels"}, "`y_test` is float64, not integers"),
    ({"x_test": "images", "y_test": "negative_labels"}, r"labels lie in \[-1, 8\], outside 0 … 8"),
    ({"x_test": "nan_images", "y_test": "labels"}, "`x_test` holds NaN"),
    ({"x_test": "wide_images", "y_test": "labels"}, r"values lie in \[0, 255\], outside the range \[0, 1\]"),
    ({"x_test": "images", "y_test": "short_labels"}, r"`y_test` has shape \(19,\) for 20 images"),
    ({"x_test": "images", "y_test": "labels", "x_train": "images"}, "only one of `x_train` and `y_train`"),
], ids=["no-labels", "float-labels", "negative-labels", "nan", "outside-range", "short-labels", "half-train"])
def test_a_malformed_data_set_file_is_refused_in_one_line(tmp_path, arrays, expected):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(20, 8, 8)).astype(np.float32)
    labels = np.arange(20) % 10
    choices = {"images": images, "labels": labels, "float_labels": labels.astype(np.float64),
               "negative_labels": labels - 1, "nan_images": np.where(images > 0.9, np.nan, images),
               "wide_images": np.round(images * 255), "short_labels": labels[:19]}
    np.savez(tmp_path / "data.npz", **{name: choices[value] for name, value in arrays.items()})
    raw = {"name": "yours", "dataset": {"path": "data.npz"}, "examples": {"count": 10, "selection": "first"},
           "models": [{"name": "m", "train": {"kind": "small_cnn"}}], "epsilons": {"linf": [0.1]},
           "attacks": [{"name": "fgsm"}]}
    with pytest.raises(ConfigError, match=expected) as refused:
        parse_config(raw, base=tmp_path)
    assert str(refused.value).startswith("config key `dataset.path`: data set file") and "\n" not in str(refused.value)


def test_a_savedmodel_whose_gradient_lies_is_refused(tmp_path):
    """The finite-difference check of a SavedModel's input gradient fails on a graph whose gradient is zero (and
    passes on the same graph with its true gradient)."""
    weights = tf.constant(np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32))

    @tf.custom_gradient
    def masked(x):
        return tf.matmul(tf.reshape(x, (-1, 64)), weights), lambda upstream: tf.zeros_like(x)

    for name, function in (("honest", lambda x: tf.matmul(tf.reshape(x, (-1, 64)), weights)), ("lying", masked)):
        module = tf.Module()
        module.serve = tf.function(function, input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32)])
        tf.saved_model.save(module, str(tmp_path / name), signatures={"serving_default": module.serve})
    model = savedmodel_classifier(tmp_path / "honest", input_shape=(8, 8, 1))
    assert check_gradient(model, (8, 8, 1), where="honest") < 1e-2
    with pytest.raises(UserModelError, match="input gradient disagrees with finite differences"):
        savedmodel_classifier(tmp_path / "lying", input_shape=(8, 8, 1))


def _sweep(tmp_path: Path, name: str, model: Path, code: Path, attacks: str, extra: str = "", *, count: int = 20,
           grid: str = "[0.1, 0.2, 0.3]") -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(f'''
name = "{name}"
dataset = "digits"
chunk_size = {count}
[examples]
count = {count}
selection = "first"
[[models]]
name = "{name}"
path = "{model}"
custom_objects = "{code}"
[epsilons]
linf = {grid}
{attacks}
[minimal]
enabled = false
{extra}''')
    assert main(["-q", "sweep", str(config), "--results", str(tmp_path / "results")]) == 0
    return next((tmp_path / "results" / name).iterdir())


GRADIENT_ATTACKS = """
[[attacks]]
name = "fgsm"
implementations = ["own"]
[[attacks]]
name = "pgd"
steps = 10
rel_stepsize = 0.25
implementations = ["own"]"""


def test_a_noise_model_is_judged_by_the_rule_and_escalated_to_eot(defended, tmp_path):
    """A classifier behind Gaussian input noise (σ = 0.3, a seedless random op): every attack's robust accuracy at
    ε = 0, and the worst case's, equal clean accuracy under the rule (the mean of the draws' probabilities); the
    escalation's EOT row runs, labelled as such, with its cost, at least as strong as the single-draw rows judged by
    the same rule (within one example of the ten); the verdict carries it."""
    run = _sweep(tmp_path, "noisy", defended["noisy"], defended["code"], GRADIENT_ATTACKS, "[randomized]\ndraws = 5",
                 count=10, grid="[0.3]")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["randomized"] == {"noisy": {"draws": 5, "rule": "mean of the draws' softmax probabilities"}}
    summary = pd.read_csv(run / "summary.csv")
    at_zero = summary[summary["eps"] == 0].set_index("attack")["robust_accuracy"]
    clean = float(summary["clean_correct"].iloc[0]) / float(summary["examples"].iloc[0])
    assert set(at_zero.index) >= {"fgsm", "pgd-linf", "escalated-eot-linf", "worst case"}, at_zero
    assert (at_zero == clean).all() and clean > 0.5, (at_zero, clean)
    attacked = summary[summary["eps"] == 0.3].set_index("attack")["robust_accuracy"]
    assert attacked["escalated-eot-linf"] <= min(attacked["fgsm"], attacked["pgd-linf"]) + 0.1, attacked
    verdicts = json.loads((run / "verdicts.json").read_text())
    (v,) = verdicts
    assert v["escalation"]["ran"] == ["escalated-eot-linf"] and "randomized" in v["escalation"]["why"][0]
    assert v["escalation"]["seconds"] > 0
    checks = {c["name"]: c for c in json.loads((run / "checks.json").read_text())}
    assert checks["a randomized model is attacked with EOT"]["passed"]
    assert checks["logits are the same in two calls"]["informational"]
    cost = pd.read_csv(run / "cost.csv")
    assert cost["member"].str.startswith("escalated-eot-linf").any()


def test_a_quantizer_is_escalated_to_bpda_at_least_as_strong_as_the_gradient_attacks(defended, tmp_path):
    """A 4-level input quantizer in front of the classifier: its zero gradients fail the checks, the escalation finds
    the quantizer, and its BPDA row is at least as strong as the best of the sweep's own gradient attacks at every
    ε, the worst case at or below it. (That nothing is escalated where no check fires: the twins' test above.)"""
    run = _sweep(tmp_path, "quantized", defended["quantized"], defended["code"], GRADIENT_ATTACKS,
                 "[escalation]\nsquare_queries = 300")
    (v,) = json.loads((run / "verdicts.json").read_text())
    assert "input gradients are not zero" in v["escalation"]["why"] and v["escalation"]["layers"] == ["quantize"]
    assert v["escalation"]["ran"] == ["escalated-bpda-linf", "escalated-square300-linf"]
    summary = pd.read_csv(run / "summary.csv")
    rows = summary[summary["eps"] > 0].pivot_table(index="eps", columns="attack", values="robust_accuracy",
                                                   aggfunc="min")
    assert (rows["escalated-bpda-linf"] <= rows[["fgsm", "pgd-linf"]].min(axis=1) + 1e-12).all(), rows
    assert (rows["worst case"] <= rows["escalated-bpda-linf"] + 1e-12).all()
