"""Projected gradient descent (L∞ and L2), with random start and restarts; BIM is PGD without them.

References:
    A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018 (PGD; the MNIST setting ε = 0.3, 40 steps of 0.01, random start);
    A. Kurakin, I. Goodfellow, S. Bengio, "Adversarial Examples in the Physical World", ICLR Workshop
    2017 (BIM).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.attacks.core import (
    BLOCK,
    AttackResult,
    any_iterate_view,
    check_epsilons,
    check_example_ids,
    check_flag,
    check_inputs,
    check_loss,
    check_model,
    check_norm,
    check_positive_int,
    check_seed,
    check_stepsize,
    example_stream,
    gradient_fn,
    normalize,
    predict_logits,
    project,
    random_start as draw_start,
    success_of,
)
from advsweep.defaults import ATTACK, ITERATIVE


def projected_gradient_descent(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    steps: int | None = None,
    rel_stepsize: float | None = None,
    abs_stepsize: float | None = None,
    random_start: bool = ITERATIVE[("pgd", "linf")]["random_start"],
    restarts: int = ATTACK["restarts"],
    loss: str = ATTACK["loss"],
    targets: Any = None,
    early_stop: bool = ATTACK["early_stop"],
    seed: int = ATTACK["seed"],
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> AttackResult:
    """PGD for every ε of a list (Madry et al. 2018).

    Each step: ``x ← clip_[0,1](Π_ε(x ± stepsize · normalize(∇_x loss)))``, from a uniform random
    point of the ε-ball (``random_start``) or from ``x``. The ε grid is walked upwards.

    Args:
        model: logits model, float32 ``(N, 28, 28, 1)`` in [0, 1] → ``(N, 10)``.
        x: clean images ``(N, 28, 28, 1)`` in [0, 1].
        labels: true classes ``(N,)`` in 0..9 (always required).
        epsilons: one ε or a list, each in [0, 1] (L∞) or [0, 28] (L2).
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps (default 40 for L∞, 50 for L2, as foolbox: :data:`advsweep.defaults.ITERATIVE`).
        rel_stepsize: step size as a fraction of ε (default 0.01/0.3 for L∞, 0.025 for L2).
        abs_stepsize: an absolute step size; takes precedence over ``rel_stepsize``.
        random_start: start from a uniform point of the ε-ball (on by default for PGD, off for BIM).
        restarts: independent runs per ε; later runs attack only the examples not yet fooled.
        loss: ``"ce"`` or ``"margin"`` (Carlini–Wagner).
        targets: target classes for a targeted attack.
        early_stop: stop attacking an example at its first adversarial iterate (on by default: the result
            is the same and the remaining steps are saved). Without it every run takes all its steps and the
            result also carries the last-iterate view (``result.last``), which is what foolbox returns.
        seed: seeds the random starts, with each example's ``example_ids`` entry (see
            :func:`advsweep.attacks.core.example_stream`).
        example_ids: the examples' test-set indices ``(N,)`` (default ``0 … N−1``): they key each
            example's random stream and its row in every model call, so results do not depend on how
            examples are chunked or batched.
        gradient: ``"fast"`` (custom backward passes through a frozen VGG16 base, the default) or
            ``"plain"`` (``tf.GradientTape`` through the Keras model); equal up to float rounding.

    Returns:
        An :class:`~advsweep.attacks.core.AttackResult` with ``K = len(epsilons)`` rows: the any-iterate view
        (an example fooled at one ε stays fooled at every larger ε), and ``.last`` without early stop.
    """
    return _checked_run("pgd", model, x, labels, epsilons, norm=norm, steps=steps, rel_stepsize=rel_stepsize,
                        abs_stepsize=abs_stepsize, random_start=random_start, restarts=restarts, loss=loss,
                        targets=targets, early_stop=early_stop, seed=seed, example_ids=example_ids, gradient=gradient)


def basic_iterative_method(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    steps: int | None = None,
    rel_stepsize: float | None = None,
    abs_stepsize: float | None = None,
    loss: str = ATTACK["loss"],
    targets: Any = None,
    early_stop: bool = ATTACK["early_stop"],
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> AttackResult:
    """BIM (Kurakin et al. 2017): PGD from the clean input, no random start, one run (foolbox's defaults:
    10 steps of 0.2 ε). Arguments as :func:`projected_gradient_descent`."""
    return _checked_run("bim", model, x, labels, epsilons, norm=norm, steps=steps, rel_stepsize=rel_stepsize,
                        abs_stepsize=abs_stepsize, random_start=False, restarts=1, loss=loss, targets=targets,
                        early_stop=early_stop, seed=0, example_ids=example_ids, gradient=gradient)


def _checked_run(attack: str, model: keras.Model, x: Any, labels: Any, epsilons: Any, *, norm: str,
                 steps: int | None, rel_stepsize: float | None, abs_stepsize: float | None, random_start: bool,
                 restarts: int, loss: str, targets: Any, early_stop: bool, seed: int, example_ids: Any,
                 gradient: str) -> AttackResult:
    """Check every argument, fill in the defaults (:data:`advsweep.defaults.ITERATIVE`), and run :func:`pgd_engine`."""
    check_model(model)
    norm, loss = check_norm(norm), check_loss(loss)
    defaults = ITERATIVE[(attack, norm)]
    steps = check_positive_int("steps", defaults["steps"] if steps is None else steps)
    rel_stepsize = defaults["rel_stepsize"] if rel_stepsize is None else rel_stepsize
    restarts = check_positive_int("restarts", restarts)
    check_stepsize(rel_stepsize, abs_stepsize)
    random_start, early_stop = check_flag("random_start", random_start), check_flag("early_stop", early_stop)
    seed = check_seed(seed)
    x, labels, targets = check_inputs(x, labels, targets, model=model)
    eps = check_epsilons(epsilons, norm, x.shape[1:])
    ids = check_example_ids(example_ids, len(x))
    eps_matrix = np.broadcast_to(eps[:, None], (len(eps), len(x)))
    steps_matrix = (np.full(eps_matrix.shape, float(abs_stepsize)) if abs_stepsize is not None
                    else float(rel_stepsize) * eps_matrix)
    return pgd_engine(model, x, labels, targets, eps_matrix, steps_matrix, norm=norm, steps=steps, loss=loss,
                      random_start=random_start, restarts=restarts, early_stop=early_stop, seed=int(seed),
                      example_ids=ids, attack=attack, grid=eps, gradient=gradient)


def pgd_engine(
    model: keras.Model,
    x: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray | None,
    eps: np.ndarray,
    stepsizes: np.ndarray,
    *,
    norm: str,
    steps: int,
    loss: str,
    random_start: bool,
    restarts: int,
    early_stop: bool,
    seed: int,
    example_ids: np.ndarray,
    attack: str,
    grid: np.ndarray,
    gradient: str = "fast",
) -> AttackResult:
    """PGD on validated inputs, each example with its own ascending budgets ``eps (K, N)`` and step sizes.

    For one example ``x`` with label ``y`` and one budget ε, the algorithm is::

        x_t = x + uniform draw from the ε-ball, clipped to [0, 1]    (random_start; else x_t = x)
        repeat `steps` times:
            g   = ∇_x loss(model(x_t), y)                            (targeted: descend towards the target)
            x_t = clip_[0,1](Π_ε(x_t + stepsize · normalize(g)))      (normalize: sign for L∞, unit L2 for L2)
        the first x_t the model gets wrong is the adversarial (any-iterate view); the last x_t is result.last
        restart from a new random point while not fooled and restarts remain

    Every example runs its own programme: for each of its budgets (ascending), up to ``restarts`` runs of
    ``steps`` steps, each from its own random start; with ``early_stop`` the programme ends at the first
    adversarial iterate (which is then adversarial at every larger budget too). Programmes run side by
    side in the :data:`~advsweep.attacks.core.BLOCK` rows of one fixed-shape model call: example ``i`` always in
    row ``example_ids[i] % BLOCK``, and a row is handed to the next example of its queue as soon as its
    example's programme ends, so early stop saves whole model calls without ever changing the shape.
    ``grid`` is the ``(K,)`` budgets the result reports as its ``epsilons``; ``attack`` names the random
    streams (:func:`~advsweep.attacks.core.example_stream`).
    """
    n, k_count = len(x), eps.shape[0]
    classes = targets if targets is not None else labels
    direction = -1.0 if targets is not None else 1.0
    value_and_gradient = gradient_fn(model, loss, gradient)
    clean_logits = predict_logits(model, x, example_ids=example_ids)

    found = np.zeros((k_count, n), dtype=bool)  # any-iterate view
    x_found = np.repeat(x[None], k_count, axis=0)
    logits_found = np.repeat(clean_logits[None], k_count, axis=0)
    x_last = np.repeat(x[None], k_count, axis=0)  # each budget's run end point (first successful restart)
    logits_last = np.repeat(clean_logits[None], k_count, axis=0)
    zero = eps == 0.0  # no run: the clean input is the only point of the ball
    clean_wrong = success_of(clean_logits, labels, targets)
    found[zero] = np.broadcast_to(clean_wrong, (k_count, n))[zero]

    # the programme of each example is a list of (budget index, restart); ascending budgets
    order = np.argsort(eps, axis=0, kind="stable")
    slots = example_ids % BLOCK
    queues = [[int(i) for i in np.flatnonzero(slots == s)] for s in range(BLOCK)]
    row_example = np.full(BLOCK, -1)
    row_budget = np.zeros(BLOCK, dtype=np.int64)  # position in the example's ascending order
    row_restart = np.zeros(BLOCK, dtype=np.int64)
    row_step = np.zeros(BLOCK, dtype=np.int64)
    x_rows = np.zeros((BLOCK,) + x.shape[1:], dtype=np.float32)
    x0_rows = np.zeros_like(x_rows)
    class_rows = np.zeros(BLOCK, dtype=np.int64)
    eps_rows = np.zeros(BLOCK, dtype=np.float32)
    step_rows = np.zeros(BLOCK, dtype=np.float32)

    def start(row: int, example: int, position: int, restart: int) -> None:
        k = order[position, example]
        row_example[row], row_budget[row], row_restart[row], row_step[row] = example, position, restart, 0
        x0_rows[row], class_rows[row] = x[example], classes[example]
        eps_rows[row], step_rows[row] = eps[k, example], stepsizes[k, example]
        if random_start:
            rng = example_stream(seed, int(example_ids[example]), attack, float(eps[k, example]), restart)
            x_rows[row] = draw_start(x[example][None], eps[k, example:example + 1], norm, [rng])[0]
        else:
            x_rows[row] = x[example]

    def next_run(row: int, example: int, position: int) -> None:
        """Start the example's next budget (from ``position``) that needs a run, else free the row."""
        while position < k_count:
            k = order[position, example]
            if not zero[k, example] and not (early_stop and found[:, example][order[:position + 1, example]].any()):
                start(row, example, position, 0)
                return
            position += 1
        row_example[row] = -1
        refill(row)

    def refill(row: int) -> None:
        if queues[row]:
            next_run(row, queues[row].pop(0), 0)

    for row in range(BLOCK):
        refill(row)
    while (row_example >= 0).any():
        logits_t, gradient_t = value_and_gradient(tf.constant(x_rows), tf.constant(class_rows))
        logits = logits_t.numpy()
        active = np.flatnonzero(row_example >= 0)
        hit = success_of(logits[active], labels[row_example[active]],
                         None if targets is None else targets[row_example[active]])
        # the PGD step (foolbox's update, eager so that it matches foolbox to the bit): move along the
        # normalised gradient (sign for L∞, unit L2 norm for L2), project onto the ε-ball, clip to [0, 1]
        moved_t = tf.constant(x_rows) + direction * (
            tf.reshape(tf.constant(step_rows), (-1,) + (1,) * (x.ndim - 1)) * normalize(gradient_t, norm))
        moved = tf.clip_by_value(project(moved_t, tf.constant(x0_rows), tf.constant(eps_rows), norm), 0.0, 1.0).numpy()
        for row, success in zip(active.tolist(), hit.tolist()):
            example, position = int(row_example[row]), int(row_budget[row])
            k = order[position, example]
            if success and not found[k, example]:
                found[k, example], x_found[k, example], logits_found[k, example] = True, x_rows[row], logits[row]
            if row_step[row] < steps and not (early_stop and success):
                row_step[row] += 1
                x_rows[row] = moved[row]
                continue
            # the run ends here: its end point is the budget's last iterate (the first run's, or a later
            # restart's that succeeds)
            if row_restart[row] == 0 or success:
                x_last[k, example], logits_last[k, example] = x_rows[row], logits[row]
            if row_restart[row] + 1 < restarts and not found[k, example]:
                start(row, example, position, int(row_restart[row]) + 1)
            else:
                next_run(row, example, position + 1)

    # carried to every larger budget: each reports the first adversarial of the smallest budget that had one
    x_adv, logits_adv = any_iterate_view(order, found, x_found, logits_found, x_last, logits_last)
    last = None if early_stop else result_of(grid, x_last, logits_last, labels, targets, norm)
    return dataclasses.replace(result_of(grid, x_adv, logits_adv, labels, targets, norm), last=last)


def result_of(epsilons: np.ndarray, x_adv: np.ndarray, logits: np.ndarray, labels: np.ndarray,
              targets: np.ndarray | None, norm: str) -> AttackResult:
    """An :class:`AttackResult` whose success matrix is read off the logits ``(K, N, C)``."""
    success = np.stack([success_of(row, labels, targets) for row in logits]) if len(logits) else np.zeros(
        (0, len(labels)), dtype=bool)
    return AttackResult(epsilons=epsilons, x_adv=x_adv, logits=logits, success=success, norm=norm,
                        targeted=targets is not None)
