"""Auto-PGD (APGD) and its targeted form APGD-T (Croce & Hein, ICML 2020), L∞ and L2.

APGD is PGD with momentum and a step size that tunes itself: it starts at 2ε, and at checkpoints (after
0.22·N steps, then at gaps shrinking by 0.03·N down to 0.06·N) it halves an example's step and restarts it from
its best point when few of the recent steps raised the loss (at most ρ = 75% of them) or when the step was
not halved last time and the best loss has not improved since. APGD-T runs the targeted DLR loss towards each
of the classes with the 2nd … (n+1)-th highest clean logits, one after the other, on the examples still robust.

References: F. Croce, M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. The schedule, the momentum step, the random start and the losses follow the
authors' code (``autoattack/autopgd_base.py``), including its first oscillation check, which compares the first
step's loss with 0. Differences, none of which weakens the attack: an example leaves the attack at its first
adversarial iterate (the authors run every step; the set of fooled examples is the same, since an example once
fooled stays fooled), the adversarial kept is that first one (the authors keep the last), and each example draws
its random start from its own stream (:func:`advsweep.attacks.core.example_stream`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.assets.validate import Invalid, integer, one_of
from advsweep.attacks.core import (
    any_iterate_view,
    AttackResult,
    check_model,
    checked_call,
    example_stream,
    loss_gradient_fn,
    model_classes,
    predict_logits,
    row_block,
    target_ranks,
)
from advsweep.attacks.pgd import result_of
from advsweep.attacks.rows import run_rows
from advsweep.defaults import APGD_CE, APGD_T, ATTACK

APGD_LOSSES: tuple[str, ...] = ("ce", "dlr")


def auto_pgd(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    loss: str = "ce",
    steps: int = APGD_CE["steps"],
    restarts: int = APGD_CE["restarts"],
    rho: float = APGD_CE["rho"],
    seed: int = ATTACK["seed"],
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> AttackResult:
    """APGD (untargeted) for every ε of a list; AutoAttack's APGD-CE is ``loss="ce"``, 100 steps, one run.

    Args:
        model, x, labels, epsilons, norm, seed, example_ids, gradient: as
            :func:`advsweep.attacks.projected_gradient_descent`.
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (difference of logits ratio, invariant to the logits' scale).
        steps: iterations per run (each costs one gradient; the random start costs one more).
        restarts: runs per ε from independent random starts, each on the examples not yet fooled.
        rho: the checkpoint's threshold: the step is halved when at most this fraction of the recent steps
            raised the loss.

    Returns:
        The any-iterate view: an example is fooled at ε if any point evaluated at that ε (or a smaller one of
        the call) was misclassified; ``x_adv`` is the first such point, else the point of highest loss.
    """
    loss = one_of("loss", loss, APGD_LOSSES, hint="APGD's losses; 'dlr' is scale-invariant")
    return _checked_run(model, x, labels, epsilons, norm=norm, loss=loss, steps=steps, restarts=restarts, rho=rho,
                        seed=seed, example_ids=example_ids, gradient=gradient, target_ranks=None)


def auto_pgd_targeted(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    steps: int = APGD_T["steps"],
    target_classes: int = APGD_T["target_classes"],
    restarts: int = APGD_T["restarts"],
    rho: float = APGD_T["rho"],
    seed: int = ATTACK["seed"],
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> AttackResult:
    """APGD-T: APGD on the targeted DLR loss, towards each of the ``target_classes`` classes with the highest clean
    logits after the top one (fewer when the model has fewer classes), on the examples still robust.

    Success is misclassification, as in AutoAttack: the target only steers the loss. Arguments as
    :func:`auto_pgd`; AutoAttack's standard setting is 100 steps, 9 target classes, one run each.
    """
    check_model(model)
    classes = model_classes(model)
    target_classes = integer("target_classes", target_classes, minimum=1)
    if classes is not None and classes < 4:
        raise Invalid("model", "a classifier of at least 4 classes (the targeted DLR loss reads the 4th logit)",
                      classes)
    ranks = target_ranks(classes or 10, target_classes)
    return _checked_run(model, x, labels, epsilons, norm=norm, loss="dlr-targeted", steps=steps, restarts=restarts,
                        rho=rho, seed=seed, example_ids=example_ids, gradient=gradient, target_ranks=ranks)


def _checked_run(model: keras.Model, x: Any, labels: Any, epsilons: Any, *, norm: str, loss: str, steps: int,
                 restarts: int, rho: float, seed: int, example_ids: Any, gradient: str,
                 target_ranks: list[int] | None) -> AttackResult:
    call = checked_call(model, x, labels, epsilons, norm=norm, seed=seed, example_ids=example_ids, steps=steps,
                        restarts=restarts, rho=rho)
    stream = "apgd-t" if target_ranks is not None else f"apgd-{loss}"
    return apgd_engine(model, call.x, call.labels, call.eps, norm=call.norm, loss=loss, seed=call.seed,
                       example_ids=call.example_ids, stream=stream, gradient=gradient, target_ranks=target_ranks,
                       **call.params)


def checkpoints(steps: int) -> tuple[int, int, int]:
    """AutoAttack's checkpoint schedule for ``steps`` iterations: (first gap, smallest gap, shrink per checkpoint),
    ``(max(⌊0.22 N⌋, 1), max(⌊0.06 N⌋, 1), max(⌊0.03 N⌋, 1))``."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def halve_step(history: np.ndarray, i: int, window: int, rho: float, reduced_last_check: bool,
               best_at_last_check: float, best: float) -> bool:
    """The checkpoint's decision after iteration ``i`` (0-based) for one example: halve the step when at most
    ``rho · window`` of the last ``window`` steps raised the loss (``history[j] > history[j − 1]``; as in the
    authors' code, ``history[−1]``, still 0, stands before the first step), or when the step was not halved at
    the last checkpoint and the best loss has not improved since."""
    raised = sum(bool(history[i - c] > history[i - c - 1]) for c in range(window))
    return raised <= window * rho or (not reduced_last_check and best_at_last_check >= best)


def start_point(x0: np.ndarray, eps: float, norm: str, rng: np.random.Generator) -> np.ndarray:
    """AutoAttack's random start: L∞ ``x + ε · t / max|t|`` with ``t`` uniform in [−1, 1]; L2 ``x + ε · t / ‖t‖₂``
    with ``t`` standard normal; clipped to [0, 1]."""
    if norm == "linf":
        t = rng.uniform(-1.0, 1.0, size=x0.shape).astype(np.float32)
        scale = np.abs(t).max()
    else:
        t = rng.standard_normal(size=x0.shape).astype(np.float32)
        scale = np.sqrt(np.sum(t * t))
    return np.clip(x0 + np.float32(eps) * t / (scale + np.float32(1e-12)), 0.0, 1.0).astype(np.float32)


def _l2_normalize(v: np.ndarray) -> np.ndarray:
    return v / (np.sqrt(np.sum(v * v)) + np.float32(1e-12))


def _l2_project(x0: np.ndarray, point: np.ndarray, eps: np.float32) -> np.ndarray:
    delta = point - x0
    return np.clip(x0 + _l2_normalize(delta) * min(eps, np.sqrt(np.sum(delta * delta))), 0.0, 1.0)


def momentum_step(x_cur: np.ndarray, x_old: np.ndarray, x0: np.ndarray, grad: np.ndarray, step: np.float32,
                  eps: np.float32, norm: str, first: bool) -> np.ndarray:
    """One APGD update of one example: a step along the normalised gradient, projected, then mixed with the last
    move (momentum 0.75; none on the first step) and projected again (onto the ε-ball and [0, 1])."""
    a = np.float32(1.0 if first else 0.75)
    previous_move = x_cur - x_old
    if norm == "linf":
        moved = np.clip(np.minimum(np.maximum(x_cur + step * np.sign(grad), x0 - eps), x0 + eps), 0.0, 1.0)
        mixed = x_cur + (moved - x_cur) * a + previous_move * (np.float32(1.0) - a)
        return np.clip(np.minimum(np.maximum(mixed, x0 - eps), x0 + eps), 0.0, 1.0).astype(np.float32)
    moved = _l2_project(x0, x_cur + step * _l2_normalize(grad), eps)
    mixed = x_cur + (moved - x_cur) * a + previous_move * (np.float32(1.0) - a)
    return _l2_project(x0, mixed, eps).astype(np.float32)


def apgd_engine(
    model: keras.Model,
    x: np.ndarray,
    labels: np.ndarray,
    eps: np.ndarray,
    *,
    norm: str,
    loss: str,
    steps: int,
    restarts: int,
    rho: float,
    seed: int,
    example_ids: np.ndarray,
    stream: str,
    gradient: str,
    target_ranks: list[int] | None,
    limit: np.ndarray | None = None,
) -> AttackResult:
    """APGD on validated inputs over an ascending ε grid, every example running its own programme side by side
    with the others in the rows of fixed-shape model calls (as :func:`advsweep.attacks.pgd.pgd_engine` does).

    An example's programme: for each ε of the grid (ascending), for each target (APGD-T) and each restart, one
    run of ``steps`` iterations, ending at the first misclassified point; the programme ends there (the example
    is then fooled at every larger ε too). For one run the algorithm is, with η the step size and x₀ the input::

        x = start (random point of the ε-ball); evaluate loss and ∇ at x; x_best = x; η = 2ε; k = 0.22·N
        for i in 0 … N−1:
            z = P(x + η · normalize(∇)); x_new = P(x + a·(z − x) + (1 − a)·(x − x_previous))   (a = 1, then 0.75)
            evaluate loss and ∇ at x_new; keep x_best (highest loss) and its ∇
            every k iterations: if at most ρ·k of the last k steps raised the loss, or (η was not halved at the
                last checkpoint and the best loss did not improve since): η ← η / 2, x ← x_best, ∇ ← ∇_best;
                k ← max(k − 0.03·N, 0.06·N)

    P projects onto the ε-ball around x₀ and clips to [0, 1]. ``limit`` ``(N,)`` (an ensemble's cascade) stops an
    example's programme at that position of the ascending ε order: the budgets from there on are someone
    else's.
    """
    n, k_count = len(x), len(eps)
    first_gap, min_gap, shrink = checkpoints(steps)
    value_loss_and_gradient = loss_gradient_fn(model, loss, gradient)
    clean_logits = predict_logits(model, x, example_ids=example_ids)
    clean_wrong = np.argmax(clean_logits, axis=-1) != labels
    ranking = np.argsort(clean_logits, axis=-1, kind="stable")  # ascending: the r-th highest is ranking[:, -r]
    targets_by_run = [None] if target_ranks is None else target_ranks
    limit = np.full(n, k_count, dtype=np.int64) if limit is None else np.asarray(limit, dtype=np.int64)

    found = np.zeros((k_count, n), dtype=bool)
    x_found = np.repeat(x[None], k_count, axis=0)
    logits_found = np.repeat(clean_logits[None], k_count, axis=0)
    x_end = np.repeat(x[None], k_count, axis=0)  # the highest-loss point of the budget's last run
    logits_end = np.repeat(clean_logits[None], k_count, axis=0)
    zero = eps == 0.0
    found[zero] = clean_wrong
    order = np.argsort(eps, kind="stable")
    runs = [(position, target, restart) for position in range(k_count) for target in range(len(targets_by_run))
            for restart in range(restarts)]

    # per row: where its example is in its programme, and the run's state
    block = row_block(model)
    row_run = np.zeros(block, dtype=np.int64)
    row_iter = np.full(block, -1)  # −1: the start point is being evaluated
    shape = (block,) + x.shape[1:]
    x_rows, x_old, x_best, grad_rows, grad_best = (np.zeros(shape, np.float32) for _ in range(5))
    logits_best = np.zeros((block, clean_logits.shape[1]), np.float32)
    class_rows = np.zeros((block, 2) if target_ranks is not None else block, np.int64)
    eps_rows, step_rows = np.zeros(block, np.float32), np.zeros(block, np.float32)
    loss_best, loss_best_last_check = np.zeros(block, np.float32), np.zeros(block, np.float32)
    reduced_last_check = np.ones(block, dtype=bool)
    gap, since_check = np.zeros(block, np.int64), np.zeros(block, np.int64)
    history = np.zeros((block, steps), np.float32)

    def start_run(row: int, example: int, run: int) -> bool:
        """Begin the example's next run from ``run`` on, skipping ε = 0 and the budgets at and above its limit;
        ``False`` when it is fooled (here or at a smaller ε) or has no run left."""
        while run < len(runs):
            position, target, restart = runs[run]
            k = order[position]
            if position >= limit[example] or found[order[: position + 1], example].any():
                return False  # fooled at this or a smaller ε: the any-iterate view carries it upwards
            if not zero[k]:
                row_run[row], row_iter[row] = run, -1
                eps_rows[row] = eps[k]
                rank = targets_by_run[target]
                class_rows[row] = labels[example] if rank is None else (labels[example], ranking[example, -rank])
                name = stream if rank is None else f"{stream}{rank}"
                rng = example_stream(seed, int(example_ids[example]), name, float(eps[k]), restart)
                x_rows[row] = start_point(x[example], float(eps[k]), norm, rng)
                return True
            run += 1
        return False

    def evaluate() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits_t, loss_t, grad_t = value_loss_and_gradient(tf.constant(x_rows), tf.constant(class_rows))
        return logits_t.numpy(), loss_t.numpy(), grad_t.numpy()

    def advance(row: int, example: int, outputs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> bool:
        logits, losses, grads = outputs
        run = int(row_run[row])
        k = order[runs[run][0]]
        fooled = int(np.argmax(logits[row])) != labels[example]
        if fooled and not found[k, example]:
            found[k, example], x_found[k, example], logits_found[k, example] = True, x_rows[row], logits[row]
        i = int(row_iter[row])
        if i < 0:  # the start point: the run's state begins here
            x_best[row], grad_best[row], grad_rows[row] = x_rows[row], grads[row], grads[row]
            logits_best[row], loss_best[row] = logits[row], losses[row]
            loss_best_last_check[row], reduced_last_check[row] = losses[row], True
            step_rows[row], gap[row], since_check[row] = 2.0 * eps_rows[row], first_gap, 0
            history[row] = 0.0
            x_old[row] = x_rows[row]
        else:
            history[row, i] = losses[row]
            grad_rows[row] = grads[row]
            if losses[row] > loss_best[row]:
                x_best[row], grad_best[row], logits_best[row] = x_rows[row], grads[row], logits[row]
                loss_best[row] = losses[row]
            since_check[row] += 1
            if since_check[row] == gap[row]:
                reduce = halve_step(history[row], i, int(gap[row]), rho, bool(reduced_last_check[row]),
                                    float(loss_best_last_check[row]), float(loss_best[row]))
                reduced_last_check[row], loss_best_last_check[row] = reduce, loss_best[row]
                if reduce:
                    step_rows[row] /= 2.0
                    x_rows[row], grad_rows[row] = x_best[row], grad_best[row]
                gap[row], since_check[row] = max(int(gap[row]) - shrink, min_gap), 0
        row_iter[row] = i + 1
        if fooled or i + 1 >= steps:
            if not fooled:
                x_end[k, example], logits_end[k, example] = x_best[row], logits_best[row]
            return start_run(row, example, run + 1)
        current = x_rows[row].copy()
        x_rows[row] = momentum_step(current, x_old[row], x[example], grad_rows[row], step_rows[row],
                                    eps_rows[row], norm, first=i + 1 == 0)
        x_old[row] = current
        return True

    spent = run_rows(example_ids, lambda row, example: start_run(row, example, 0), evaluate, advance, block)

    rank_order = np.broadcast_to(order[:, None], found.shape)
    x_adv, logits_adv = any_iterate_view(rank_order, found, x_found, logits_found, x_end, logits_end)
    return dataclasses.replace(result_of(eps, x_adv, logits_adv, labels, None, norm), evaluations=spent)
