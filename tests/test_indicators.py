"""Indicators of attack failure (Pintor et al., NeurIPS 2022) computed from a run's records, recomputed from the
records alone, and the loss trace held to Pintor et al.'s own measure (the determinism check, which fires on a randomized model, is in test_checks_and_minimal.py)."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

from advsweep.attacks import predict_logits, run_attack
from advsweep.attacks.evaluation.checks import Check, check_incomplete_optimization
from advsweep.attacks.engine.programme import INCOMPLETE_THRESHOLD, LossTrace
from advsweep.experiments.config import ConfigError, load_config, parse_config
from advsweep.experiments.reporting.report import incomplete_optimization_checks, load_run, silent_success_checks
from advsweep.experiments.sweep import run_sweep


def _silent(run_dir):
    checks = json.loads((run_dir / "checks.json").read_text())
    return {c["name"]: c for c in checks if c["name"].startswith("no silent success")}


def _silent_expected(records, model):
    """Per implementation of the PGD, the examples per ε whose any-iterate point is fooled and whose point foolbox
    returned (its last iterate) is correct: what the silent-success check must count, from the records alone."""
    rows = records[(records["model"] == model) & (records["attack"] == "pgd-linf")]
    view = {(i, t): v.set_index(["eps", "example"])["correct"].astype(bool)
            for (i, t), v in rows.groupby(["implementation", "iterate"])}
    returned = view[("foolbox", "last")]
    return {implementation: (~view[(implementation, "any")] & returned.loc[view[(implementation, "any")].index])
            .groupby(level="eps").sum() for implementation in ("own", "foolbox")}


SILENT = {"own": "pgd-linf/own against foolbox's last iterate, linf", "foolbox": "pgd-linf/foolbox against last iterate, linf"}


def test_silent_success_counts_follow_from_the_records(finished_run):
    """The tiny run's PGD, own (any-iterate, early stop) and foolbox (any-iterate and the last iterate of the same
    path): the examples an any-iterate view counts fooled that foolbox's returned point leaves correct, per model
    and ε; and on the same records with one of foolbox's returned points made correct, the check fires and counts
    it (the tiny run's two small networks lose no adversarial; the VGG16's PGD-5 lost 2 of 20 at ε = 0.1)."""
    records = load_run(finished_run)[0]
    run = str(records["run"].iloc[0])
    assert _silent(finished_run), "the tiny run has PGD by both implementations: the indicator must be computed"
    rows = records[(records["model"] == "cnn") & (records["attack"] == "pgd-linf") & (records["eps"] > 0)
                   & (records["implementation"] == "foolbox")]
    eps, example = rows[(rows["iterate"] == "any") & ~rows["correct"].astype(bool)].iloc[0][["eps", "example"]]
    lost = rows.index[(rows["iterate"] == "last") & (rows["eps"] == eps) & (rows["example"] == example)]
    assert len(lost) == 1
    edited = records.copy()
    edited.loc[lost, "correct"] = True
    verdicts = []
    for model, frame in (("wong", records), ("cnn", records), ("cnn", edited)):
        checks = {c.name: c for c in silent_success_checks(frame, run, model)}
        if frame is records:
            assert checks == {c["name"]: Check(**{k: c[k] for k in ("name", "passed", "detail", "suggestion",
                                                                       "informational")})
                              for c in json.loads((finished_run / "checks.json").read_text())
                              if c["model"] == model and c["name"].startswith("no silent success")}
        for implementation, expected in _silent_expected(frame, model).items():
            check = checks[f"no silent success ({SILENT[implementation]})"]
            assert check.passed == (expected.sum() == 0) and check.informational
            for e, count in expected.items():
                assert f"{float(e)}: {int(count)}" in check.detail
            verdicts.append(check.passed)
    assert True in verdicts and False in verdicts  # both branches ran, the firing one on the edited records


def _pintor_incomplete(losses: np.ndarray) -> float:
    """Pintor et al.'s ``incomplete_optimization_indicator`` (pralab/IndicatorsOfAttackFailure,
    src/indicators/indicators.py), written out as their code computes it on the loss an attack minimises: rescaled to
    [0, 1] (unless its largest value is 0), made monotone (the running minimum), the range of its last 10 values."""
    loss = losses.astype(np.float64).copy()
    if loss.max() != 0:
        loss -= loss.min()
        loss /= loss.max()
    minimum = loss[0]
    for i in range(len(loss)):
        if loss[i] < minimum:
            minimum = loss[i]
        else:
            loss[i] = minimum
    last = loss[-min(len(loss), 10):]
    return float(last.max() - last.min())


def test_loss_trace_measures_what_pintor_et_al_measure():
    """The engine keeps no run's losses, only what the measure needs; on traces of every shape (rising, falling,
    noisy with late jumps, shorter than the window, constant) its value is theirs on the negated loss (their attacks
    minimise, the harness's ascend), and the verdict at 0.05 is theirs. Two cases differ, by intent: their code
    skips the rescaling when the loss's largest value is exactly 0 (meant for a loss that is 0 throughout; on a
    negated loss it would apply by sign), so the traces here are shifted off it; and a constant trace is 0/0 (NaN)
    in theirs and 0 in ours (a loss that never moved is not still rising)."""
    rng = np.random.default_rng(0)
    traces = [np.linspace(0, 1, 40), np.linspace(1, 0, 40), np.array([0.3, 0.9, 0.1]),
              np.r_[np.zeros(60), 1.0], np.r_[np.linspace(0, 1, 50), np.full(10, 1.0)]]
    traces += [np.cumsum(rng.normal(0.02, 1.0, int(rng.integers(2, 120)))) for _ in range(200)]
    traces = [t + 5.0 - t.min() for t in traces] + [np.full(30, 2.5), np.array([4.0])]  # the last two: constant
    trace = LossTrace(len(traces))
    everyone = np.arange(len(traces))
    trace.reset(everyone)
    for step in range(max(len(t) for t in traces)):
        running = np.array([i for i, t in enumerate(traces) if step < len(t)])
        trace.add(running, np.array([traces[i][step] for i in running], np.float32))
    ours = trace.rise(everyone)
    theirs = np.array([_pintor_incomplete(-t.astype(np.float32)) for t in traces[:-2]] + [0.0, 0.0])
    assert not np.isnan(theirs).any()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_array_equal(ours > INCOMPLETE_THRESHOLD, theirs > INCOMPLETE_THRESHOLD)
    assert 0.0 < (ours > INCOMPLETE_THRESHOLD).mean() < 1.0  # the random traces fall on both sides
    trace.reset(everyone[:3])  # a new run starts from nothing
    assert np.isnan(trace.rise(everyone[:3])).all()


def test_incomplete_optimization_fires_for_too_few_steps_and_not_for_enough(small_cnn, test_images):
    """PGD of 5 steps stops while the loss still rises on the examples it leaves robust; PGD of 40 steps on the same
    examples has converged on every one (measured on the trained small CNN: 0 of 93 robust examples at ε = 0.05,
    the largest measure 0.02); fooled examples carry no measure."""
    x, y = test_images[0][:40], test_images[1][:40]
    short = run_attack("pgd", small_cnn, x, y, [0.05], steps=5, rel_stepsize=0.05, loss="margin")
    enough = run_attack("pgd", small_cnn, x, y, [0.05], steps=40, rel_stepsize=0.0625, loss="margin")
    for result in (short, enough):
        assert result.loss_rise is not None and not np.isnan(result.loss_rise).any()
    robust_short, robust_enough = ~short.success[0], ~enough.success[0]
    assert robust_short.sum() >= 20 and robust_enough.sum() >= 20
    assert (short.loss_rise[0][robust_short] > INCOMPLETE_THRESHOLD).mean() > 0.9
    assert (enough.loss_rise[0][robust_enough] <= INCOMPLETE_THRESHOLD).all()
    check = check_incomplete_optimization(
        {0.05: np.flatnonzero(robust_short & (short.loss_rise[0] > INCOMPLETE_THRESHOLD)).tolist()},
        {0.05: int(robust_short.sum())})
    assert not check.passed and not check.informational and check.verdict == "FAIL"
    assert check_incomplete_optimization({0.05: []}, {0.05: int(robust_enough.sum())}).passed


def test_an_unfinished_run_that_another_attack_settles_is_a_note():
    """Incomplete optimization counts only the flagged examples the rest of the evaluation leaves open: the same
    flagged examples fail the check when nothing else settles them, and are a note, still named, when another
    attack fooled them or left them robust after a converged run."""
    open_check = check_incomplete_optimization({0.1: [3, 5, 8]}, {0.1: 10})
    assert open_check.verdict == "FAIL"
    settled = check_incomplete_optimization({0.1: []}, {0.1: 10}, closed={0.1: [3, 5, 8]})
    assert settled.verdict == "note" and "settled by another attack" in settled.detail and "{0.1: 3}" in settled.detail
    partly = check_incomplete_optimization({0.1: [3, 5]}, {0.1: 10}, closed={0.1: [8]})
    assert partly.verdict == "FAIL" and "'2 of 10'" in partly.detail


def test_a_note_stays_a_note_when_an_attacks_chunks_are_merged():
    """The report merges an attack's per-chunk checks into one: notes in every chunk give a note, not a failure
    (the merge once dropped the distinction: "6 failed" where 4 were notes); one real failure gives a failure."""
    from advsweep.experiments.reporting.report import merge_chunks

    note = {"passed": False, "informational": True, "detail": "a note", "suggestion": "s"}
    failure = {"passed": False, "informational": False, "detail": "a failure", "suggestion": "t"}
    passed = {"passed": True, "informational": False, "detail": "fine", "suggestion": ""}
    assert merge_chunks("c", [note, passed, note]) | {} == {
        "name": "c", "passed": False, "informational": True, "detail": "3 chunk(s); a note", "suggestion": "s"}
    merged = merge_chunks("c", [note, failure])
    assert not merged["passed"] and not merged["informational"] and merged["detail"].endswith("a failure")
    assert merge_chunks("c", [passed, passed])["passed"]


def test_incomplete_optimization_counts_follow_from_the_records(finished_run):
    """The tiny run's PGD-5 (own engine): per model and ε, the check counts the robust examples whose record says
    the loss was still rising, names them, and fails (5 steps: every example whose loss rose is flagged); FGSM and
    foolbox's PGD carry no trace and get no check, and neither does a model the attack left no robust example of
    (shown on the same records with the small CNN's robust rows fooled: their measures NaN)."""
    records = load_run(finished_run)[0]
    checks = [c for c in json.loads((finished_run / "checks.json").read_text())
              if c["name"].startswith("optimization complete")]
    assert {c["name"] for c in checks} == {"optimization complete (pgd-linf/own, linf)"}
    checked = []
    for model in ("wong", "cnn"):
        rows = records[(records["model"] == model) & (records["attack"] == "pgd-linf")
                       & (records["implementation"] == "own") & (records["iterate"] == "any")]
        assert rows.loc[rows["eps"] == 0, "loss_rise"].isna().all()  # no run at ε = 0
        rows = rows[rows["eps"] > 0]
        assert rows.loc[~rows["correct"], "loss_rise"].isna().all()  # fooled: no measure
        assert rows.loc[rows["correct"], "loss_rise"].notna().all()
        others = records[(records["model"] == model) & (records["attack"] != "clean") & (records["eps"] > 0)
                         & ((records["attack"] != "pgd-linf") | (records["implementation"] != "own"))]
        settled = set(zip(*others.loc[~others["correct"] | (others["loss_rise"] <= INCOMPLETE_THRESHOLD),
                                      ["eps", "example"]].to_numpy().T))
        rows = rows[[(e, x) not in settled for e, x in zip(rows["eps"], rows["example"])]]  # the open ones
        flagged = rows[rows["correct"] & (rows["loss_rise"] > INCOMPLETE_THRESHOLD)]
        check = [c for c in checks if c["model"] == model]
        if not rows["correct"].any():
            assert not check
            continue
        check, _ = check[0], checked.append(model)
        assert flagged.shape[0] > 0 and not check["passed"]
        for eps, cell in rows.groupby("eps"):
            count = int((cell["correct"] & (cell["loss_rise"] > INCOMPLETE_THRESHOLD)).sum())
            assert f"{float(eps)}: '{count} of " in check["detail"]
        assert str(int(flagged["example"].iloc[0])) in check["detail"]
    assert checked == ["wong", "cnn"]
    # a model the attack left no robust example of gets no check (the VGG16 of an earlier tiny run): the same records
    # with every robust own-PGD row of the small CNN fooled
    edited = records.copy()
    own = ((edited["model"] == "cnn") & (edited["attack"] == "pgd-linf") & (edited["implementation"] == "own")
           & (edited["eps"] > 0))
    edited.loc[own, "correct"], edited.loc[own, "loss_rise"] = False, np.nan
    run = str(records["run"].iloc[0])
    assert incomplete_optimization_checks(records, run, "cnn")
    assert not incomplete_optimization_checks(edited, run, "cnn")
    other = records[(records["attack"] == "fgsm") | (records["implementation"] == "foolbox")]
    assert other["loss_rise"].isna().all()


def test_a_transfer_attack_evaluates_the_surrogates_adversarials_and_reports_transfer_failure(
        model_folders, small_cnn, wong_cnn, test_images, tmp_path, transfer_config_text):
    """PGD found on the small CNN (the surrogate) and evaluated on Wong's network: the records' outcomes are its
    classes of exactly the points the same PGD finds on the CNN alone (same seed, same examples), `found_by` says
    where those points fooled the CNN, no unit runs the transfer on the surrogate itself, and the transfer-failure
    check counts the points that fooled the CNN and leave Wong's network correct, from the records."""
    config = tmp_path / "transfer.toml"
    config.write_text(transfer_config_text(model_folders, copy=True, surrogate="cnn"))
    run = run_sweep(load_config(config), tmp_path / "results")
    records = load_run(run)[0]
    label = "pgd-linf-from-cnn"
    assert set(records.loc[records["attack"] == label, "model"]) == {"wong", "cnn_copy"}
    copy = {c["model"]: c for c in json.loads((run / "checks.json").read_text())
            if c["name"].startswith("adversarials transfer from the surrogate")}["cnn_copy"]
    assert copy["passed"], copy["detail"]  # the same weights: every adversarial of the surrogate transfers
    rows = records[(records["attack"] == label) & (records["model"] == "wong")].sort_values(["eps", "example"])
    x, y = test_images[0][:20], test_images[1][:20]
    direct = run_attack("pgd", small_cnn, x, y, [0.0, 0.1, 0.2], steps=5, rel_stepsize=0.3, seed=0,
                        example_ids=np.arange(20))
    for k, eps in enumerate((0.0, 0.1, 0.2)):
        cell = rows[rows["eps"] == eps]
        np.testing.assert_array_equal(cell["found_by"].to_numpy() == "surrogate", direct.success[k])
        on_wong = predict_logits(wong_cnn, direct.x_adv[k], example_ids=np.arange(20)).argmax(-1)
        np.testing.assert_array_equal(cell["prediction"].to_numpy(), on_wong)
    checks = [c for c in json.loads((run / "checks.json").read_text())
              if c["name"].startswith("adversarials transfer from the surrogate") and c["model"] == "wong"]
    positive = rows[rows["eps"] > 0]
    failed = positive[(positive["found_by"] == "surrogate") & positive["correct"]]
    for eps, cell in positive.groupby("eps"):
        count = int(((cell["found_by"] == "surrogate") & cell["correct"]).sum())
        assert f"{float(eps)}: '{count} of {int((cell['found_by'] == 'surrogate').sum())}'" in checks[0]["detail"]
    assert not failed.empty and not checks[0]["passed"]  # measured: some of the CNN's adversarials leave Wong's network correct


def test_a_transfer_attack_names_a_model_of_the_sweep(model_folders, tmp_path, transfer_config_text):
    """A surrogate that is not a model of the sweep, or a sweep with no other model to evaluate on, is refused
    before any work, naming the key."""
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.surrogate.*names no model of this sweep.*wong, cnn"):
        parse_config(tomllib.loads(transfer_config_text(model_folders, surrogate="resnet")), base=tmp_path)
    alone = transfer_config_text(model_folders, surrogate="cnn")
    alone = alone.replace(f'[[models]]\nname = "wong"\npath = "{model_folders["wong"]}"\n', "")
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.surrogate.*no other"):
        parse_config(tomllib.loads(alone), base=tmp_path)
