"""RobustBench-style entries: one JSON file per model, threat model and ε that AutoAttack was run at.

RobustBench's leaderboards are built from one JSON file per model (``model_info/<dataset>/<threat model>/<name>.json``
in its repository) with fixed fields. A run writes the fields that apply, from its per-example records and manifest
alone, under ``robustbench/<dataset>/<Linf|L2|L1>/<model>.json`` (``<model>_eps<ε>.json`` when AutoAttack ran at
several ε): ``dataset``, ``threat_model``, ``eps``, ``clean_acc`` and ``autoattack_acc`` (in %, as strings with two
decimals, as RobustBench writes them), ``additional_data`` (true for the frozen VGG16, pre-trained on ImageNet),
``number_forward_passes`` (per prediction: 1, the harness' models are deterministic), ``architecture``; and the
harness's own: the number of examples, the Wilson interval, the AutoAttack version, the model evaluations per
example (forward passes and input gradients, from the run's cost ledger), the harness version and the run id. The
fields only the authors can give (``link``, ``name`` of the paper, ``authors``, ``venue``, ``reported``) are left
out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from advsweep.assets.files import write_atomic

THREAT_MODELS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
PRETRAINED_KINDS = ("vgg16",)  # model kinds built on weights trained on other data (ImageNet)


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def entries(summary: pd.DataFrame, manifest: dict[str, Any], config: dict[str, Any],
            done: Sequence[dict[str, Any]]) -> dict[Path, dict[str, Any]]:
    """The entries of one run: relative path → fields. ``summary`` is the run's summary table, ``manifest`` and
    ``config`` its ``manifest.json`` and ``config.resolved.json``, ``done`` its units' done records."""
    labels = {a["label"]: a for a in config.get("attacks", []) if a["name"] == "autoattack"}
    models = {m["name"]: m for m in manifest.get("models", [])}
    dataset = str(manifest.get("dataset", {}).get("name", "mnist"))
    evaluations: dict[tuple[str, str], dict[str, float]] = {}
    for record in done:
        model, attack = record["key"].split("/")[:2]
        for cost in record.get("cost", {}).get("members", {}).values():
            total = evaluations.setdefault((model, attack), {"forward": 0.0, "gradient": 0.0})
            total["forward"] += cost["forward"]
            total["gradient"] += cost["gradient"]
    rows = summary[summary["attack"].isin(list(labels)) & (summary["iterate"] == "any") & (summary["eps"] > 0)]
    out: dict[Path, dict[str, Any]] = {}
    for (model, norm), cells in rows.groupby(["model", "norm"], sort=False):
        for _, row in cells.iterrows():
            info = models.get(model, {})
            training = info.get("training") or {}
            clean = summary[(summary["model"] == model) & (summary["attack"] == row["attack"])
                            & (summary["implementation"] == row["implementation"]) & (summary["eps"] == 0)]
            spent = evaluations.get((model, row["attack"]))
            entry = {
                "name": model,
                "architecture": training.get("kind") or "Keras classifier",
                "dataset": dataset,
                "threat_model": THREAT_MODELS[norm],
                "eps": f"{row['eps']:g}",
                "clean_acc": _percent(info["clean_test_accuracy"]) if info.get("clean_test_accuracy") is not None
                else _percent(float(clean["robust_accuracy"].iloc[0])) if len(clean) else None,
                "autoattack_acc": _percent(row["robust_accuracy"]),
                "additional_data": training.get("kind") in PRETRAINED_KINDS,
                "number_forward_passes": 1,
                "n_examples": int(row["examples"]),
                "autoattack_acc_ci95": [_percent(row["ci_low"]), _percent(row["ci_high"])],
                "autoattack_version": "custom" if {"settings", "attacks"} & set(labels[row["attack"]]["params"])
                else labels[row["attack"]]["params"].get("version", "standard"),  # "custom": AutoAttack's own word
                # for an ensemble with changed members or settings
                "autoattack_settings": labels[row["attack"]]["params"],
                "clean_acc_on": "the full test set" if info.get("clean_test_accuracy") is not None
                else f"the {int(row['examples'])} examples attacked",
                "evaluations_per_example": None if spent is None else
                {kind: round(count / int(row["examples"]), 1) for kind, count in spent.items()},
                "training": training or None,
                "advsweep": {"version": manifest.get("code", {}).get("advsweep"),
                             "source_sha256": manifest.get("code", {}).get("source_sha256"),
                             "run_id": manifest.get("run_id"), "sweep": manifest.get("sweep")},
            }
            single = len(cells) == 1
            name = f"{model}.json" if single else f"{model}_eps{row['eps']:g}.json"
            out[Path(dataset) / THREAT_MODELS[norm] / name] = entry
    return out


def write_entries(run_dir: Path, summary: pd.DataFrame, output: Path, done: Sequence[dict[str, Any]]) -> list[Path]:
    """Write a run's entries under ``output/robustbench/``; the files written (none without AutoAttack). ``done``:
    the run's units' done records, as the report read them."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    config_path = run_dir / "config.resolved.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    files = []
    for relative, entry in entries(summary, manifest, config, done).items():
        files.append(write_atomic(Path(output) / "robustbench" / relative,
                                  lambda p, e=entry: p.write_text(json.dumps(e, indent=2) + "\n")))
    return files
