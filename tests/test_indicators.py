"""Indicators of attack failure (Pintor et al., NeurIPS 2022) computed from a run's records: each recomputed from
the records alone, and each firing on an evaluation built to trigger it."""

from __future__ import annotations

import json

import pandas as pd

from advsweep.experiments.config import load_config
from advsweep.experiments.report import load_run
from advsweep.experiments.sweep import run_sweep


def _silent(run_dir):
    checks = json.loads((run_dir / "checks.json").read_text())
    return {c["name"]: c for c in checks if c["name"].startswith("no silent success")}


def test_silent_success_counts_follow_from_the_records(finished_run):
    """The tiny run's PGD, own (any-iterate, early stop) and foolbox (the last iterate of the same path): the
    examples own PGD fooled that foolbox's returned point leaves correct, per model and ε."""
    records = load_run(finished_run)[0]
    silent = _silent(finished_run)
    assert silent, "the tiny run has PGD by both implementations: the indicator must be computed"
    for model in ("vgg16", "cnn"):
        rows = records[(records["model"] == model) & (records["attack"] == "pgd")]
        own = rows[rows["implementation"] == "own"].set_index(["eps", "example"])["correct"]
        foolbox = rows[rows["implementation"] == "foolbox"].set_index(["eps", "example"])["correct"]
        expected = ((~own.astype(bool)) & foolbox.loc[own.index].astype(bool)).groupby(level="eps").sum()
        check = [c for c in json.loads((finished_run / "checks.json").read_text()) if c["model"] == model
                 and c["name"] == "no silent success (pgd/own against foolbox's last iterate, linf)"][0]
        assert check["passed"] == (expected.sum() == 0) and check["informational"]
        for eps, count in expected.items():
            assert f"{float(eps)}: {int(count)}" in check["detail"]


def test_silent_success_fires_when_the_last_iterate_oscillates(model_folders, tmp_path):
    """PGD with steps of 2.5 ε: every step jumps across the ε-box, the path visits adversarials that the last
    iterate leaves again."""
    config = tmp_path / "oscillating.toml"
    config.write_text(f'''
name = "oscillating"
[examples]
count = 40
selection = "first"
[[models]]
name = "cnn"
path = "{model_folders['cnn']}"
[epsilons]
linf = [0.1]
[[attacks]]
name = "pgd"
steps = 10
rel_stepsize = 2.5
random_start = false
implementations = ["own", "foolbox"]
[minimal]
enabled = false
''')
    run_dir = run_sweep(load_config(config), tmp_path / "results")
    check = _silent(run_dir)["no silent success (pgd/own against foolbox's last iterate, linf)"]
    assert not check["passed"] and check["informational"] and "the last iterate loses adversarials" in \
        check["suggestion"]
    summary = pd.read_csv(run_dir / "summary.csv")
    own = summary[(summary["implementation"] == "own") & (summary["eps"] == 0.1)]["robust_accuracy"].iloc[0]
    foolbox = summary[(summary["implementation"] == "foolbox") & (summary["eps"] == 0.1)]["robust_accuracy"].iloc[0]
    assert foolbox > own  # the returned point overstates robustness; the any-iterate row does not
