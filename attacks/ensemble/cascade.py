"""AutoAttack (Croce & Hein, ICML 2020) as one attack: its standard version (APGD-CE, APGD-T, FAB-T, Square), its
``plus`` version (APGD-CE and APGD-DLR with 5 restarts, untargeted FAB with 5, Square, APGD-T and FAB-T with 9
targets) and its ``rand`` version for randomized models (APGD-CE and APGD-DLR, each gradient averaged over 20 draws
of the model);
L∞, L2, and L1 with the L1 version's settings ("Mind the box", Croce & Hein, ICML 2021: l1-APGD-CE with 5 restarts
and l1-APGD-T with 5 targets, both through the radii 3ε, 2ε, ε; FAB-T and Square in L1).

The attacks run in that order, each on the (example, ε) pairs the attacks before it left robust, each from the
clean input; an example's result at ε is the first adversarial any of them found there. Over an ε grid the
ensemble is one more cascade: an example fooled at ε is fooled at every larger ε (the adversarial lies inside
every larger ball), so each attack only works on the budgets below the smallest one already broken. At one ε
this is exactly AutoAttack's ``run_standard_evaluation``; over a grid it gives, for each ε, the result
AutoAttack would give at that ε alone, with every attack's per-example random stream keyed by ε.

``result.found_by`` names, per (ε, example), the attack that fooled it, which is what the ensemble's checks
read: Square (no gradient) fooling examples the gradient attacks left robust is AutoAttack's sign of gradient
masking, and the scale-invariant attacks (APGD-T's DLR loss, FAB-T) fooling many more examples than APGD-CE's
cross-entropy is the sign of a saturated softmax (:func:`advsweep.attacks.evaluation.checks.check_ensemble`).

Every adversarial an attack finds is confirmed by a fresh call of the model on it, as the authors'
``run_standard_evaluation`` does after each attack: it counts only if that call misclassifies it too. For a
deterministic model the call repeats what the attack saw; for a randomized one (logits that change between two
calls on one input) a lucky draw during the attack does not count as a broken example.

``result.loss_rise`` is, per (ε, example), the largest incomplete-optimization measure of the members that trace
their loss (the APGD members: :class:`advsweep.attacks.engine.programme.LossTrace`): for an example the ensemble leaves robust,
whether any of their runs ended with its loss still rising.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from advsweep.attacks.gradient.apgd import apgd_engine
from advsweep.attacks.engine.core import (
    AttackResult,
    checked_call,
    classes_of,
    predict_logits,
    target_ranks,
)
from advsweep.attacks.ensemble.fab import fab_engine
from advsweep.attacks.engine.spec import L1_NORMS, check_combination, members_of
from advsweep.attacks.ensemble.square import square_engine
from advsweep.defaults import ATTACK, AUTOATTACK, AUTOATTACK_VERSIONS


def autoattack(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = ATTACK["seed"],
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> AttackResult:
    """AutoAttack for every ε of a list.

    Args:
        model, x, labels, epsilons, norm, seed, example_ids, gradient: as
            :func:`advsweep.attacks.projected_gradient_descent`.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square), ``"plus"`` (more restarts, APGD-DLR and untargeted
            FAB besides) or ``"rand"`` (APGD-CE and APGD-DLR with 20 draws per gradient, for a model whose logits
            change between two calls), with AutoAttack's settings for it
            (:data:`advsweep.defaults.AUTOATTACK_VERSIONS`).
        attacks: the attacks and their order, distinct names from ``("apgd-ce", "apgd-dlr", "apgd-t", "fab-t",
            "fab", "square")`` (AutoAttack's "custom" version); ``None``: the version's.
        settings: changes to the version's settings, ``{member: {parameter: value}}`` (e.g. ``{"square":
            {"queries": 1000}}`` for a quicker, weaker look).

    Returns:
        The worst case over the attacks per (ε, example), with ``found_by`` naming the attack that fooled it
        (``""`` where none did; ``"clean"`` where the input is misclassified as it is).
    """
    call = checked_call(model, x, labels, epsilons, norm=norm, seed=seed, example_ids=example_ids, version=version,
                        settings=settings or {}, gradient=gradient, norms=L1_NORMS)
    changes = version_settings(call.params["version"], call.norm, call.params["settings"])
    attacks = members_of(call.params["version"], attacks)
    x, labels, eps = call.x, call.labels, call.eps
    classes = classes_of(model, x)
    check_combination("autoattack", {"attacks": attacks}, call.norm, classes)  # the settings: version_settings
    return ensemble_engine(model, x, labels, eps, norm=call.norm, attacks=attacks, seed=call.seed,
                           example_ids=call.example_ids, gradient=gradient, classes=classes, settings=changes)


def version_settings(version: str, norm: str, settings: Mapping[str, Mapping[str, Any]]
                     ) -> dict[str, dict[str, Any]]:
    """Each member's changes to :data:`AUTOATTACK`'s settings: the version's, its threat model's (``by_norm``: the
    L1 version's), then ``settings``' (checked by :func:`~advsweep.attacks.engine.spec.check_combination`)."""
    preset = AUTOATTACK_VERSIONS[version]
    by_norm = preset.get("by_norm", {}).get(norm, {})
    check_combination("autoattack", {"settings": settings}, norm)
    return {member: {**preset["settings"].get(member, {}), **by_norm.get(member, {}), **settings.get(member, {})}
            for member in AUTOATTACK}


def _engines(norm: str, seed: int, gradient: str, classes: int,
             settings: Mapping[str, Mapping[str, Any]]) -> dict[str, Callable[..., AttackResult]]:
    """Each attack of the ensemble with AutoAttack's standard settings (and ``settings``' changes), as
    ``(model, x, labels, eps, example_ids=, limit=) → AttackResult``."""
    merged = {name: {**AUTOATTACK[name], **settings.get(name, {})} for name in AUTOATTACK}
    fab, untargeted, square = merged["fab-t"], merged["fab"], merged["square"]
    fab_ranks = target_ranks(classes, fab["target_classes"])

    def apgd(member: str, loss: str) -> Callable[..., AttackResult]:
        options = merged[member]
        ranks = target_ranks(classes, options["target_classes"]) if member == "apgd-t" else None
        return lambda model, x, labels, eps, **rows: apgd_engine(
            model, x, labels, eps, norm=norm, loss=loss, steps=options["steps"], restarts=options["restarts"],
            rho=options["rho"], seed=seed, stream=member, gradient=gradient, target_ranks=ranks,
            eot_draws=options["eot_draws"], large_radii=options["large_radii"], **rows)

    return {
        "apgd-ce": apgd("apgd-ce", "ce"),
        "apgd-dlr": apgd("apgd-dlr", "dlr"),
        "apgd-t": apgd("apgd-t", "dlr-targeted"),
        "fab-t": lambda model, x, labels, eps, **rows: fab_engine(
            model, x, labels, eps, norm=norm, steps=fab["steps"], target_ranks=fab_ranks, restarts=fab["restarts"],
            alpha_max=fab["alpha_max"], eta=fab["eta"], beta=fab["beta"], seed=seed, gradient=gradient, **rows),
        "fab": lambda model, x, labels, eps, **rows: fab_engine(
            model, x, labels, eps, norm=norm, steps=untargeted["steps"], target_ranks=None,
            restarts=untargeted["restarts"], alpha_max=untargeted["alpha_max"], eta=untargeted["eta"],
            beta=untargeted["beta"], seed=seed, gradient=gradient, **rows),
        "square": lambda model, x, labels, eps, **rows: square_engine(
            model, x, labels, eps, norm=norm, queries=square["queries"], p_init=square["p_init"],
            restarts=square["restarts"], seed=seed, **rows),
    }


def ensemble_engine(model: keras.Model, x: np.ndarray, labels: np.ndarray, eps: np.ndarray, *, norm: str,
                    attacks: Sequence[str], seed: int, example_ids: np.ndarray, gradient: str,
                    classes: int, settings: Mapping[str, Mapping[str, Any]]) -> AttackResult:
    """The cascade on validated inputs (see the module notes)."""
    engines = _engines(norm, seed, gradient, classes, settings)
    k_count, n = len(eps), len(x)
    order = np.argsort(eps, kind="stable")
    rank = np.empty(k_count, np.int64)
    rank[order] = np.arange(k_count)  # each ε's position in the ascending order
    started = time.perf_counter()
    clean_logits = predict_logits(model, x, example_ids=example_ids)
    clean_wrong = np.argmax(clean_logits, axis=-1) != labels
    found = np.zeros((k_count, n), dtype=bool)
    found_by = np.full((k_count, n), "", dtype=object)
    found[eps == 0.0] = clean_wrong
    found_by[:, clean_wrong] = "clean"  # fooled as it is, at every ε: no attack needed
    found[:, clean_wrong] = True
    x_adv = np.repeat(x[None], k_count, axis=0)
    logits = np.repeat(clean_logits[None], k_count, axis=0)
    first, spent = True, 0
    loss_rise = np.full((k_count, n), np.nan, np.float32)  # the largest of the traced members' (module notes)
    traced = False
    cost: dict[str, dict[str, float]] = {
        "clean": {"examples": n, "seconds": round(time.perf_counter() - started, 3), "forward": n, "gradient": 0}}
    for name in attacks:
        limit = fooled_from(found, order)
        positive = eps[order] > 0.0
        active = np.flatnonzero([positive[: limit[i]].any() for i in range(n)])
        if len(active) == 0:
            break
        result = engines[name](model, x[active], labels[active], eps, example_ids=example_ids[active],
                               limit=limit[active])
        spent += result.evaluations or 0
        if result.loss_rise is not None:
            loss_rise[:, active] = np.fmax(loss_rise[:, active], result.loss_rise)
            traced = True
        cost[name] = next(iter((result.cost or {"": {}}).values()))
        fooled = result.success & ~found[:, active]
        for position in range(k_count):  # only the budgets below the attack's limit are its to decide
            k = order[position]
            fooled[k] &= position < limit[active]
        newly_k, newly_i = np.nonzero(fooled)
        new_logits = result.logits[newly_k, newly_i]
        new_x = result.x_adv[newly_k, newly_i]
        if len(newly_i):  # each adversarial confirmed by a fresh forward pass, counted with the member's
            cost[name] = {**cost[name], "forward": cost[name].get("forward", 0) + len(newly_i)}
            spent += len(newly_i)
            newly_k, newly_i, new_x, new_logits = _confirmed(model, newly_k, newly_i, new_x, labels[active],
                                                             example_ids[active], rank)
        columns = active[newly_i]
        found[newly_k, columns] = True
        found_by[newly_k, columns] = name
        x_adv[newly_k, columns] = new_x
        logits[newly_k, columns] = new_logits
        if first:  # the robust examples report the first attack's strongest point (APGD-CE: highest loss)
            keep = ~result.success
            rows_k, rows_i = np.nonzero(keep)
            x_adv[rows_k, active[rows_i]] = result.x_adv[rows_k, rows_i]
            logits[rows_k, active[rows_i]] = result.logits[rows_k, rows_i]
            first = False
    success = np.argmax(logits, axis=-1) != labels[None]
    return AttackResult(epsilons=eps, x_adv=x_adv, logits=logits, success=success, norm=norm,
                        found_by=np.where(success, found_by, "").astype(str), evaluations=spent, cost=cost,
                        loss_rise=loss_rise if traced else None)


def _confirmed(model: keras.Model, k: np.ndarray, i: np.ndarray, x: np.ndarray, labels: np.ndarray,
               example_ids: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The adversarials ``x`` (found at ε index ``k`` for example ``i``) that a fresh call of the model misclassifies
    too, with that call's logits; an example confirmed at one ε counts, with that point, at every larger ε where the
    attack fooled it (the point lies inside every larger ball), so that robust accuracy never rises with ε.
    Returns ``(k, i, x, logits)`` of the adversarials kept."""
    fresh = predict_logits(model, x, example_ids=example_ids[i])
    held = np.argmax(fresh, axis=-1) != labels[i]
    smallest: dict[int, int] = {}  # example → the row of its confirmed adversarial at the smallest ε
    for row in np.flatnonzero(held).tolist():
        if int(i[row]) not in smallest or rank[k[row]] < rank[k[smallest[int(i[row])]]]:
            smallest[int(i[row])] = row
    keep = held.copy()
    x, fresh = x.copy(), fresh.copy()
    for row in np.flatnonzero(~held).tolist():
        first = smallest.get(int(i[row]))
        if first is not None and rank[k[row]] > rank[k[first]]:
            keep[row], x[row], fresh[row] = True, x[first], fresh[first]
    return k[keep], i[keep], x[keep], fresh[keep]


def fooled_from(found: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``(N,)``: per example, the position in the ascending ε ``order`` of the smallest budget at which
    ``found`` ``(K, N)`` has it fooled (so it is fooled from there on: an adversarial found at ε lies inside
    every larger ball); ``K`` where it is fooled nowhere. An attack of a cascade attacks the positions below."""
    fooled = np.logical_or.accumulate(found[order], axis=0)  # (K, N) in ascending ε
    return np.where(fooled.any(axis=0), np.argmax(fooled, axis=0), len(order)).astype(np.int64)
