"""One verdict per model: can its worst case be reported, or is it at risk, and why.

The checks of a run (:mod:`advsweep.attacks.evaluation.checks`, assembled by :mod:`advsweep.experiments.reporting.report`) each look at
one attack or one property of the model. A researcher asks one question of them: is the number to report, the worst
case over the sweep's attacks, at risk? This module answers it in two steps.

1. **Settle** what the rest of the evaluation answers: a warning about one attack whose gap a stronger attack of the
   same sweep closes becomes a note (an attack's curve that rises with ε where the worst case falls; PGD weaker than
   FGSM where another attack of the sweep is at least as strong as FGSM at every ε), and each diagnosis names the
   cause that the other checks of the same run support (a randomized model, not a saturating softmax).
2. **Judge**: the model's worst case is *at risk* where a failure remains, or where the model is randomized and no
   attack of the sweep averaged its gradients over draws (EOT); *not at risk* otherwise. The reasons are the
   remaining failures, in the words of their checks.

Every state of a check keeps its one word through every step: passed, note, failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from advsweep.experiments.reporting.summary import WORST_CASE

AT_RISK, NOT_AT_RISK = "at risk", "not at risk"
# the checks whose failure on a deterministic model says its gradients lie: escalation's BPDA and larger Square
# answer them (advsweep.experiments.units.escalation_triggers)
GRADIENT_FAILURES = ("input gradients are not zero", "unbounded attack wins", "loss is stable under small random noise",
                     "no gradient masking: Square adds nothing to the gradient attacks")
CLOSED_WITHIN = 0.03  # BPDA closes the gap where it is within 3 points of the best attack at every ε
DETERMINISTIC = "logits are the same in two calls"
EOT_CHECK = "a randomized model is attacked with EOT"


def _note(check: dict[str, Any], why: str) -> dict[str, Any]:
    return {**check, "informational": True, "suggestion": f"{why} (was: {check.get('suggestion', '')})"}


def _curve(rows: pd.DataFrame, attack: str) -> pd.Series:
    return rows[rows["attack"] == attack].groupby("eps")["robust_accuracy"].min()


def settle(checks: list[dict[str, Any]], summary: pd.DataFrame, *, randomized: bool) -> list[dict[str, Any]]:
    """The checks of one model of one run, with what the rest of the evaluation answers turned into notes and each
    diagnosis naming the cause the other checks support (see the module notes). ``summary``: the model's rows."""
    settled = []
    for check in checks:
        name = check["name"]
        failing = not check["passed"] and not check.get("informational")
        if failing and name.startswith("accuracy falls with ε (") and not name.startswith(f"accuracy falls with ε ({WORST_CASE}"):
            norms = summary[summary["attack"] == WORST_CASE]
            falling = all(bool((_curve(rows, WORST_CASE).diff().dropna() <= 0).all())
                          for _, rows in norms.groupby("norm"))
            if falling:
                check = _note(check, "the worst case over the sweep's attacks falls with ε: a stronger attack closes "
                                     "this one's gap")
        elif failing and name.startswith("PGD at least as strong as FGSM"):
            linf = summary[summary["norm"] == "linf"]
            fgsm = _curve(linf, "fgsm")
            stronger = [a for a in dict.fromkeys(linf["attack"]) if a not in ("fgsm", WORST_CASE)
                        and not a.startswith("pgd") and len(fgsm)
                        and bool((_curve(linf, a).reindex(fgsm.index) <= fgsm + 1e-12).all())]
            if stronger:
                check = _note(check, f"{stronger[0]} of the same sweep is at least as strong as FGSM at every ε: the "
                                     "gradients carry an attack, this PGD's settings do not")
        if randomized and not check["passed"]:
            if name.startswith("cross-entropy gradients carry the attack"):
                check = {**check, "suggestion": "the model is randomized (its logits differ between two calls): "
                                                "single-draw gradients are noisy, whatever the loss; attack it with "
                                                "EOT (leave [escalation] on, or AutoAttack's rand version)"}
            elif name == "loss is stable under small random noise":
                check = {**check, "informational": True,
                         "suggestion": "the model is randomized (its logits differ between two calls), which moves "
                                       "the loss at every call: the EOT check says whether the attacks averaged it"}
            elif name == DETERMINISTIC:
                check = {**check, "informational": True,
                         "suggestion": "the model is randomized: every point, clean or adversarial, was judged by the "
                                       "mean of its draws' probabilities (the records' rule); whether the attacks "
                                       "were EOT attacks is the next check"}
        settled.append(check)
    return settled


def eot_check(run: str, model: str, attacks: Sequence[Mapping[str, Any]], *, draws: int | None,
              escalated: bool = False) -> dict[str, Any]:
    """For a randomized model: whether an attack of the sweep averaged its gradients over the model's draws
    (AutoAttack's ``rand`` version, or an attack with ``eot_draws`` above 1, or the escalation's EOT row). Without
    one, every gradient attack followed single draws: the worst case overstates robustness (Athalye, Carlini &
    Wagner, ICML 2018)."""
    eot = [a["label"] for a in attacks
           if a["params"].get("version") == "rand" or int(a["params"].get("eot_draws", 1)) > 1
           or any(int(s.get("eot_draws", 1)) > 1 for s in (a["params"].get("settings") or {}).values())]
    if escalated:
        eot.append("the escalation's EOT (APGD-CE and APGD-DLR on the mean of the model's draws)")
    return {"run": run, "model": model, "name": EOT_CHECK, "passed": bool(eot), "informational": False,
            "detail": (f"EOT attacks: {', '.join(eot)}" if eot else "no attack of the sweep averaged its gradients "
                       "over the model's draws") + (f"; every point judged by the mean of {draws} draws" if draws
                                                    else ""),
            "suggestion": "" if eot else "add `[[attacks]] name = \"autoattack\"` with `version = \"rand\"`, or leave "
                                         "[escalation] on: single-draw attacks are weak against a randomized model"}


def _escalated_gap(summary: pd.DataFrame, prefix: str) -> dict[str, dict[float, tuple[float, float]]]:
    """Per norm and ε > 0: (the ``prefix`` escalated rows' best robust accuracy, the best of every other attack
    row)."""
    gaps: dict[str, dict[float, tuple[float, float]]] = {}
    rows = summary[(summary["attack"] != WORST_CASE) & (summary["eps"] > 0)]
    for norm, cells in rows.groupby("norm"):
        mine = cells[cells["attack"].str.startswith(prefix)].groupby("eps")["robust_accuracy"].min()
        others = cells[~cells["attack"].str.startswith(prefix)].groupby("eps")["robust_accuracy"].min()
        if len(mine):
            gaps[str(norm)] = {float(e): (float(mine[e]), float(others.get(e, float("nan")))) for e in mine.index}
    return gaps


def answer_by_escalation(checks: list[dict[str, Any]], summary: pd.DataFrame,
                         escalation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Where the escalation ran: the checks its attack answers become notes when its rows reach within
    :data:`CLOSED_WITHIN` of the best other attack at every ε (the worst case then rests on an attack that follows
    the model's real function: BPDA through its non-differentiable layers, or EOT through its randomness); else they
    stay failures, saying by how much it fell short. BPDA answers the gradient checks (:data:`GRADIENT_FAILURES`);
    EOT answers those and PGD losing to FGSM, which on a randomized model are the draws' noise."""
    ran = escalation.get("ran", []) if escalation else []
    for kind, answers in (("bpda", GRADIENT_FAILURES), ("eot", (*GRADIENT_FAILURES, "PGD at least as strong as FGSM"))):
        if not any(label.startswith(f"escalated-{kind}") for label in ran):
            continue
        gaps = _escalated_gap(summary, f"escalated-{kind}")
        short = [(norm, e, mine, best) for norm, per in gaps.items() for e, (mine, best) in per.items()
                 if mine > best + CLOSED_WITHIN]
        name = {"bpda": "BPDA through the non-differentiable layers", "eot": "EOT through the model's draws"}[kind]
        answered = []
        for check in checks:
            if not check["passed"] and not check.get("informational") and check["name"].startswith(answers):
                if short:
                    norm, e, mine, best = short[0]
                    check = {**check, "suggestion": f"{check.get('suggestion', '')}; escalated {kind.upper()} ran and "
                                                    f"did not close the gap: {mine:.1%} robust at {norm} ε {e:g} against "
                                                    f"{best:.1%} by the best other attack"}
                else:
                    check = _note(check, f"answered by escalation: {name} reaches within {CLOSED_WITHIN:.0%} of the "
                                         "best attack at every ε, and the worst case includes it")
            answered.append(check)
        checks = answered
    return checks


def verdict(run: str, model: str, checks: Sequence[Mapping[str, Any]], *,
            escalation: Mapping[str, Any] | None = None, summary: pd.DataFrame | None = None) -> dict[str, Any]:
    """``{"run", "model", "verdict": "at risk" | "not at risk", "reasons": [...], "notes": n, "escalation": ...}``
    from the model's settled checks; ``escalation``: what the escalation unit ran and why, its seconds, and per norm
    and ε its rows' best robust accuracy beside the best of the other attacks."""
    failures = [c for c in checks if not c["passed"] and not c.get("informational")]
    result: dict[str, Any] = {
        "run": run, "model": model, "verdict": AT_RISK if failures else NOT_AT_RISK,
        "reasons": [f"{c['name']}: {c.get('suggestion') or c['detail']}" for c in failures],
        "notes": sum(1 for c in checks if not c["passed"] and c.get("informational"))}
    if escalation and escalation.get("ran"):
        gaps = _escalated_gap(summary, "escalated-") if summary is not None else {}
        result["escalation"] = {"why": list(escalation["why"]), "ran": list(escalation["ran"]),
                                "layers": list(escalation.get("layers", [])),
                                "seconds": float(sum(escalation.get("seconds", {}).values())),
                                "escalated_vs_best_other": {norm: {f"{e:g}": list(v) for e, v in per.items()}
                                                            for norm, per in gaps.items()}}
    return result


def describe_escalation(v: Mapping[str, Any]) -> str:
    """One line: which escalated attacks ran, why, their cost, and whether they lowered the best robust accuracy."""
    escalation = v.get("escalation")
    if not escalation:
        return ""
    lowered = [f"{norm} ε {e}: {mine:.0%} vs {best:.0%}" for norm, per in escalation["escalated_vs_best_other"].items()
               for e, (mine, best) in per.items()]
    return (f"escalated ({'; '.join(escalation['why'])}): {', '.join(escalation['ran'])} in "
            f"{escalation['seconds']:.0f} s; escalated vs best other attack, robust: {', '.join(lowered)}")


def markdown(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """The verdicts as a Markdown table: run, model, verdict, reasons."""
    lines = ["| run | model | worst case | why |", "|---|---|---|---|"]
    for v in verdicts:
        why = "; ".join(v["reasons"]) if v["reasons"] else f"no check failed ({v['notes']} notes)"
        if v.get("escalation"):
            why += "; " + describe_escalation(v)
        lines.append(f"| {v['run']} | {v['model']} | **{v['verdict']}** | {why} |")
    return "\n".join(lines) + "\n"
