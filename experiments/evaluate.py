"""Evaluate one trained model: robust accuracy under FGSM and PGD by both implementations, and the checks.

This is the single-model evaluation behind ``advsweep evaluate``; it prints a Markdown table and the
verdict of every evaluation check (:mod:`attacks.checks`), and writes both as JSON.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from attacks import run_attack
from attacks.checks import (
    Check,
    check_gradients,
    check_logits,
    check_monotone,
    check_pgd_beats_fgsm,
    check_result_validity,
    check_unbounded,
    report,
)

logger = logging.getLogger(__name__)


def evaluate_model(
    model: keras.Model,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    epsilons: Sequence[float],
    attacks: Sequence[str] = ("fgsm", "pgd"),
    implementations: Sequence[str] = ("own", "foolbox"),
    seed: int = 0,
) -> tuple[pd.DataFrame, list[Check]]:
    """Robust accuracy (L∞) of ``model`` per attack, implementation and ε, with the evaluation checks.

    Own iterative attacks run with early stop (they stop on an example once it is fooled, and keep an
    adversarial for every larger ε); foolbox's run every step at every ε, as foolbox does.

    Returns:
        ``(table, checks)``: one row per (attack, implementation, ε) with ``robust_accuracy`` in [0, 1],
        ``examples`` and ``seconds``; and the list of checks, already logged.
    """
    grid = sorted({0.0, *map(float, epsilons)})
    rows: list[dict[str, Any]] = []
    checks: list[Check] = [check_logits(model, x), check_gradients(model, x, labels)]
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for attack in attacks:
        for implementation in implementations:
            params: dict[str, Any] = {}
            if attack == "pgd":
                params["seed"] = seed
            if attack in ("pgd", "bim") and implementation == "own":
                params["early_stop"] = True
            started = time.perf_counter()
            result = run_attack(attack, model, x, labels, grid, implementation=implementation, **params)
            seconds = time.perf_counter() - started
            label = f"{attack}/{implementation}"
            checks.append(check_result_validity(result, x, label=label))
            curves[label] = (grid, [float(a) for a in result.robust_accuracy])
            for epsilon, accuracy in zip(grid, result.robust_accuracy):
                rows.append({"attack": attack, "implementation": implementation, "eps": epsilon,
                             "robust_accuracy": float(accuracy), "examples": len(x), "seconds": seconds})
            logger.info("%s: robust accuracy %s (%.0f s)", label,
                        ", ".join(f"{a:.3f}" for a in result.robust_accuracy), seconds)
    checks += check_monotone(curves)
    if "fgsm" in attacks and "pgd" in attacks:
        for implementation in implementations:
            checks.append(check_pgd_beats_fgsm(grid, curves[f"pgd/{implementation}"][1],
                                               curves[f"fgsm/{implementation}"][1], examples=len(x),
                                               label=implementation))
    checks += check_unbounded(model, x, labels, seed=seed)
    report(checks)
    return pd.DataFrame(rows), checks


def markdown_table(table: pd.DataFrame, *, model_name: str) -> str:
    """Rows: attack × implementation; columns: ε; cells: robust accuracy in percent."""
    pivot = table.pivot_table(index=["attack", "implementation"], columns="eps", values="robust_accuracy")
    header = "| model | attack | implementation | " + " | ".join(f"ε = {e:g}" for e in pivot.columns) + " |"
    lines = [header, "|" + "---|" * (3 + len(pivot.columns))]
    for (attack, implementation), values in pivot.iterrows():
        cells = " | ".join(f"{100 * v:.1f}%" for v in values)
        lines.append(f"| {model_name} | {attack.upper()} | {implementation} | {cells} |")
    return "\n".join(lines)


def write_evaluation(folder: Path, table: pd.DataFrame, checks: list[Check], meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "robust_accuracy.csv", index=False)
    (folder / "checks.json").write_text(json.dumps([c.to_dict() for c in checks], indent=2) + "\n")
    (folder / "evaluation.json").write_text(json.dumps(meta, indent=2) + "\n")
