"""Training: what `advsweep train` writes, seeded reproducibility, and the command line's errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from advsweep.experiments.cli import main
from advsweep.experiments.reporting.plots import training_curves
from advsweep.models.config import ModelConfig
from advsweep.models.training import load_trained, split_indices, train_model

SMALL = {"kind": "small_cnn", "train_examples": 2000, "validation_examples": 1000, "epochs": 2, "seed": 5}


@pytest.fixture(scope="module")
def trained_twice(tmp_path_factory):
    config = ModelConfig.from_mapping(SMALL)
    first = train_model(config, tmp_path_factory.mktemp("first"), draw_curves=training_curves)
    second = train_model(config, tmp_path_factory.mktemp("second"))
    return config, first, second


def test_train_writes_model_metrics_history_and_curves(trained_twice):
    config, first, _ = trained_twice
    folder = first.folder
    assert folder.name == config.model_id
    for name in ("model.keras", "config.json", "metrics.json", "history.csv", "training_curves.png",
                 "training_curves.pdf"):
        assert (folder / name).stat().st_size > 0, name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["clean_test_accuracy"] <= 1.0 and isinstance(metrics["clean_test_accuracy"], float)
    assert metrics["test"]["examples"] == 10000
    confusion = np.array(metrics["test"]["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 10000
    assert np.trace(confusion) / 10000 == pytest.approx(metrics["clean_test_accuracy"])
    assert set(metrics["test"]["per_class_accuracy"]) == {str(c) for c in range(10)}
    assert metrics["seed"] == 5 and metrics["assets"]["mnist"]["content_sha256"]
    assert metrics["training_seconds"]["total"] > 0
    assert not list(folder.parent.glob(".*"))  # no staging folder left behind


def test_training_is_reproducible(trained_twice):
    _, first, second = trained_twice
    assert first.metrics["clean_test_accuracy"] == second.metrics["clean_test_accuracy"]
    for a, b in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_saved_model_loads_with_its_config(trained_twice, test_images):
    config, first, _ = trained_twice
    model, loaded_config, metrics = load_trained(first.folder)
    assert loaded_config == config and metrics["model_id"] == config.model_id
    x = test_images[0][:16]
    np.testing.assert_allclose(model(x).numpy(), first.model(x).numpy(), atol=1e-5)


def test_validation_is_carved_from_training_set_and_test_set_untouched():
    train, val = split_indices(ModelConfig(validation_examples=5000, seed=1))
    assert len(val) == 5000 and len(train) == 55000
    assert not set(train) & set(val) and max(train.max(), val.max()) < 60000
    other_train, _ = split_indices(ModelConfig(validation_examples=5000, seed=2))
    assert not np.array_equal(train, other_train)


def test_cli_train_reuses_a_trained_model(tmp_path, capsys):
    arguments = ["-q", "train", "--model", "small_cnn", "--train-examples", "500", "--validation-examples", "500",
                 "--epochs", "1", "--output", str(tmp_path)]
    assert main(arguments) == 0
    first = json.loads(capsys.readouterr().out)
    modified = (tmp_path / first["model_id"] / "model.keras").stat().st_mtime_ns
    assert main(arguments) == 0
    assert json.loads(capsys.readouterr().out)["clean_test_accuracy"] == first["clean_test_accuracy"]
    assert (tmp_path / first["model_id"] / "model.keras").stat().st_mtime_ns == modified


@pytest.mark.parametrize("arguments,match", [
    (["--cut", "block9_pool"], "cut.*block4_pool"),
    (["--input-size", "8"], "input_size"),
    (["--hidden-units", "512,x"], "hidden-units"),
    (["--epochs", "0"], "epochs"),
], ids=["cut", "input-size", "hidden-units", "epochs"])
def test_cli_train_bad_options_exit_2_with_message(tmp_path, capsys, arguments, match):
    assert main(["-q", "train", "--output", str(tmp_path), *arguments]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_cli_assets_lists_sources_and_hashes(capsys):
    assert main(["-q", "assets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["mnist", "vgg16_imagenet_notop"]
    assert all(len(row["content_sha256"]) == 64 for row in rows)


def test_cli_assets_bad_path_exits_2(tmp_path, capsys):
    assert main(["-q", "assets", "--mnist", str(tmp_path / "missing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_augmentation_shifts_whole_pixels_and_is_seeded():
    from advsweep.models.training import shifted_batches

    x = np.zeros((64, 28, 28, 1), np.float32)
    x[:, 10:18, 10:18] = 1.0
    first = next(iter(shifted_batches(x, np.zeros(64, np.int64), batch_size=64, shift=2, seed=3)))[0].numpy()
    again = next(iter(shifted_batches(x, np.zeros(64, np.int64), batch_size=64, shift=2, seed=3)))[0].numpy()
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first.sum(axis=(1, 2, 3)), 64.0)  # the digit is moved, not cut or blurred
    corners = np.array([np.argwhere(image[..., 0] > 0).min(axis=0) for image in first])
    assert np.abs(corners - 10).max() <= 2 and len({tuple(c) for c in corners}) > 1


def test_cli_evaluate_is_a_one_model_sweep(trained_twice, capsys):
    """`advsweep evaluate` runs the sweep pipeline: records, summary tables and checks in one run folder."""
    _, first, _ = trained_twice
    arguments = ["-q", "evaluate", str(first.folder), "--examples", "20", "--eps", "0.1,0.3",
                 "--implementations", "own"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "| fgsm | own | single |" in out and "| pgd-linf | own | any |" in out and "ε = 0.3" in out
    assert "checks:" in out and "run folder:" in out
    runs = list((first.folder / "evaluation").iterdir())
    assert len(runs) == 1
    run = runs[0]
    checks = json.loads((run / "checks.json").read_text())
    assert {c["name"] for c in checks} >= {"model returns logits", "unbounded attack wins"}
    summary = pd.read_csv(run / "summary.csv")
    assert set(summary["attack"]) == {"fgsm", "pgd-linf", "worst case"}
    assert sorted(set(summary["eps"])) == [0.0, 0.1, 0.3] and set(summary["examples"]) == {20}
    examples = pd.read_csv(run / "examples.csv")
    assert examples["example"].tolist() == list(range(20))  # the first N test images
    assert main(arguments) == 0  # the same command again resumes the finished run: nothing new
    assert list((first.folder / "evaluation").iterdir()) == runs


@pytest.mark.parametrize("arguments,match", [
    (["--attacks", "cw"], "--attacks takes names from apgd-ce, apgd-dlr, apgd-t, autoattack, bim, fab, fab-t, fgm, fgsm, pgd, square"),
    (["--implementations", "cleverhans"], "--implementations"),
    (["--eps", "0.1,x"], "--eps takes comma-separated numbers"),
    (["--eps", "2"], r"--eps: .*\[0, 1\]"),
    (["--examples", "0"], "--examples"),
], ids=["attack", "implementation", "eps-text", "eps-range", "examples"])
def test_cli_evaluate_bad_options_exit_2(trained_twice, capsys, arguments, match):
    _, first, _ = trained_twice
    assert main(["-q", "evaluate", str(first.folder), *arguments]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_cli_evaluate_missing_model_exits_2(tmp_path, capsys):
    assert main(["-q", "evaluate", str(tmp_path / "nothing")]) == 2
    assert "advsweep train" in capsys.readouterr().err
