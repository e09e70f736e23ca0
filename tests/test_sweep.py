"""The sweep runner on the real models: run folder contents, numbers traceable to records, report, resume,
and bad configs refused before any work with exit status 2 and nothing left behind."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from advsweep.experiments.cli import main
from advsweep.experiments.config import SweepError, load_config, parse_config, select_examples
from advsweep.experiments.reporting.records import COLUMNS
from advsweep.experiments.reporting.summary import WORST_CASE, wilson_interval
from advsweep.experiments.sweep import prepare_models, run_identity, run_sweep
from advsweep.experiments.units import execution_plan, plan, source_digest, unit_is_done
from advsweep.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def _summary_without_run(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "summary.csv").drop(columns=["run"])


# --------------------------------------------------------------------------------------------
# the run folder


def test_run_folder_has_records_tables_figures_checks_and_manifest(finished_run, sweep_config):
    for name in ("config.resolved.json", "manifest.json", "examples.csv", "summary.csv", "summary.md", "summary.tex",
                 "checks.json", "checks.md", "robustness_curve.csv"):
        assert (finished_run / name).is_file(), name
    for stem in ("accuracy_vs_eps", "robustness_curve", "adversarial_grid_wong", "adversarial_grid_cnn"):
        assert (finished_run / "figures" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (finished_run / "figures" / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    code = manifest["code"]
    assert code["source_sha256"] == source_digest()  # the sources that ran, as the run id vouches for them
    assert code["advsweep"] == metadata.version("advsweep")
    if (ROOT / ".git").exists():  # a checkout: the commit it was at
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert code["git_commit"] == head and isinstance(code["git_dirty"], bool)
    # the plans of model calls the records were made under: each model's, as measured on this machine
    from advsweep.attacks.engine.plan import plan_of

    models = {m.spec.name: m.model for m in prepare_models(load_config(sweep_config), finished_run.parents[1] / "models")}
    assert manifest["execution"] == {"device": "cpu", "plans": {name: plan_of(model).to_dict()
                                                                for name, model in models.items()}}
    assert {m["name"] for m in manifest["models"]} == {"wong", "cnn"}
    assert all(len(m["model_keras_sha256"]) == 64 for m in manifest["models"])
    assert manifest["assets"][0]["name"] == "mnist" and len(manifest["assets"][0]["content_sha256"]) == 64
    assert set(manifest["unit_seconds"]) == {u.key for u in plan(load_config(sweep_config))}
    assert "tensorflow" in manifest["versions"] and manifest["seeds"]["attacks"] == 0
    assert not [p for p in finished_run.rglob(".*") if p.is_file()]  # no temporary file left behind


def test_records_have_one_typed_row_per_example_cell_and_eps(finished_run):
    records = pd.concat([pd.read_parquet(p) for p in (finished_run / "records").glob("*/*--chunk-*.parquet")])
    assert list(records.columns) == list(COLUMNS)
    attacked = records[records["attack"] != "clean"]
    # 2 models × (FGSM × 2 implementations + PGD own any-iterate + PGD foolbox any and last) × 3 ε × 20
    assert len(attacked) == 2 * 5 * 3 * 20
    assert attacked.groupby(["model", "attack", "implementation", "iterate", "eps"]).size().eq(20).all()
    views = attacked.groupby(["attack", "implementation"])["iterate"].unique().map(sorted).to_dict()
    assert views == {("fgsm", "foolbox"): ["single"], ("fgsm", "own"): ["single"],
                     ("pgd-linf", "foolbox"): ["any", "last"], ("pgd-linf", "own"): ["any"]}
    assert sorted(records.loc[records["attack"] == "clean", "model"].value_counts()) == [20, 20]
    assert (attacked["linf"] <= attacked["eps"] + 1e-6).all()
    assert ((attacked["margin"] > 0) == attacked["correct"]).all()
    selected = pd.read_csv(finished_run / "examples.csv")
    assert set(attacked["example"]) == set(selected["example"])
    assert np.bincount(selected["label"], minlength=10).tolist() == [2] * 10  # class-balanced


def test_every_summary_number_is_recomputed_from_the_records(finished_run):
    records = pd.concat([pd.read_parquet(p) for p in (finished_run / "records").glob("*/*--chunk-*.parquet")])
    summary = pd.read_csv(finished_run / "summary.csv")
    clean = records[records["attack"] == "clean"].set_index(["model", "example"])["correct"]
    for row in summary.itertuples():
        if row.attack == WORST_CASE:
            cell = records[(records["model"] == row.model) & (records["eps"] == row.eps) & (records["attack"] != "clean")]
            robust = cell.groupby("example")["correct"].all() & clean.loc[row.model]
            assert row.robust == int(robust.sum())
            continue
        cell = records[(records["model"] == row.model) & (records["attack"] == row.attack)
                       & (records["implementation"] == row.implementation) & (records["iterate"] == row.iterate)
                       & (records["eps"] == row.eps)]
        assert row.examples == len(cell) == 20
        assert row.robust_accuracy == pytest.approx(cell["correct"].mean(), abs=1e-12)
        initially = cell[clean.loc[row.model].loc[cell["example"]].to_numpy()]
        if len(initially):
            assert row.attack_success_rate == pytest.approx((~initially["correct"]).mean(), abs=1e-12)
        assert row.ci_low <= row.robust_accuracy <= row.ci_high


def test_worst_case_is_no_weaker_than_any_attack(finished_run):
    summary = pd.read_csv(finished_run / "summary.csv")
    for (model, eps), group in summary.groupby(["model", "eps"]):
        worst = group.loc[group["attack"] == WORST_CASE, "robust_accuracy"].item()
        assert worst <= group.loc[group["attack"] != WORST_CASE, "robust_accuracy"].min() + 1e-12


def test_wilson_interval_hand_computed():
    # n = 20, 0 or 20 successes: the bounds are z² / (n + z²) and n / (n + z²)
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 20) == (0.0, pytest.approx(z2 / (20 + z2)))
    assert wilson_interval(20, 20) == (pytest.approx(20 / (20 + z2)), 1.0)
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2365930, abs=1e-6) and high == pytest.approx(0.7634070, abs=1e-6)


def test_tables_are_ready_to_paste(finished_run):
    markdown = (finished_run / "summary.md").read_text()
    assert "| model | attack | implementation | iterate | ε = 0 | ε = 0.1 | ε = 0.2 |" in markdown
    assert "**worst case**" in markdown
    latex = (finished_run / "summary.tex").read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\textbf{worst case}"):
        assert command in latex
    checks = json.loads((finished_run / "checks.json").read_text())
    names = {c["name"] for c in checks}
    assert {"model returns logits", "input gradients are not zero", "unbounded attack wins",
            "cross-entropy does not saturate"} <= names
    assert any(n.startswith("robustness curve not above the worst case") for n in names)
    assert any(n.startswith("PGD at least as strong as FGSM") for n in names)
    assert any(n.startswith("accuracy falls with ε") for n in names)


def test_same_config_and_seeds_give_the_same_run_id(finished_run, sweep_config):
    """Same config, models and code: the finished run is found and nothing is recomputed. (That a second run
    gives the same numbers is tests/test_determinism.py's byte-identical records, and the resumed run below.)"""
    done = {p.name: p.stat().st_mtime_ns for p in (finished_run / "done").iterdir()}
    again = run_sweep(load_config(sweep_config), finished_run.parents[1])
    assert again == finished_run
    assert {p.name: p.stat().st_mtime_ns for p in (finished_run / "done").iterdir()} == done


def test_a_run_is_resumed_only_on_the_kind_of_device_that_made_it(finished_run, sweep_config, monkeypatch):
    """A GPU makes other records than a CPU (other kernels, other plans of model calls): a sweep on a GPU gets another
    run id, and resuming this CPU run there by its id is refused in one line before anything is written."""
    import advsweep.attacks.engine.core as core

    config = load_config(sweep_config)
    models = prepare_models(config, finished_run.parents[1] / "models")
    code = json.loads((finished_run / "manifest.json").read_text())["code"]
    on_gpu = execution_plan({m.spec.name: m.model for m in models}, "gpu")
    unmeasured = {"gradient": {"rows": 256, "free": False, "sizes": [256]},
                  "forward": {"rows": 256, "free": False, "sizes": [256]},
                  "gradient_path": "plain"}  # planned from a CPU: the fixed plan of a device not measured here
    assert on_gpu == {"device": "gpu", "plans": {"wong": unmeasured, "cnn": unmeasured}}
    assert run_identity(config, models, code, on_gpu) != finished_run.name
    assert run_identity(config, models, code, execution_plan({m.spec.name: m.model for m in models}, "cpu")) == \
        finished_run.name

    before = {p: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file()}
    monkeypatch.setattr(core, "device_kind", lambda: "gpu")
    import advsweep.attacks.engine.plan as planning  # this CPU cannot measure a GPU's plan: the fixed one, not kept

    monkeypatch.setattr(planning, "measure_plan", lambda model: planning.UNMEASURED)
    monkeypatch.setattr(planning, "_write", lambda path, value: None)
    with pytest.raises(SweepError, match=r"holds records made on cpu \(rows per gradient/forward call: wong \d+/\d+, "
                                         r"cnn \d+/\d+\); this sweep would make them on gpu \(rows per gradient/forward "
                                         r"call: wong 256/256, cnn 256/256\)"):
        run_sweep(config, finished_run.parents[1], run_id=finished_run.name)
    assert {p: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file()} == before


def test_a_run_folder_is_resumed_only_by_what_made_it(tmp_path):
    """`--run-id` names a folder: another config, model, code or device plan than the one recorded is refused, naming
    what differs; so is a folder whose manifest records nothing (an older advsweep's)."""
    from advsweep.experiments.sweep import check_resumable

    execution = {"device": "cpu", "plans": {}}
    parts = {"config": "c", "models": "m", "code": "x", "execution": "e"}
    check_resumable(tmp_path, {"identity": dict(parts)}, parts, execution)  # the same: resumed
    with pytest.raises(SweepError, match="made with another model and another version of the attack and model code than this sweep's"):
        check_resumable(tmp_path, {"identity": {**parts, "code": "y", "models": "n"}}, parts, execution)
    with pytest.raises(SweepError, match="made with another config than this sweep's"):
        check_resumable(tmp_path, {"identity": {**parts, "config": "d"}}, parts, execution)
    with pytest.raises(SweepError, match="older advsweep that did not record what made its records"):
        check_resumable(tmp_path, {"run_id": "old"}, parts, execution)


def test_a_ray_worker_on_another_kind_of_device_refuses_the_unit():
    """The Ray side of the same rule: a worker whose TensorFlow runs on another device kind than the run's plan
    refuses before computing anything."""
    from advsweep.attacks.engine.core import device_kind
    from advsweep.experiments.cluster import _prepare_worker

    here = device_kind()
    other = "gpu" if here == "cpu" else "cpu"
    with pytest.raises(RuntimeError, match=f"runs TensorFlow on {here}, the run's records are made on {other}"):
        _prepare_worker({"cpus": 1, "source_sha256": source_digest(), "device": other})


# --------------------------------------------------------------------------------------------
# report


def test_report_rebuilds_the_same_tables_from_records_alone(finished_run, tmp_path):
    copy = tmp_path / "tiny" / finished_run.name
    shutil.copytree(finished_run, copy)
    expected = (copy / "summary.csv").read_bytes()
    for name in ("summary.csv", "summary.md", "summary.tex", "checks.json"):
        (copy / name).unlink()
    shutil.rmtree(copy / "figures")
    assert main(["report", str(copy)]) == 0
    assert (copy / "summary.csv").read_bytes() == expected
    assert (copy / "figures" / "accuracy_vs_eps.pdf").is_file()


def test_report_puts_runs_side_by_side(finished_run, tmp_path):
    second = tmp_path / "tiny-again" / "second"
    shutil.copytree(finished_run, second)
    output = tmp_path / "comparison"
    assert main(["report", str(finished_run), str(second), "--output", str(output)]) == 0
    summary = pd.read_csv(output / "summary.csv")
    assert summary["run"].nunique() == 2
    assert "| run | model | attack |" in (output / "summary.md").read_text()
    assert (output / "figures" / "accuracy_vs_eps.png").is_file()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# nothing lost


@pytest.mark.slow  # 70 s: end to end (a sweep killed and resumed), run by CI's slow pass
def test_interrupted_sweep_resumes_to_the_same_summary(finished_run, sweep_config, tmp_path):
    config = load_config(sweep_config)
    finished: list[str] = []

    def interrupt_after_five(unit):
        finished.append(unit.key)
        if len(finished) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, run_id="interrupted", on_unit_done=interrupt_after_five)
    run_dir = tmp_path / "tiny" / "interrupted"
    assert not (run_dir / "summary.csv").exists()
    stamps = {key: json.loads((run_dir / f"done/{key.replace('/', '__')}.json").read_text())["finished"]
              for key in finished}
    # a half-written record of the next unit, as a kill mid-write would leave under its temporary name
    (run_dir / "records" / "wong" / ".fgsm--foolbox--chunk-0000.parquet.junk.parquet").write_bytes(b"PAR1 half")
    run_sweep(config, tmp_path, run_id="interrupted")
    for key, stamp in stamps.items():  # finished units were not run again
        assert json.loads((run_dir / f"done/{key.replace('/', '__')}.json").read_text())["finished"] == stamp
    pd.testing.assert_frame_equal(_summary_without_run(run_dir), _summary_without_run(finished_run))


def test_a_damaged_record_file_is_recomputed(finished_run, sweep_config, tmp_path):
    copy = tmp_path / "tiny" / "damaged"
    shutil.copytree(finished_run, copy)
    units = plan(load_config(sweep_config))
    victim = next(u for u in units if u.key == "cnn/pgd-linf/own/chunk-0000")
    record = json.loads((copy / victim.done_path).read_text())
    path = copy / next(iter(record["files"]))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert not unit_is_done(copy, victim)
    run_sweep(load_config(sweep_config), tmp_path, run_id="damaged")
    assert unit_is_done(copy, victim)
    pd.testing.assert_frame_equal(_summary_without_run(copy), _summary_without_run(finished_run))


@pytest.mark.slow
def test_killed_sweep_process_resumes_to_the_same_summary(finished_run, sweep_config, sweep_killed_after, tmp_path):
    """SIGKILL the real command mid-sweep (no clean-up runs), then run the same command again."""
    command, env = sweep_killed_after([str(sweep_config), "--run-id", "killed"], tmp_path,
                                      tmp_path / "tiny" / "killed" / "done", 8)
    assert not (tmp_path / "tiny" / "killed" / "summary.csv").exists()
    finished = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "robust accuracy" in finished.stdout
    pd.testing.assert_frame_equal(_summary_without_run(tmp_path / "tiny" / "killed"), _summary_without_run(finished_run))
    # to the byte: fresh processes that trained nothing run the same (deterministic) kernels as this one
    for path in sorted(finished_run.glob("records/*/*.parquet")):
        again = tmp_path / "tiny" / "killed" / path.relative_to(finished_run)
        assert again.read_bytes() == path.read_bytes(), path.name


# --------------------------------------------------------------------------------------------
# bad configs

def _as_autoattack(text: str, line: str) -> str:
    """The config with its PGD table replaced by an ``autoattack`` table with ``line``."""
    return text.replace('name = "pgd"\nsteps = 5\nrel_stepsize = 0.3', f'name = "autoattack"\n{line}')


BAD_CONFIGS = [
    ("malformed-toml", lambda t: t.replace("[[attacks]]", "[[attacks]", 1), "is not valid TOML"),
    ("unknown-top-key", lambda t: "nmae = 3\n" + t, r"unknown config key\(s\) `nmae`; allowed: .*examples"),
    ("unknown-attack", lambda t: t.replace('name = "pgd"', 'name = "cw"'),
     r"`attacks\[1\].name`: unknown attack 'cw'; known attacks: apgd-ce, apgd-dlr, apgd-t, autoattack, bim, "
     r"fab, fab-t, fgm, fgsm, pgd, square"),
    ("unknown-attack-parameter", lambda t: t.replace("steps = 5\n", "stpes = 5\n", 1),
     r"unknown config key\(s\) `attacks\[1\].stpes`; allowed in `attacks\[1\]`: .*steps"),
    ("eps-out-of-range", lambda t: t.replace("linf = [0.1, 0.2]", "linf = [0.1, 1.5]"),
     r"`epsilons.linf`: .*1.5"),
    ("negative-eps", lambda t: t.replace("linf = [0.1, 0.2]", "linf = [-0.1, 0.2]"), r"`epsilons.linf`"),
    ("missing-model-file", lambda t: t.replace('name = "cnn"\npath = "', 'name = "cnn"\npath = "/nonexistent'),
     r"`models\[1\].path`: /nonexistent.* is not a model file: give a .keras file, a folder with model.keras"),
    ("unknown-model-kind", lambda t: t.replace('name = "cnn"\npath =', 'name = "cnn"\ntrain = {kind = "resnet"}\n#'),
     r"`models\[1\].train.kind`: must be one of 'vgg16', 'small_cnn', 'madry_cnn', 'trades_cnn', 'wong_cnn', 'vgg16_scratch'. Received: 'resnet'"),
    ("bad-implementation", lambda t: t.replace('name = "fgsm"', 'name = "fgsm"\nimplementations = ["cleverhans"]'),
     r"`attacks\[0\].implementations`: must be one of 'own', 'foolbox'"),
    ("missing-name", lambda t: t.replace('name = "tiny"', ""), r"config key `name`"),
    ("unbalanced-count", lambda t: t.replace("count = 20", "count = 25"), r"`examples.count`: must be a multiple of 10"),
    ("duplicate-label", lambda t: t.replace('name = "pgd"', 'name = "pgd"\nlabel = "fgsm"'),
     r"`attacks`: names must be unique; repeated: \['fgsm'\]"),
    ("bad-selection", lambda t: t.replace('selection = "balanced"', 'selection = "random"'),
     r"`examples.selection`: must be one of 'balanced', 'first'. Received: 'random'"),
    # attack hyper-parameters are checked when the config is read, not when their unit runs
    ("zero-steps", lambda t: t.replace("steps = 5\n", "steps = 0\n", 1),
     r"`attacks\[1\].steps`: must be an integer ≥ 1. Received: 0"),
    ("string-stepsize", lambda t: t.replace("rel_stepsize = 0.3", 'rel_stepsize = "big"'),
     r"`attacks\[1\].rel_stepsize`: must be a positive finite number. Received: 'big'"),
    ("negative-restarts", lambda t: t.replace("rel_stepsize = 0.3", "rel_stepsize = 0.3\nrestarts = -2"),
     r"`attacks\[1\].restarts`: must be an integer ≥ 1. Received: -2"),
    ("unknown-loss", lambda t: t.replace("rel_stepsize = 0.3", 'rel_stepsize = 0.3\nloss = "hinge"'),
     r"`attacks\[1\].loss`: must be one of 'ce', 'margin' .*Received: 'hinge'"),
    ("string-early-stop", lambda t: t.replace("rel_stepsize = 0.3", 'rel_stepsize = 0.3\nearly_stop = "yes"'),
     r"`attacks\[1\].early_stop`: must be true or false. Received: 'yes'"),
    ("negative-seed", lambda t: t.replace("seed = 0\n", "seed = -1\n", 1), r"`seed`: must be an integer ≥ 0"),
    ("float-chunk-size", lambda t: t.replace("chunk_size = 20", "chunk_size = 20.5"),
     r"`chunk_size`: must be an integer from 1 to 10000. Received: 20.5"),
    # AutoAttack's attacks exist only in the own implementation; the ensemble's members and settings are checked
    ("autoattack-by-foolbox", lambda t: _as_autoattack(t, 'implementations = ["foolbox"]'),
     r"`attacks\[1\].implementations`: attack 'autoattack' has only the own implementation"),
    ("autoattack-unknown-member", lambda t: _as_autoattack(t, 'attacks = ["apgd-ce", "cw"]'),
     r"`attacks\[1\].attacks`: must be a list of distinct names from \['apgd-ce', 'apgd-dlr', 'apgd-t', 'fab-t', "
     r"'fab', 'square'\]"),
    ("autoattack-unknown-version", lambda t: _as_autoattack(t, 'version = "plus-plus"'),
     r"`attacks\[1\].version`: must be one of 'standard', 'plus', 'rand' \('rand' for a model whose logits change "
     r"between "
     r"two calls\). Received: 'plus-plus'"),
    ("autoattack-bad-setting", lambda t: _as_autoattack(t, "settings = { square = { queries = 0 } }"),
     r"`attacks\[1\].settings.square.queries`: must be an integer ≥ 1. Received: 0"),
    # the L1 threat model is AutoAttack's: PGD refuses it by name, and l1-APGD's schedule of radii is refused
    # outside it
    ("pgd-l1", lambda t: t.replace("linf = [0.1, 0.2]", "linf = [0.1, 0.2]\nl1 = [5.0]").replace(
        "rel_stepsize = 0.3", 'rel_stepsize = 0.3\nnorm = "l1"'),
     r"`attacks\[1\].norm`: attack 'pgd' takes linf and l2; the L1 threat model is taken by apgd-ce, apgd-dlr, "
     r"apgd-t, fab-t, fab, square, autoattack"),
    ("large-radii-linf", lambda t: _as_autoattack(t, "settings = { apgd-ce = { large_radii = true } }"),
     r"`attacks\[1\].settings.apgd-ce.large_radii`: must be False outside the L1 threat model \(it is l1-APGD's "
     r"schedule of radii 3ε, 2ε, ε\) \(set norm = \"l1\" or leave the key out\)"),
    ("l1-eps-out-of-range", lambda t: t.replace("linf = [0.1, 0.2]", "linf = [0.1, 0.2]\nl1 = [800.0]"),
     r"`epsilons.l1`: .*784"),
    # a bad attack value in a config that would train a model: nothing is trained (results/ stays empty)
    ("bad-value-with-training", lambda t: t.replace(
        'name = "cnn"\npath =', 'name = "cnn"\ntrain = {kind = "small_cnn", epochs = 1, train_examples = 500}\n#'
    ).replace("steps = 5\n", "steps = 0\n", 1), r"`attacks\[1\].steps`"),
]


def test_an_l1_sweep_runs_apgd_and_autoattack_on_the_l1_ball(model_folders, tmp_path):
    """APGD-CE and AutoAttack's L1 version (shortened) at L1 ε = 5 and 10 on Wong et al.'s CNN: every record's L1 size
    is within its ε (and its L∞ size may be far above any L∞ budget: the L1 ball is not the L∞ one), the ensemble is
    at least as strong as its APGD-CE alone, the summary and figures name L1, and the adversarials' validity check
    passes."""
    config = tmp_path / "l1.toml"
    config.write_text(f'''
name = "l1"
chunk_size = 10
[examples]
count = 20
selection = "first"
[[models]]
name = "wong"
path = "{model_folders['wong']}"
[epsilons]
l1 = [0.0, 5.0, 10.0]
[[attacks]]
name = "apgd-ce"
norm = "l1"
steps = 20
[[attacks]]
name = "autoattack"
norm = "l1"
settings = {{ apgd-ce = {{ steps = 20 }}, apgd-t = {{ steps = 20, target_classes = 2 }}, fab-t = {{ steps = 10, target_classes = 2 }}, square = {{ queries = 100 }} }}
[minimal]
norm = "l1"
examples = 10
steps = 10
''')
    run = run_sweep(load_config(config), tmp_path / "results")
    records = pd.concat(pd.read_parquet(p) for p in (run / "records" / "wong").glob("*.parquet"))
    attacked = records[records["attack"] != "clean"]
    assert set(attacked["norm"]) == {"l1"} and set(attacked["attack"]) == {"apgd-ce-l1", "autoattack-l1"}
    robust = attacked[attacked["eps"] > 0].groupby(["attack", "eps"])["correct"].mean().unstack("attack")
    assert (robust["autoattack-l1"] <= robust["apgd-ce-l1"]).all(), robust  # 5 restarts through 3ε, 2ε, ε
    assert {"apgd-ce"} <= set(attacked.loc[attacked["attack"] == "autoattack-l1", "found_by"])
    assert (attacked["l1"] <= attacked["eps"] * (1 + 1e-5) + 1e-4).all()
    assert attacked.loc[attacked["eps"] == 10.0, "linf"].max() > 0.3  # sparse: a few pixels moved far
    summary = pd.read_csv(run / "summary.csv")
    worst = summary[summary["attack"] == "worst case"].set_index("eps")["robust_accuracy"]
    assert worst.loc[0.0] > worst.loc[10.0]
    assert "**L1**" in (run / "summary.md").read_text()
    entries = sorted((run / "robustbench" / "mnist" / "L1").glob("wong_eps*.json"))
    assert [json.loads(e.read_text())["threat_model"] for e in entries] == ["L1", "L1"]
    checks = json.loads((run / "checks.json").read_text())
    validity = [c for c in checks if c["name"].startswith("valid adversarials")]
    assert validity and all(c["passed"] for c in validity), validity
    curve = [c for c in checks if c["name"].startswith("robustness curve")]  # the L1 bisection (l1-APGD)
    assert curve and all(c["passed"] for c in curve), curve


@pytest.mark.parametrize("mutate,message", [(m, msg) for _, m, msg in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_refused_before_any_work(mutate, message, model_folders, tiny_config_text, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(mutate(tiny_config_text(model_folders)))
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "advsweep sweep: error:" in err
    assert re.search(message, err), err
    assert not results.exists() or not any(results.iterdir())


HOSTILE_NAMES = ["..", ".", "../outside", "/tmp/advsweep-absolute", "a/b", "a\\b", ".hidden", "-flag", "x" * 65, "",
                 "name\nnext", "späť", "a b"]


@pytest.mark.parametrize("value", HOSTILE_NAMES, ids=[repr(v) for v in HOSTILE_NAMES])
def test_every_value_that_becomes_a_path_is_a_plain_name(value, model_folders, tiny_config_text, tmp_path, capsys):
    """The run id from the command line, and the sweep, model and attack names from a config, each become a file or
    folder name: a value that is not a plain name is refused in one line before any work, and nothing is written
    outside (or inside) the results root."""
    results = tmp_path / "inside" / "results"
    text = tiny_config_text(model_folders)
    good = tmp_path / "good.toml"
    good.write_text(text)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["sweep", str(good), "--results", str(results), f"--run-id={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "advsweep sweep: error: --run-id: must be a name of letters" in err, err
    for where, mutate in (("name", lambda t: t.replace('name = "tiny"', f"name = {json.dumps(value)}")),
                          ("models[1].name", lambda t: t.replace('name = "cnn"', f"name = {json.dumps(value)}")),
                          ("attacks[1].label", lambda t: t.replace('name = "pgd"',
                                                                   f'name = "pgd"\nlabel = {json.dumps(value)}'))):
        bad = tmp_path / "bad.toml"
        bad.write_text(mutate(text))
        assert main(["sweep", str(bad), "--results", str(results)]) == 2
        err = capsys.readouterr().err
        assert f"config key `{where}`: must be a name of letters" in err, err
        bad.unlink()
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere under the test's folder
    assert not Path("/tmp/advsweep-absolute").exists()
    with pytest.raises(ValueError, match="run_id: must be a name"):  # the API holds the same rule
        run_sweep(load_config(good), results, run_id=value)
    assert not results.exists()


def test_missing_config_file_is_refused(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.toml"), "--results", str(tmp_path / "r")]) == 2
    assert "does not exist; the shipped ones are in experiments/configs/" in capsys.readouterr().err


def test_corrupt_model_file_is_refused_and_leaves_no_run_folder(model_folders, tiny_config_text, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model_folders["cnn"], broken)
    (broken / "model.keras").write_bytes(b"this is not a keras file")
    path = tmp_path / "bad.toml"
    path.write_text(tiny_config_text({"wong": broken, "cnn": model_folders["cnn"]}))
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "config key `models[0].path` (model 'wong')" in err
    assert "model.keras cannot be loaded" in err and "advsweep train" in err
    assert not (results / "tiny").exists()


def test_corrupt_model_file_is_found_before_any_model_is_trained(model_folders, tiny_config_text, tmp_path, capsys):
    """The first model needs training, the second is a corrupt file: nothing is trained, nothing written."""
    broken = tmp_path / "broken"
    shutil.copytree(model_folders["cnn"], broken)
    (broken / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    text = tiny_config_text({"wong": broken, "cnn": model_folders["cnn"]})
    text = text.replace('name = "wong"\npath =', 'name = "cnn-trained"\ntrain = {kind = "small_cnn", epochs = 1}\n#')
    text = text.replace('name = "cnn"\npath = "' + str(model_folders["cnn"]), 'name = "broken"\npath = "' + str(broken))
    path = tmp_path / "bad.toml"
    path.write_text(text)
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results)]) == 2
    assert "config key `models[1].path` (model 'broken')" in capsys.readouterr().err
    assert not results.exists() or not any(results.iterdir())


def test_shipped_configs_are_valid():
    for name in ("quick", "paper"):
        raw = tomllib.loads((ROOT / "experiments" / "configs" / f"{name}.toml").read_text())
        config = parse_config(raw, base=ROOT)
        assert config.name == name and len(config.models) == 2
    paper = load_config(ROOT / "experiments" / "configs" / "paper.toml")
    assert paper.examples == 10000 and paper.epsilons["linf"][-1] == 0.3
    madry = next(a for a in paper.attacks if a.label == "pgd40-linf")
    assert madry.params == {"steps": 40, "abs_stepsize": 0.01, "random_start": True}
    # AutoAttack in both, so that the worst-case row includes it; the paper's is the standard version
    assert [a.label for a in paper.attacks if a.name == "autoattack"] == ["autoattack-linf", "autoattack-l2"]
    assert all(not a.params.get("settings") for a in paper.attacks if a.name == "autoattack")
    quick = load_config(ROOT / "experiments" / "configs" / "quick.toml")
    assert [a.label for a in quick.attacks if a.name == "autoattack"] == ["autoattack-linf"]
    # the ε-budget comparison: one architecture, four training ε, the same data and epochs for each
    budgets = load_config(ROOT / "experiments" / "configs" / "budgets.toml")
    trained = [m.train for m in budgets.models]
    assert [t.adversarial.eps if t.adversarial else 0.0 for t in trained] == [0.0, 0.1, 0.2, 0.3]
    assert len({(t.kind, t.train_examples, t.epochs, t.seed) for t in trained}) == 1
    assert [a.name for a in budgets.attacks] == ["pgd", "autoattack"]


def test_balanced_selection_is_seeded_and_balanced(mnist):
    (_, _, _, y_test), _ = mnist
    first = select_examples(y_test, count=300, selection="balanced", seed=0)
    assert np.array_equal(first, select_examples(y_test, count=300, selection="balanced", seed=0))
    assert not np.array_equal(first, select_examples(y_test, count=300, selection="balanced", seed=1))
    assert np.bincount(y_test[first], minlength=10).tolist() == [30] * 10
    assert np.array_equal(select_examples(y_test, count=5, selection="first", seed=0), np.arange(5))


def test_a_model_config_is_trained_once_and_reported_as_a_subset(tmp_path, capsys):
    """`train = {...}` models are trained into results/models/ on first use and reused after."""
    path = tmp_path / "train.toml"
    path.write_text('''
name = "trains"
[examples]
count = 10
selection = "first"
[[models]]
name = "cnn"
train = {kind = "small_cnn", train_examples = 2000, validation_examples = 1000, epochs = 1}
[epsilons]
linf = [0.2]
[[attacks]]
name = "fgsm"
implementations = ["own"]
[minimal]
enabled = false
''')
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results)]) == 0
    model_id = ModelConfig(kind="small_cnn", train_examples=2000, validation_examples=1000, epochs=1).model_id
    metrics = json.loads((results / "models" / model_id / "metrics.json").read_text())
    assert metrics["train_examples"] == 2000
    run_dir = next((results / "trains").iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["models"][0]["train_examples"] == 2000
    assert "| cnn | fgsm | own |" in capsys.readouterr().out
    stamp = (results / "models" / model_id / "model.keras").stat().st_mtime_ns
    assert main(["sweep", str(path), "--results", str(results), "--run-id", "again"]) == 0
    assert (results / "models" / model_id / "model.keras").stat().st_mtime_ns == stamp  # not trained again
