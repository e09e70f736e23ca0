"""Tables, figures and checks of one or more run folders, rebuilt from their per-example records alone.

``advsweep report RUN_DIR`` rewrites a run's ``summary.{csv,md,tex}``, ``checks.{json,md}`` and
``figures/``; with several run folders it writes them side by side (a ``run`` column, one line per run)
into ``--output``. Wherever two models (of one run or of several) were attacked on the same examples, it also writes
``paired.{csv,md}``: the paired comparison of each two, cell by cell (:mod:`advsweep.experiments.reporting.paired`); and for
one run with AutoAttack, its RobustBench-style entries (:mod:`advsweep.experiments.reporting.robustbench`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advsweep.attacks.evaluation.checks import (
    Check,
    check_curve_below_worst_case,
    check_monotone,
    check_pgd_beats_fgsm,
    check_incomplete_optimization,
    check_silent_success,
    check_transfer,
)
from advsweep.experiments.reporting.plots import (
    plot_accuracy_vs_eps,
    plot_adversarial_grid,
    plot_budget_heatmap,
    plot_budget_lines,
    plot_robustness_curve,
)
from advsweep.assets.files import write_atomic
from advsweep.experiments.reporting.paired import markdown as paired_markdown, paired_table, verdicts
from advsweep.attacks.engine.programme import INCOMPLETE_THRESHOLD
from advsweep.experiments.reporting.records import CLEAN, read_records
from advsweep.experiments.reporting.robustbench import write_entries
from advsweep.experiments.reporting.summary import WORST_CASE, budget_table, curve_points, outcomes, summarize, write_tables
from advsweep.experiments.reporting.verdicts import answer_by_escalation, eot_check, settle, verdict
from advsweep.experiments.reporting.verdicts import markdown as verdicts_markdown

logger = logging.getLogger(__name__)


class ReportError(ValueError):
    """A folder that is not a (finished part of a) run folder."""


def run_label(run_dir: Path) -> str:
    """``<sweep name>/<run id>``: how a run is named in side-by-side tables."""
    return f"{run_dir.parent.name}/{run_dir.name}"


def _finished_files(run_dir: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """Record files and done records of the finished units (unfinished ones are not read)."""
    done_dir = run_dir / "done"
    if not (run_dir / "manifest.json").is_file() or not done_dir.is_dir():
        raise ReportError(f"{run_dir} is not a run folder (no manifest.json or done/); give a folder "
                          "results/<sweep>/<run id> written by `advsweep sweep`")
    records = [json.loads(path.read_text()) for path in sorted(done_dir.glob("*.json"))]
    files = [run_dir / name for record in records for name in record["files"]]
    return files, records


def load_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """``(records, minimal, done records)`` of a run's finished units, with a ``run`` column."""
    run_dir = Path(run_dir)
    files, done = _finished_files(run_dir)
    records = read_records([f for f in files if f.suffix == ".parquet" and f.name != "minimal.parquet"])
    minimal_files = [f for f in files if f.name == "minimal.parquet"]
    minimal = pd.concat([pd.read_parquet(f) for f in minimal_files], ignore_index=True) if minimal_files else pd.DataFrame()
    label = run_label(run_dir)
    config = json.loads((run_dir / "config.resolved.json").read_text())
    model_order = {m["name"]: i for i, m in enumerate(config["models"])}
    attack_order = {a["label"]: i + 1 for i, a in enumerate(config["attacks"])}  # the clean pass first
    order = records["attack"].map(attack_order)  # the clean pass first, the escalated attacks after the config's
    order = order.where(order.notna() | (records["attack"] == CLEAN), len(attack_order) + 1).fillna(0)
    records = records.assign(_m=records["model"].map(model_order), _a=order)
    records = records.sort_values(["_m", "_a", "implementation", "eps", "example"], kind="stable")
    records = records.drop(columns=["_m", "_a"]).reset_index(drop=True)
    records.insert(0, "run", label)
    if not minimal.empty:
        minimal.insert(0, "run", label)
    return records, minimal, done


def curve_checks(records: pd.DataFrame, minimal: pd.DataFrame, run: str, model: str) -> list[Check]:
    """The robustness curve against the worst case over the grid's attacks, on the curve's own examples, at
    every grid ε of its norm (:func:`advsweep.attacks.evaluation.checks.check_curve_below_worst_case`)."""
    checks = []
    for norm, curve in minimal[(minimal["run"] == run) & (minimal["model"] == model)].groupby("norm"):
        cells = records[(records["run"] == run) & (records["model"] == model) & (records["norm"] == norm)
                        & records["example"].isin(curve["example"])]
        clean = records[(records["run"] == run) & (records["model"] == model) & (records["attack"] == CLEAN)]
        clean_correct = clean.set_index("example")["correct"]
        if cells.empty:
            continue
        robust = cells.groupby(["eps", "example"])["correct"].all().unstack("example")
        robust = robust & clean_correct.reindex(robust.columns).to_numpy()[None, :]
        grid = list(robust.index)
        tolerance = float(curve["tolerance"].iloc[0])
        sizes = curve["minimal_eps"].to_numpy()
        checks.append(check_curve_below_worst_case(
            grid, [float(np.mean(sizes > e + tolerance)) for e in grid], robust.mean(axis=1).tolist(),
            examples=len(curve), tolerance=tolerance, label=f"{norm}, {curve['loss'].iloc[0]} loss"))
    return checks


def silent_success_checks(records: pd.DataFrame, run: str, model: str) -> list[Check]:
    """Silent success per attack whose records have a returned point beside the any-iterate view: the attack's own
    last-iterate rows, or, for an attack run by both implementations, foolbox's (it returns the last iterate of the
    same path: the implementations are held to each other from the same starts)."""
    rows = records[(records["run"] == run) & (records["model"] == model) & (records["attack"] != CLEAN)]
    checks = []
    for (attack, norm), cells in rows.groupby(["attack", "norm"], sort=False):
        views = {(i, t): v.set_index(["eps", "example"])["correct"] for (i, t), v in
                 cells.groupby(["implementation", "iterate"], sort=False)}
        for implementation, _ in [k for k in views if k[1] == "any"]:
            returned = [(implementation, "last")] + [(i, t) for i, t in views if i != implementation and t == "last"]
            for key in (k for k in returned if k in views):
                any_view, last_view = views[(implementation, "any")], views[key]
                common = any_view.index.intersection(last_view.index)
                silent = (~any_view.loc[common].astype(bool)) & last_view.loc[common].astype(bool)
                found = silent.groupby(level="eps").sum()
                source = "last iterate" if key[0] == implementation else f"{key[0]}'s last iterate"
                checks.append(check_silent_success(
                    {float(e): int(c) for e, c in found.items()}, int(common.get_level_values("example").nunique()),
                    label=f"{attack}/{implementation} against {source}, {norm}"))
    return checks


def incomplete_optimization_checks(records: pd.DataFrame, run: str, model: str) -> list[Check]:
    """Incomplete optimization per attack whose any-iterate records carry the loss trace's measure (``loss_rise``:
    PGD, BIM, APGD, APGD-T and AutoAttack's traced members, by the harness's engine), at each ε > 0.

    A flagged example (left robust with its loss still rising) is **closed** where the sweep settles it otherwise:
    another attack of the same norm and ε fooled it, or another attack's run left it robust with a loss that had
    stopped rising (a converged run of another attack says more steps of this one would not break it). Only the
    open ones count against the check's threshold; the closed ones are named in its detail."""
    rows = records[(records["run"] == run) & (records["model"] == model) & (records["attack"] != CLEAN)
                   & (records["eps"] > 0)]
    checks = []
    for (attack, implementation, norm), cells in rows[rows["iterate"] == "any"].groupby(
            ["attack", "implementation", "norm"], sort=False):
        if cells["loss_rise"].isna().all():
            continue
        others = rows[(rows["norm"] == norm) & ((rows["attack"] != attack) | (rows["implementation"] != implementation))]
        settled = (~others["correct"].astype(bool)) | (others["loss_rise"] <= INCOMPLETE_THRESHOLD)
        closed_keys = set(zip(others.loc[settled, "eps"], others.loc[settled, "example"]))
        robust = cells["correct"].astype(bool)
        rising = cells["loss_rise"] > INCOMPLETE_THRESHOLD
        closed = pd.Series([(e, x) in closed_keys for e, x in zip(cells["eps"], cells["example"])], index=cells.index,
                           dtype=bool)
        flagged, of = _flagged_per_eps(cells, robust, rising & ~closed)
        settled_per_eps, _ = _flagged_per_eps(cells, robust, rising & closed)
        examples = {float(e): int(n) for e, n in cells.groupby("eps")["example"].nunique().items()}
        checks.append(check_incomplete_optimization(flagged, of, closed=settled_per_eps, examples=examples,
                                                    label=f"{attack}/{implementation}, {norm}"))
    return checks


def transfer_checks(records: pd.DataFrame, run: str, model: str) -> list[Check]:
    """Transfer failure per transfer attack (the cells whose records name the surrogate in ``found_by``), at each
    ε > 0: the examples whose point fooled the surrogate and leaves this model correct."""
    rows = records[(records["run"] == run) & (records["model"] == model) & (records["attack"] != CLEAN)
                   & (records["eps"] > 0)]
    checks = []
    for (attack, implementation, norm), cells in rows.groupby(["attack", "implementation", "norm"], sort=False):
        fooled = cells["found_by"] == "surrogate"
        if not fooled.any():
            continue
        checks.append(check_transfer(*_flagged_per_eps(cells, fooled, cells["correct"].astype(bool)),
                                     label=f"{attack}/{implementation}, {norm}"))
    return checks


def _flagged_per_eps(cells: pd.DataFrame, among: pd.Series, flag: pd.Series) -> tuple[dict[float, list[int]],
                                                                                     dict[float, int]]:
    """Per ε of ``cells``: the examples ``among`` the rows that ``flag`` marks, and how many rows are ``among``."""
    flagged = cells[among & flag]
    return ({float(e): flagged.loc[flagged["eps"] == e, "example"].tolist() for e in sorted(cells["eps"].unique())},
            {float(e): int(n) for e, n in cells[among].groupby("eps").size().items()})


def merge_chunks(name: str, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One check of an attack cell from its chunks' verdicts: failed where any chunk failed, a note where the chunks
    that did not pass were all notes (a note stays a note through the merge), passed otherwise; the detail and
    suggestion of the first failure (else of the first note, else of the first chunk)."""
    failed = [c for c in parts if not c["passed"]]
    failures = [c for c in failed if not c.get("informational")]
    first = (failures or failed or list(parts))[0]
    return {"name": name, "passed": not failed, "detail": f"{len(parts)} chunk(s); " + first["detail"],
            "suggestion": first["suggestion"], "informational": bool(failed) and not failures}


def assemble_checks(summary: pd.DataFrame, done: list[dict[str, Any]], run: str, records: pd.DataFrame,
                    minimal: pd.DataFrame) -> list[dict[str, Any]]:
    """The attack layer's checks for one run: the model checks and adversarial validity recorded by the
    units; monotonicity and PGD ≥ FGSM computed from the summary; the robustness curve against the worst
    case, silent success (an adversarial on the path that the returned point lost), incomplete optimization (a
    robust example's attack loss still rising when its run ended) and transfer failure (a surrogate's adversarial
    that does not fool the model), from the records."""
    checks: list[dict[str, Any]] = []
    models = list(dict.fromkeys(summary.loc[summary["run"] == run, "model"]))
    for model in models:
        validity: dict[str, list[dict[str, Any]]] = {}
        for record in done:
            if record["key"].split("/")[0] != model:
                continue
            if record["kind"] == "checks":
                checks += [{"run": run, "model": model, **c} for c in record["checks"]]
            elif record["kind"] in ("attack", "escalation"):
                for c in record.get("checks", []):
                    validity.setdefault(c["name"], []).append(c)
        for name, parts in validity.items():  # one verdict per attack cell over its chunks
            checks.append({"run": run, "model": model, **merge_chunks(name, parts)})
        rows = summary[(summary["run"] == run) & (summary["model"] == model)]
        curves, notes, reasons = {}, [], {}
        for (a, i, t), g in rows.groupby(["attack", "implementation", "iterate"], sort=False):
            if a == WORST_CASE:
                continue
            name = f"{a}/{i}" + ("/last iterate" if t == "last" else "")
            curves[name] = (list(g["eps"]), list(g["robust_accuracy"]))
            if t in ("single", "last"):
                notes.append(name)
                reasons[name] = ("a single step is not expected to do better with a larger step: its curve need not "
                                 "fall" if t == "single" else "the last iterate oscillates; the any-iterate row of the "
                                                              "same attack is the one to report")
        checks += [{"run": run, "model": model, **c.to_dict()}
                   for c in check_monotone(curves, informational=notes, reasons=reasons)]
        fgsm_rows = rows[rows["attack"] == "fgsm"]
        iterative = rows[(rows["norm"] == "linf") & rows["attack"].str.startswith("pgd")]
        for (pgd_label, implementation, iterate), pgd in iterative.groupby(["attack", "implementation", "iterate"],
                                                                          sort=False):
            fgsm = fgsm_rows[fgsm_rows["implementation"] == implementation]
            common = sorted(set(pgd["eps"]) & set(fgsm["eps"]))
            if not common:
                continue
            check = check_pgd_beats_fgsm(
                common, pgd.set_index("eps").loc[common, "robust_accuracy"].tolist(),
                fgsm.set_index("eps").loc[common, "robust_accuracy"].tolist(),
                examples=int(pgd["examples"].iloc[0]),
                label=f"{pgd_label}/{implementation}" + ("/last iterate" if iterate == "last" else ""),
                informational=iterate == "last")
            checks.append({"run": run, "model": model, **check.to_dict()})
        if not minimal.empty:
            checks += [{"run": run, "model": model, **c.to_dict()}
                       for c in curve_checks(records, minimal, run, model)]
        checks += [{"run": run, "model": model, **c.to_dict()} for c in silent_success_checks(records, run, model)]
        checks += [{"run": run, "model": model, **c.to_dict()}
                   for c in incomplete_optimization_checks(records, run, model)]
        checks += [{"run": run, "model": model, **c.to_dict()} for c in transfer_checks(records, run, model)]
    return checks


def _checks_markdown(checks: list[dict[str, Any]]) -> str:
    lines = ["| run | model | check | verdict | measured | suggests |", "|---|---|---|---|---|---|"]
    for c in checks:
        verdict = "pass" if c["passed"] else "note" if c.get("informational") else "**FAIL**"
        lines.append(f"| {c['run']} | {c['model']} | {c['name']} | {verdict} | "
                     f"{c['detail']} | {c.get('suggestion', '')} |")
    return "\n".join(lines) + "\n"


def cost_table(done: Sequence[dict[str, Any]], run: str) -> pd.DataFrame:
    """Where a run's attack time went: per model, attack (label and implementation) and member of an ensemble (the
    attack itself otherwise), the examples it attacked, the seconds and the model evaluations without and with an
    input gradient, summed over the attack's chunks, and per example attacked."""
    rows = []
    for record in done:
        if "cost" not in record:
            continue
        model, attack, implementation = record["key"].split("/")[:3]
        for member, cost in record["cost"]["members"].items():
            rows.append({"run": run, "model": model, "attack": attack, "implementation": implementation,
                         "member": member, **cost})
    if not rows:
        return pd.DataFrame()
    keys = ["run", "model", "attack", "implementation", "member"]
    table = pd.DataFrame(rows).groupby(keys, sort=False, as_index=False)[
        ["examples", "seconds", "forward", "gradient"]].sum()
    for column in ("seconds", "forward", "gradient"):
        table[f"{column}_per_example"] = table[column] / table["examples"]
    return table


def _cost_markdown(table: pd.DataFrame) -> str:
    lines = ["| run | model | attack | member | examples | seconds | forward / example | gradient / example |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.run} | {row.model} | {row.attack} ({row.implementation}) | {row.member} | {row.examples} "
                     f"| {row.seconds:.1f} | {row.forward_per_example:.0f} | {row.gradient_per_example:.0f} |")
    return "\n".join(lines) + "\n"


def build_report(run_dirs: Sequence[Path], output: Path) -> dict[str, Any]:
    """Write ``summary.*``, ``checks.*`` and ``figures/`` for ``run_dirs`` into ``output``.

    Returns:
        What was written: ``{"summary": DataFrame, "checks": [...], "paired": DataFrame (empty for a single model),
        "verdicts": [the paired differences that hold at 95%], "files": [...]}``.
    """
    if not run_dirs:
        raise ReportError("give at least one run folder")
    loaded = [load_run(Path(d)) for d in run_dirs]
    labels = [run_label(Path(d)) for d in run_dirs]
    if len(set(labels)) != len(labels):
        raise ReportError(f"the same run is given twice: {labels}")
    records = pd.concat([r for r, _, _ in loaded], ignore_index=True)
    if records.empty:
        raise ReportError(f"no finished records in {', '.join(map(str, run_dirs))}: run `advsweep sweep` first")
    cells = outcomes(records)  # each example per cell: the summary counts them, the paired table matches them
    summary = summarize(records, cells)
    output = Path(output)
    files = write_tables(summary, output)
    minimal_all = pd.concat([m for _, m, _ in loaded if not m.empty], ignore_index=True) if any(
        not m.empty for _, m, _ in loaded) else pd.DataFrame()
    checks, model_verdicts = [], []
    for (_, _, done), label, run_dir in zip(loaded, labels, run_dirs):
        run_checks = assemble_checks(summary, done, label, records, minimal_all)
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
        attacks = json.loads((Path(run_dir) / "config.resolved.json").read_text())["attacks"]
        randomized = manifest.get("randomized", {})
        for model in dict.fromkeys(c["model"] for c in run_checks):
            rows = summary[(summary["run"] == label) & (summary["model"] == model)]
            settled = settle([c for c in run_checks if c["model"] == model], rows, randomized=model in randomized)
            escalation = next((r.get("escalation") for r in done if r["kind"] == "escalation"
                               and r["key"].split("/")[0] == model), None)
            if model in randomized:
                settled.append(eot_check(label, model, attacks, draws=randomized[model].get("draws"),
                                         escalated=bool(escalation and escalation["ran"])))
            settled = answer_by_escalation(settled, rows, escalation)
            checks += settled
            model_verdicts.append(verdict(label, model, settled, escalation=escalation, summary=rows))
    files.append(write_atomic(output / "checks.json", lambda p: p.write_text(json.dumps(checks, indent=2) + "\n")))
    files.append(write_atomic(output / "checks.md", lambda p: p.write_text(
        verdicts_markdown(model_verdicts) + "\n" + _checks_markdown(checks))))
    files.append(write_atomic(output / "verdicts.json",
                              lambda p: p.write_text(json.dumps(model_verdicts, indent=2) + "\n")))
    paired = paired_table(cells)
    if not paired.empty:  # two or more models (or runs) on the same examples: which differences hold
        files.append(write_atomic(output / "paired.csv", lambda p: paired.to_csv(p, index=False)))
        files.append(write_atomic(output / "paired.md", lambda p: p.write_text(paired_markdown(paired))))
    if len(run_dirs) == 1:  # one run: its RobustBench-style entries (a side-by-side report is no one run's)
        files += write_entries(Path(run_dirs[0]), summary, output, loaded[0][2])
    costs = [cost_table(done, label) for (_, _, done), label in zip(loaded, labels)]
    cost = pd.concat([c for c in costs if not c.empty], ignore_index=True) if any(not c.empty for c in costs) else None
    if cost is not None:
        files.append(write_atomic(output / "cost.csv", lambda p: cost.to_csv(p, index=False)))
        files.append(write_atomic(output / "cost.md", lambda p: p.write_text(_cost_markdown(cost))))
    figures = output / "figures"
    files += plot_accuracy_vs_eps(summary, figures / "accuracy_vs_eps")
    budgets = budget_table(summary, {(label, model["name"]): model.get("training")
                                     for run_dir, label in zip(run_dirs, labels)
                                     for model in json.loads((Path(run_dir) / "manifest.json").read_text())["models"]})
    if not budgets.empty:  # models trained at two or more ε: the ε-budget comparison
        files.append(write_atomic(output / "budgets.csv", lambda p: budgets.to_csv(p, index=False)))
        for norm, rows in budgets.groupby("norm", sort=False):
            suffix = "" if budgets["norm"].nunique() == 1 else f"_{norm}"
            files += plot_budget_lines(rows, figures / f"budgets_lines{suffix}")
            files += plot_budget_heatmap(rows, figures / f"budgets_heatmap{suffix}")
    minimal = minimal_all
    if not minimal.empty:
        grid = np.unique(np.concatenate([np.linspace(0, float(g["eps_max"].max()), 201)
                                         for _, g in minimal.groupby("norm")]))
        curve = pd.concat([curve_points(minimal[minimal["norm"] == norm],
                                        grid[grid <= minimal.loc[minimal["norm"] == norm, "eps_max"].max()])
                           for norm in dict.fromkeys(minimal["norm"])], ignore_index=True)
        write_atomic(output / "robustness_curve.csv", lambda p: curve.to_csv(p, index=False))
        files += plot_robustness_curve(curve, figures / "robustness_curve")
    for run_dir, label in zip(run_dirs, labels):
        for path in sorted((Path(run_dir) / "adversarials").glob("*/*.npz")):
            with np.load(path) as arrays:
                model = path.parent.name
                stem = f"adversarial_grid_{model}" if len(run_dirs) == 1 else \
                    f"adversarial_grid_{label.replace('/', '_')}_{model}"
                attack = path.stem.split("--chunk")[0].replace("--", ", ")
                files += plot_adversarial_grid(arrays["x"], arrays["x_adv"], arrays["labels"], arrays["predictions"],
                                               arrays["epsilons"], figures / stem, title=f"{model}: {attack}")
    failed = [c for c in checks if not c["passed"] and not c.get("informational")]
    for c in failed:
        logger.warning("CHECK FAILED (%s, %s): %s: %s. Suggests: %s", c["run"], c["model"], c["name"], c["detail"],
                       c["suggestion"])
    return {"summary": summary, "checks": checks, "paired": paired, "verdicts": verdicts(paired), "files": files,
            "model_verdicts": model_verdicts}
