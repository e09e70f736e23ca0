"""Paired verdicts between models on the same examples (the interval against a textbook's value, McNemar against
SciPy's binomial test, both recomputed from a real run's records), the sample-size helper, and the RobustBench-style
entries of a run with AutoAttack."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from advsweep.experiments.cli import main
from advsweep.experiments.config import load_config
from advsweep.experiments.reporting.paired import examples_needed, holm, mcnemar_exact, paired_interval
from advsweep.experiments.reporting.report import load_run
from advsweep.experiments.reporting.summary import Z_95, wilson_interval
from advsweep.experiments.sweep import run_sweep


def test_paired_interval_is_newcombes_as_the_textbook_gives_it():
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8: complete response
    # before and after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]; Newcombe's
    # square-and-add interval: estimate −0.0621, 95% CI −0.1186 to −0.0046
    low, high = paired_interval(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    # swapping the two models mirrors the interval
    assert paired_interval(59, 16, 6, 80) == pytest.approx((-high, -low))


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    # two models on 300 examples: robust under both 0.80, under the first only 0.06, the second only 0.03
    rng = np.random.default_rng(0)
    probabilities = [0.80, 0.06, 0.03, 0.11]
    truth = probabilities[1] - probabilities[2]
    tables = rng.multinomial(300, probabilities, size=2000)
    covered = np.mean([low <= truth <= high for low, high in (paired_interval(*map(int, t)) for t in tables)])
    assert 0.935 <= covered <= 0.97, covered


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (0, 1), (6, 16), (16, 6), (3, 3), (0, 25), (40, 61), (700, 760)])
def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_examples(only_a, only_b):
    expected = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-9)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []


@pytest.mark.parametrize("accuracy, half_width", [(0.9, 0.01), (0.5, 0.01), (0.99, 0.005), (0.0, 0.02),
                                                  (0.7, 0.05)])
def test_examples_needed_is_the_first_sample_size_whose_wilson_interval_fits(accuracy, half_width):
    def half(n: int) -> float:
        low, high = wilson_interval(accuracy * n, n)  # type: ignore[arg-type]  (the proportion itself)
        return max(high - accuracy, accuracy - low)

    n = examples_needed(accuracy, half_width)
    assert half(n) <= half_width < half(n - 1)
    if accuracy == 0.5:  # the normal approximation's z² p (1 − p) / h², a little above Wilson's
        assert abs(n - Z_95**2 * 0.25 / half_width**2) < 10


def test_sample_size_command(capsys):
    assert main(["sample-size", "--accuracy", "90%", "--half-width", "1%"]) == 0
    assert capsys.readouterr().out.startswith(f"{examples_needed(0.9, 0.01)} examples")
    assert main(["sample-size", "--accuracy", "0.9", "--half-width", "0.6"]) == 2
    assert "--half-width must lie between 0 and 0.5" in capsys.readouterr().err


def test_paired_table_of_a_run_is_recomputed_from_its_records(finished_run, capsys):
    """The tiny run's two models on the same 20 examples: every comparison's counts, difference, interval and
    p-values follow from the per-example records alone."""
    paired = pd.read_csv(finished_run / "paired.csv")
    records = load_run(finished_run)[0]
    clean = records[records["attack"] == "clean"].set_index(["model", "example"])["correct"]
    attacked = records[(records["attack"] != "clean")]
    assert len(paired) > 0 and set(paired["model_a"]) | set(paired["model_b"]) == {"wong", "cnn"}
    p_values = []
    for row in paired.itertuples():
        if row.attack == "worst case":  # robust: correct when clean and under every attack of the run
            cells = attacked[(attacked["norm"] == row.norm) & np.isclose(attacked["eps"], row.eps)]
            robust = {}
            for m in (row.model_a, row.model_b):
                every = cells[cells["model"] == m].groupby("example")["correct"].all()
                robust[m] = every & clean.loc[m].loc[every.index].to_numpy()
        else:
            cells = attacked[(attacked["attack"] == row.attack) & (attacked["implementation"] == row.implementation)
                             & (attacked["iterate"] == row.iterate) & (attacked["norm"] == row.norm)
                             & np.isclose(attacked["eps"], row.eps)]
            robust = {m: cells[cells["model"] == m].set_index("example")["correct"].sort_index()
                      for m in (row.model_a, row.model_b)}
        a, b = robust[row.model_a].astype(bool), robust[row.model_b].astype(bool)
        assert list(a.index) == list(b.index) and row.examples == len(a) == 20
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        assert (row.only_a, row.only_b) == (only_a, only_b)
        assert row.difference == pytest.approx((only_a - only_b) / 20)
        assert row.robust_accuracy_a == pytest.approx(a.mean()) and row.robust_accuracy_b == pytest.approx(b.mean())
        both = int((a & b).sum())
        assert (row.ci_low, row.ci_high) == pytest.approx(paired_interval(both, only_a, only_b, 20 - both - only_a
                                                                          - only_b))
        expected = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b).pvalue
        assert row.p_value == pytest.approx(expected)
        p_values.append(row.p_value)
    assert paired["p_holm"].tolist() == pytest.approx(holm(p_values))
    assert (paired["holds"] == (paired["p_holm"] < 0.05)).all()
    text = (finished_run / "paired.md").read_text()
    assert text.count("\n| ") == len(paired) + 1  # a header and one line per comparison
    held = paired[paired["holds"]]
    assert ("No difference holds at 95% (Holm)." in text) == held.empty
    for row in held.itertuples():
        winner = row.model_a if row.difference > 0 else row.model_b
        assert f"- {winner} is more robust than" in text


def test_report_of_two_copies_of_a_run_finds_no_difference_between_a_model_and_itself(finished_run, tmp_path, capsys):
    second = tmp_path / "tiny-again" / "second"
    shutil.copytree(finished_run, second)
    output = tmp_path / "comparison"
    assert main(["report", str(finished_run), str(second), "--output", str(output)]) == 0
    paired = pd.read_csv(output / "paired.csv")
    same = paired[(paired["model_a"] == paired["model_b"])]
    assert len(same) > 0 and (same["only_a"] == 0).all() and (same["only_b"] == 0).all()
    assert (same["p_value"] == 1.0).all() and not same["holds"].any()
    assert "paired comparisons:" in capsys.readouterr().out
    assert not (output / "robustbench").exists()  # a side-by-side report is no single run's entry


def test_a_run_with_autoattack_writes_robustbench_style_entries(model_folders, tmp_path):
    config = tmp_path / "aa.toml"
    config.write_text(f'''
name = "aa-test"
[examples]
count = 12
selection = "first"
[[models]]
name = "cnn"
path = "{model_folders['cnn']}"
[epsilons]
linf = [0.0, 0.1]
[[attacks]]
name = "autoattack"
settings = {{ apgd-ce = {{ steps = 10 }}, apgd-t = {{ target_classes = 1, steps = 10 }}, fab-t = {{ target_classes = 1, steps = 10 }}, square = {{ queries = 30 }} }}
[minimal]
enabled = false
''')
    run_dir = run_sweep(load_config(config), tmp_path / "results")
    entry = json.loads((run_dir / "robustbench" / "mnist" / "Linf" / "cnn.json").read_text())
    summary = pd.read_csv(run_dir / "summary.csv")
    row = summary[(summary["attack"] == "autoattack-linf") & np.isclose(summary["eps"], 0.1)].iloc[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert entry["autoattack_acc"] == f"{100 * row['robust_accuracy']:.2f}"
    assert entry["autoattack_acc_ci95"] == [f"{100 * row['ci_low']:.2f}", f"{100 * row['ci_high']:.2f}"]
    # a model folder without a test-set accuracy (the fixture's): the clean accuracy of the examples attacked
    assert manifest["models"][0]["clean_test_accuracy"] is None and entry["clean_acc_on"] == "the 12 examples attacked"
    clean = summary[(summary["attack"] == "autoattack-linf") & (summary["eps"] == 0)]["robust_accuracy"].iloc[0]
    assert entry["clean_acc"] == f"{100 * clean:.2f}"
    assert (entry["dataset"], entry["threat_model"], entry["eps"], entry["n_examples"]) == ("mnist", "Linf", "0.1", 12)
    assert entry["autoattack_version"] == "custom" and entry["additional_data"] is False
    assert entry["number_forward_passes"] == 1 and entry["architecture"] == "Keras classifier"  # not trained here
    assert entry["advsweep"]["run_id"] == run_dir.name and entry["advsweep"]["source_sha256"]
    done = [json.loads(p.read_text()) for p in (run_dir / "done").glob("*.json") if "cost" in json.loads(p.read_text())]
    gradients = sum(c["gradient"] for d in done for c in d["cost"]["members"].values())
    assert entry["evaluations_per_example"]["gradient"] == pytest.approx(gradients / 12, abs=0.05)
    assert not math.isnan(float(entry["autoattack_acc"]))
