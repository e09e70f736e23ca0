"""Defects found in review, each pinned by a test that fails if it comes back: result file modes, the training
temperature, a run identity that covers exactly the code that computes records, a command line whose error is its
one line, and one installed name."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from advsweep.assets.files import umask_mode, write_atomic
from advsweep.experiments import units as units_module
from advsweep.models.config import ModelConfig
from advsweep.models.training import tempered_cross_entropy, train_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_results_get_the_mode_the_umask_gives_a_new_file(tmp_path, umask_022):
    path = write_atomic(tmp_path / "summary.csv", lambda p: p.write_text("x\n"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o077)
    private = write_atomic(tmp_path / "private.csv", lambda p: p.write_text("x\n"))
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert umask_mode(0o777) == 0o700


def test_tempered_loss_is_cross_entropy_of_scaled_logits():
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], dtype=np.float32)
    labels = np.array([0, 1])
    scaled = logits / 0.6
    expected = np.mean(np.log(np.exp(scaled).sum(1)) - scaled[np.arange(2), labels])
    assert float(tempered_cross_entropy(0.6)(labels, logits)) == pytest.approx(expected, rel=1e-5)
    plain = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(2), labels])
    assert float(tempered_cross_entropy(1.0)(labels, logits)) == pytest.approx(plain, rel=1e-5)


def test_temperature_changes_training_and_the_model_keeps_raw_logits(tmp_path):
    """`temperature` used to change only the model id; now it is the training loss's temperature."""
    common = {"kind": "small_cnn", "train_examples": 1000, "validation_examples": 500, "epochs": 1,
              "augment_shift": 0}
    cool = train_model(ModelConfig(**common, temperature=0.6), tmp_path)
    plain = train_model(ModelConfig(**common), tmp_path)
    weights = [np.asarray(w) for w in cool.model.get_layer("logits").get_weights()]
    plain_weights = [np.asarray(w) for w in plain.model.get_layer("logits").get_weights()]
    assert not np.allclose(weights[0], plain_weights[0])
    # the saved model returns raw logits (no division by T, no softmax)
    reloaded = keras.saving.load_model(cool.folder / "model.keras", compile=False)
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_array_equal(reloaded(x).numpy(), cool.model(x).numpy())
    assert cool.metrics["config"]["temperature"] == 0.6


@pytest.fixture
def source_copy(tmp_path):
    """A copy of the installed advsweep sources, one folder per package, as :func:`source_digest` locates them."""
    import importlib.util
    import shutil

    locations = {}
    for package in units_module.RECORD_SOURCES:
        spec = importlib.util.find_spec(package)
        folder = tmp_path / package
        shutil.copytree(list(spec.submodule_search_locations)[0], folder,
                        ignore=shutil.ignore_patterns("__pycache__", "configs"))
        locations[package] = folder
    return locations


@pytest.mark.parametrize("edited", ["advsweep.attacks/gradient/pgd.py", "advsweep.attacks/gradient/apgd.py", "advsweep/defaults.py",
                                    "advsweep.models/vgg16.py", "advsweep.assets/datasets.py",
                                    "advsweep.experiments/units.py", "advsweep.experiments/reporting/records.py",
                                    "advsweep.experiments/config.py"])
def test_an_edit_to_what_computes_records_changes_the_run_id(source_copy, edited):
    """An edited attack (or default, model, data set, unit or record format) must not resume into the run of the
    code before the edit, committed or not."""
    before = units_module.source_digest(source_copy)
    package, name = edited.split("/", 1)
    path = source_copy[package] / name
    path.write_text(path.read_text() + "\n# edited\n")
    assert units_module.source_digest(source_copy) != before


@pytest.mark.parametrize("edited", ["advsweep.experiments/reporting/plots.py", "advsweep.experiments/reporting/report.py",
                                    "advsweep.experiments/reporting/summary.py", "advsweep.experiments/cli.py",
                                    "advsweep.experiments/cluster.py", "advsweep.experiments/sweep.py"])
def test_an_edit_to_plots_tables_report_or_cli_keeps_the_run_id(source_copy, edited):
    """A fixed legend or a reworded message leaves the run id alone: `advsweep report` rebuilds the outputs from the
    records of the same run."""
    before = units_module.source_digest(source_copy)
    package, name = edited.split("/", 1)
    path = source_copy[package] / name
    path.write_text(path.read_text() + "\n# edited\n")
    assert units_module.source_digest(source_copy) == before
    # and the copy's digest is the installed one's: the keys name packages, not folders of this machine
    assert before == units_module.source_digest()


# --------------------------------------------------------------------------------------------
# the command line's one important line


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``advsweep ARGS`` in a fresh process, with TensorFlow's native log level left to the command line, and
    a report of whether TensorFlow was imported."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    script = ("import sys\nfrom advsweep.experiments.cli import main\ncode = main(sys.argv[1:])\n"
              "print('tensorflow imported' if 'tensorflow' in sys.modules else 'no tensorflow')\nsys.exit(code)")
    return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_bad_config_is_one_line_on_stderr_before_tensorflow_starts(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('name = "bad"\n[[models]]\nname = "m"\ntrain = {kind = "small_cnn"}\n'
                      '[epsilons]\nlinf = [0.1]\n[[attacks]]\nname = "pgd"\nsteps = 0\n')
    done = _cli(["sweep", str(config), "--results", str(tmp_path / "results")], ROOT)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["advsweep sweep: error: config key `attacks[0].steps`: must be an integer "
                                        "≥ 1. Received: 0"]
    assert done.stdout.strip() == "no tensorflow"
    assert not (tmp_path / "results").exists()


def test_tensorflow_start_up_noise_is_silenced_unless_verbose(tmp_path):
    """`advsweep report` on a folder that is no run imports TensorFlow, then fails: one line on stderr; with -v,
    TensorFlow's native start-up lines are shown."""
    done = _cli(["report", str(tmp_path)], ROOT)
    assert done.returncode == 2 and done.stdout.strip() == "tensorflow imported"
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("advsweep report: error:"), done.stderr
    verbose = _cli(["-v", "report", str(tmp_path)], ROOT)
    assert verbose.returncode == 2
    assert "absl::InitializeLog" in verbose.stderr  # TensorFlow's native start-up line, shown with -v
    assert verbose.stderr.splitlines()[-1].startswith("advsweep report: error:")


# --------------------------------------------------------------------------------------------
# one installed name


def test_the_install_exposes_only_the_advsweep_namespace(tmp_path):
    """Outside the checkout, `advsweep.attacks` imports and a bare `attacks` or `models` does not: installing
    advsweep never shadows a research environment's own `models` package."""
    script = ("import importlib.util, json\n"
              "names = ['advsweep', 'advsweep.assets', 'advsweep.models', 'advsweep.attacks', 'advsweep.experiments',"
              " 'assets', 'models', 'attacks', 'experiments']\n"
              "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert all(found[n] for n in ("advsweep", "advsweep.assets", "advsweep.models", "advsweep.attacks",
                                  "advsweep.experiments")), found
    assert not any(found[n] for n in ("assets", "models", "attacks", "experiments")), found


@pytest.mark.parametrize("layer", ["assets", "models", "attacks", "experiments"])
def test_a_layer_never_imports_under_its_folder_name(layer):
    """From the repository root a layer's folder is on the path by its bare name; importing it that way would run a
    second copy of the code (and a test would patch the wrong one). It is refused, naming the import to use."""
    script = (f"import importlib\ntry:\n    importlib.import_module({layer!r})\nexcept ImportError as error:\n"
              f"    print('refused:', error)\nmodule = importlib.import_module('advsweep.{layer}')\n"
              "print(module.__file__)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    refused, file = done.stdout.splitlines()[-2:]
    assert refused.startswith("refused:") and f"import advsweep.{layer}" in refused
    assert Path(file) == ROOT / layer / "__init__.py" or "site-packages" in file


def test_the_checkout_has_no_links():
    """The namespace is setuptools' package-dir mapping, not links: a checkout without symlink support works."""
    links = [str(path.relative_to(ROOT)) for path in ROOT.rglob("*")
             if path.is_symlink() and ".venv" not in path.parts and ".cache" not in path.parts]
    assert not links, links


def _documented_defaults() -> dict[str, str]:
    """docs/sweeps.md's Defaults table as written: the row's key → its value."""
    page = (ROOT / "docs" / "sweeps.md").read_text()
    table = page[page.index("| default | value |"):]
    table = table[: table.index("\n\n")]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| (.+?) \| (.+?) \|$", table, re.MULTILINE)
            if m.group(1) != "default" and not m.group(1).startswith("-")}


def test_every_entry_point_takes_the_documented_defaults(tmp_path):
    """The API's signatures, a sweep config that leaves every key out, and `advsweep evaluate` each give the value
    docs/sweeps.md's Defaults table documents (a default changed in one place and not the others fails here), and
    that table is the one the defaults module renders."""
    import inspect

    from advsweep import defaults
    from advsweep.attacks import (
        auto_pgd,
        auto_pgd_targeted,
        basic_iterative_method,
        fab_targeted,
        fast_gradient_method,
        minimal_perturbation,
        projected_gradient_descent,
        square_attack,
    )
    from advsweep.attacks.gradient.foolbox_adapter import foolbox_attack
    from advsweep.defaults import render
    from advsweep.experiments.cli import build_parser
    from advsweep.experiments.config import parse_config

    documented = _documented_defaults()
    assert documented == dict(defaults.table()), "docs/sweeps.md's Defaults table is stale: regenerate its rows"
    checked = 0
    for function in (projected_gradient_descent, basic_iterative_method, fast_gradient_method, foolbox_attack):
        parameters = inspect.signature(function).parameters
        for key in ("norm", "loss", "restarts", "early_stop", "seed", "gradient"):
            if key in parameters:
                assert render(parameters[key].default) == documented[f"every attack: `{key}`"], (function, key)
                checked += 1
    assert checked >= 18
    minimal = inspect.signature(minimal_perturbation).parameters
    for key in ("norm", "steps", "loss"):
        assert render(minimal[key].default) == documented[f"`[minimal]` `{key}`"], key
    for function, member in ((auto_pgd, "apgd-ce"), (auto_pgd_targeted, "apgd-t"), (fab_targeted, "fab-t"),
                             (square_attack, "square")):
        parameters = inspect.signature(function).parameters
        for key in defaults.AUTOATTACK[member]:
            assert render(parameters[key].default) == documented[f"{member}: `{key}`"], (function.__name__, key)

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.keras").write_bytes(b"")
    config = parse_config({"name": "d", "models": [{"name": "m", "path": str(model)}],
                           "attacks": [{"name": "pgd"}], "epsilons": {"linf": [0.1]}}, base=tmp_path)
    for key, value in (("examples.count", config.examples), ("examples.selection", config.selection),
                       ("examples.seed", config.selection_seed), ("seed", config.seed),
                       ("chunk_size", config.chunk_size), ("gradient", config.gradient)):
        assert render(value) == documented[f"sweep: `{key}`"], key
    assert render(config.attacks[0].implementations) == documented["every attack: `implementations`"]
    assert config.attacks[0].params == {}  # a key left out is the attack's own default, not the runner's
    assert render(config.minimal.steps) == documented["`[minimal]` `steps`"]
    assert render(config.minimal.loss) == documented["`[minimal]` `loss`"]

    evaluate = build_parser().parse_args(["evaluate", "some-model"])
    assert render(evaluate.examples) == documented["`advsweep evaluate`: `--examples`"]
    assert render([float(e) for e in evaluate.eps.split(",")]) == documented["`advsweep evaluate`: `--eps`"]
    assert render(evaluate.attacks.split(",")) == documented["`advsweep evaluate`: `--attacks`"]
    assert render(evaluate.implementations.split(",")) == documented["every attack: `implementations`"]
