"""Tables from per-example records: robust accuracy with a 95% Wilson interval, attack success rate,
median perturbation, and AutoAttack's worst case over attacks; as CSV, Markdown and LaTeX (booktabs).

Every number is a function of the records alone (:mod:`advsweep.experiments.reporting.records`), so ``advsweep report``
rebuilds the same tables from disk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advsweep.assets.files import write_atomic
from advsweep.attacks.engine.spec import NORM_LABELS, NORM_LATEX
from advsweep.experiments.reporting.records import CLEAN

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
WORST_CASE = "worst case"
ALL_IMPLEMENTATIONS = "all"
GROUP = ["run", "model", "attack", "implementation", "iterate", "norm", "eps"]


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927): ``(low, high)`` in [0, 1].

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0% and 100%, which
    robust accuracies often are. ``(nan, nan)`` for zero trials.
    """
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _with_clean(records: pd.DataFrame) -> pd.DataFrame:
    """Attack records joined with each example's clean correctness (``clean_correct``)."""
    clean = records[records["attack"] == CLEAN][["run", "model", "example", "correct"]]
    clean = clean.rename(columns={"correct": "clean_correct"})
    attacked = records[records["attack"] != CLEAN]
    joined = attacked.merge(clean, on=["run", "model", "example"], how="left", validate="many_to_one")
    if joined["clean_correct"].isna().any():
        raise ValueError("records: some attacked examples have no clean record")
    joined["clean_correct"] = joined["clean_correct"].astype(bool)
    return joined


def size_in_norm(records: pd.DataFrame) -> np.ndarray:
    """Each record's perturbation size in its own norm (its ``linf``, ``l2`` or ``l1`` column)."""
    return np.select([records["norm"] == "linf", records["norm"] == "l2"], [records["linf"], records["l2"]],
                     records["l1"])


def _worst_case(joined: pd.DataFrame) -> pd.DataFrame:
    """Per (run, model, norm, ε): an example is robust only if it is classified correctly when clean and every
    attack and implementation failed on it (AutoAttack's rule)."""
    grouped = joined.groupby(["run", "model", "norm", "eps", "example"], sort=True)
    worst = grouped.agg(correct=("correct", "all"), clean_correct=("clean_correct", "first"),
                        cells=("correct", "size")).reset_index()
    worst["correct"] &= worst["clean_correct"]  # a misclassified clean input is not robust (AutoAttack)
    # the attack that sets each example's outcome: its smallest perturbation among the successful ones
    sizes = joined.assign(size=size_in_norm(joined))
    broken = sizes[~sizes["correct"]].groupby(["run", "model", "norm", "eps", "example"])["size"].min()
    worst = worst.merge(broken.rename("size").reset_index(), on=["run", "model", "norm", "eps", "example"], how="left")
    worst["attack"], worst["implementation"], worst["iterate"] = WORST_CASE, ALL_IMPLEMENTATIONS, "any"
    return worst


def outcomes(records: pd.DataFrame) -> pd.DataFrame:
    """Every example's outcome in every cell of the summary (:data:`GROUP`: attack rows and the worst case over
    attacks): ``correct`` (robust there), ``clean_correct`` and the perturbation's ``size`` in the row's norm. The
    summary counts these; paired comparisons (:mod:`advsweep.experiments.reporting.paired`) match them example by example."""
    joined = _with_clean(records)
    joined = joined.assign(size=size_in_norm(joined))
    return pd.concat([joined, _worst_case(joined)], ignore_index=True)


def summarize(records: pd.DataFrame, cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary table: one row per run × model × attack × implementation × ε, plus worst-case rows.

    Columns: ``examples``; ``robust`` (count) and ``robust_accuracy`` in [0, 1] with ``ci_low`` and
    ``ci_high`` (95% Wilson); ``clean_correct`` (count); ``attack_success_rate`` on initially correct
    examples; ``median_perturbation`` (in the row's norm, over successful adversarials of initially
    correct examples; NaN if there is none). ``records`` needs a ``run`` column.
    """
    cells = outcomes(records) if cells is None else cells
    rows = []
    for key, group in cells.groupby(GROUP, sort=False):
        n = len(group)
        robust = int(group["correct"].sum())
        low, high = wilson_interval(robust, n)
        initially = group[group["clean_correct"]]
        flipped = initially[~initially["correct"]]
        rows.append({
            **dict(zip(GROUP, key)),
            "examples": n,
            "robust": robust,
            "robust_accuracy": robust / n,
            "ci_low": low,
            "ci_high": high,
            "clean_correct": len(initially),
            "attack_success_rate": len(flipped) / len(initially) if len(initially) else math.nan,
            "median_perturbation": float(np.median(flipped["size"])) if len(flipped) else math.nan,
        })  # fmt: skip
    table = pd.DataFrame(rows)
    order = {WORST_CASE: 1}
    table["_worst"] = table["attack"].map(order).fillna(0)
    runs = list(dict.fromkeys(records["run"]))
    models = list(dict.fromkeys(records["model"]))
    attacks = list(dict.fromkeys(records["attack"]))
    table["_run"] = table["run"].map({r: i for i, r in enumerate(runs)})
    table["_model"] = table["model"].map({m: i for i, m in enumerate(models)})
    table["_attack"] = table["attack"].map({a: i for i, a in enumerate(attacks)}).fillna(len(attacks))
    table = table.sort_values(["_run", "_model", "norm", "_worst", "_attack", "implementation", "iterate", "eps"],
                              kind="stable")
    return table.drop(columns=["_worst", "_run", "_model", "_attack"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# writing


def _wide(summary: pd.DataFrame) -> tuple[list[tuple[Any, ...]], dict[tuple[Any, ...], Any]]:
    """Rows (run, model, norm, attack, implementation, iterate) in table order, and a lookup of summary rows."""
    rows = list(dict.fromkeys(zip(summary["run"], summary["model"], summary["norm"], summary["attack"],
                                  summary["implementation"], summary["iterate"])))
    cells = {(r.run, r.model, r.norm, r.attack, r.implementation, r.iterate, r.eps): r for r in summary.itertuples()}
    return rows, cells


def _grids(summary: pd.DataFrame) -> dict[str, list[float]]:
    return {norm: sorted(set(summary.loc[summary["norm"] == norm, "eps"])) for norm in dict.fromkeys(summary["norm"])}


def _percent(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.{digits}f}"


def markdown(summary: pd.DataFrame) -> str:
    """One table per norm: rows model × attack × implementation (worst case last), columns ε,
    cells ``robust accuracy % [95% CI]``."""
    rows, cells = _wide(summary)
    multi_run = summary["run"].nunique() > 1
    out = []
    for norm, grid in _grids(summary).items():
        out.append(f"**{NORM_LABELS[norm]}**: robust accuracy in % [95% Wilson interval], "
                   f"n = {', '.join(map(str, sorted(set(summary.loc[summary['norm'] == norm, 'examples']))))} "
                   "examples per cell\n")
        head = (["run"] if multi_run else []) + ["model", "attack", "implementation", "iterate"] + [
            f"ε = {e:g}" for e in grid]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for run, model, row_norm, attack, implementation, iterate in rows:
            if row_norm != norm:
                continue
            values = []
            for e in grid:
                cell = cells.get((run, model, norm, attack, implementation, iterate, e))
                values.append("–" if cell is None else
                              f"{_percent(cell.robust_accuracy)} [{_percent(cell.ci_low)}, {_percent(cell.ci_high)}]")
            name = f"**{attack}**" if attack == WORST_CASE else attack
            out.append("| " + " | ".join(([run] if multi_run else []) + [model, name, implementation, iterate] + values)
                       + " |")
        out.append("")
        out.append("The **worst case** rows are the numbers to report: an example counts as robust only if it is "
                   "correct clean and every attack above failed on it (AutoAttack's rule). iterate: `any` counts "
                   "an example fooled if any point the attack evaluated inside the ε-ball was misclassified; "
                   "`last` is foolbox's returned last iterate alone; `single` is a one-step attack.\n")
    return "\n".join(out)


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def latex(summary: pd.DataFrame) -> str:
    """booktabs tables, one per norm: robust accuracy in % with the 95% interval below it in small type.
    Needs ``\\usepackage{booktabs}`` (and ``makecell`` for the two-line cells)."""
    rows, cells = _wide(summary)
    multi_run = summary["run"].nunique() > 1
    out = ["% robust accuracy (%) with 95% Wilson interval; made by advsweep from per-example records",
           "% needs \\usepackage{booktabs,makecell}"]
    for norm, grid in _grids(summary).items():
        symbol = NORM_LATEX[norm]
        lead = (["Run"] if multi_run else []) + ["Model", "Attack", "Impl.", "Iterate"]
        out.append(r"\begin{tabular}{" + "l" * len(lead) + "r" * len(grid) + "}")
        out.append(r"\toprule")
        out.append(" & ".join(lead) + " & " + r"\multicolumn{" + str(len(grid)) + r"}{c}{$" + symbol +
                   r"$ robust accuracy (\%) at $\varepsilon$} \\")
        out.append(r"\cmidrule(l){" + f"{len(lead) + 1}-{len(lead) + len(grid)}" + "}")
        out.append(" & " * (len(lead) - 1) + " & " + " & ".join(f"{e:g}" for e in grid) + r" \\")
        out.append(r"\midrule")
        previous_model = None
        for run, model, row_norm, attack, implementation, iterate in rows:
            if row_norm != norm:
                continue
            if previous_model is not None and (run, model) != previous_model:
                out.append(r"\midrule")
            previous_model = (run, model)
            values = []
            for e in grid:
                cell = cells.get((run, model, norm, attack, implementation, iterate, e))
                values.append("--" if cell is None else
                              r"\makecell{" + _percent(cell.robust_accuracy) + r"\\ {\scriptsize [" +
                              _percent(cell.ci_low) + ", " + _percent(cell.ci_high) + "]}}")
            name = r"\textbf{worst case}" if attack == WORST_CASE else _latex_escape(attack)
            lead_cells = ([_latex_escape(run)] if multi_run else []) + [_latex_escape(model), name,
                                                                        _latex_escape(implementation), iterate]
            out.append(" & ".join(lead_cells + values) + r" \\")
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}")
        out.append("")
    return "\n".join(out)


def write_tables(summary: pd.DataFrame, folder: Path, *, stem: str = "summary") -> list[Path]:
    """``summary.csv`` (every column, full precision), ``summary.md`` and ``summary.tex``, atomically."""
    written = [
        write_atomic(folder / f"{stem}.csv", lambda p: summary.to_csv(p, index=False)),
        write_atomic(folder / f"{stem}.md", lambda p: p.write_text(markdown(summary), encoding="utf-8")),
        write_atomic(folder / f"{stem}.tex", lambda p: p.write_text(latex(summary), encoding="utf-8")),
    ]
    return written


def curve_points(minimal: pd.DataFrame, grid: Sequence[float]) -> pd.DataFrame:
    """Accuracy under the minimal-perturbation adversary: fraction of examples whose minimal ε exceeds t."""
    rows = []
    for (run, model, norm), group in minimal.groupby(["run", "model", "norm"], sort=False):
        sizes = group["minimal_eps"].to_numpy()
        for t in grid:
            rows.append({"run": run, "model": model, "norm": norm, "eps": float(t),
                         "robust_accuracy": float(np.mean(sizes > t)), "examples": len(sizes)})
    return pd.DataFrame(rows)


def budget_table(summary: pd.DataFrame, trainings: dict[tuple[str, str], dict[str, Any] | None]) -> pd.DataFrame:
    """The ε-budget comparison: the worst case over attacks of every model with a known training ε, per test ε.

    Args:
        summary: :func:`summarize`'s table.
        trainings: ``(run, model) → {"kind", "method", "label", "eps", …}`` from the runs' manifests (``None`` for a
            classifier the harness did not train).

    Returns:
        One row per (run, model, norm, test ε) with ``kind``, ``training`` (the method's label, or ``"natural"``;
        " (collapsed)" added when training detected catastrophic overfitting),
        ``train_eps``, ``test_eps``, ``robust_accuracy``, ``ci_low``, ``ci_high`` and ``examples``; empty unless the
        models span at least two training ε.
    """
    worst = summary[summary["attack"] == WORST_CASE]
    rows = []
    for row in worst.itertuples():
        training = trainings.get((row.run, row.model))
        if not training:
            continue
        label = training["label"] + (" (collapsed)" if training.get("collapse") else "")
        rows.append({"run": row.run, "model": row.model, "kind": training["kind"], "training": label,
                     "train_eps": float(training["eps"]), "norm": row.norm, "test_eps": float(row.eps),
                     "robust_accuracy": row.robust_accuracy, "ci_low": row.ci_low, "ci_high": row.ci_high,
                     "examples": row.examples})
    table = pd.DataFrame(rows)
    if table.empty or table["train_eps"].nunique() < 2:
        return pd.DataFrame()
    return table.sort_values(["kind", "norm", "train_eps", "training", "run", "model", "test_eps"],
                             kind="stable").reset_index(drop=True)
