"""Projected gradient descent (L∞ and L2), with random start and restarts; BIM is PGD without them.

References:
    A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018 (PGD; the MNIST setting ε = 0.3, 40 steps of 0.01, random start);
    A. Kurakin, I. Goodfellow, S. Bengio, "Adversarial Examples in the Physical World", ICLR Workshop
    2017 (BIM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.attacks.engine.core import (
    BLOCK,
    AttackResult,
    check_norm,
    checked_call,
)
from advsweep.attacks.engine.geometry import normalize, project_in_box, uniform_start as draw_start
from advsweep.attacks.engine.programme import Outputs, Plan, Programme, Runs, Step, grid_budgets, run_engine
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
            :func:`advsweep.attacks.engine.core.example_stream`).
        example_ids: the examples' test-set indices ``(N,)`` (default ``0 … N−1``): they key each
            example's random stream and its row in every model call, so results do not depend on how
            examples are chunked or batched.
        gradient: ``"auto"`` (the default: the faster of the two on this machine, measured once,
            :mod:`advsweep.attacks.engine.plan`), ``"fast"`` (custom backward passes through a frozen VGG16 base) or
            ``"plain"`` (``tf.GradientTape`` through the Keras model); equal up to float rounding.

    Returns:
        An :class:`~advsweep.attacks.engine.core.AttackResult` with ``K = len(epsilons)`` rows: the any-iterate view
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
                 steps: int | None, rel_stepsize: float | None, targets: Any, seed: int, example_ids: Any,
                 **params: Any) -> AttackResult:
    """Fill in the defaults (:data:`advsweep.defaults.ITERATIVE`), check every argument
    (:func:`~advsweep.attacks.engine.core.checked_call`), and run :func:`pgd_engine`."""
    defaults = ITERATIVE[(attack, check_norm(norm))]
    steps = defaults["steps"] if steps is None else steps
    rel_stepsize = defaults["rel_stepsize"] if rel_stepsize is None else rel_stepsize
    call = checked_call(model, x, labels, epsilons, norm=norm, seed=seed, example_ids=example_ids, targets=targets,
                        steps=steps, rel_stepsize=rel_stepsize, **params)
    return pgd_engine(model, call.x, call.labels, call.targets, grid_budgets(call.eps, len(call.x)), norm=call.norm,
                      seed=call.seed, example_ids=call.example_ids, attack=attack, grid=call.eps, **call.params)


class PgdStep(Step):
    """PGD's iteration over a block of examples, each in its own run (Madry et al. 2018)::

        x_t = x + uniform draw from the ε-ball, clipped to [0, 1]    (random_start; else x_t = x)
        repeat `steps` times:
            g   = ∇_x loss(model(x_t), y)                            (targeted: descend towards the target)
            x_t = clip_[0,1](Π_ε(x_t + stepsize · normalize(g)))      (normalize: sign for L∞, unit L2 for L2)

    The step runs eagerly, with foolbox's sequence of float32 operations, so that it matches foolbox to the bit.
    A run evaluates its start and each of its ``steps`` points; its end point is the last one.
    """

    def __init__(self, n: int, shape: tuple[int, ...], *, loss: str, steps: int, stepsize: Callable[[float], float],
                 random_start: bool, targeted: bool, norm: str):
        self.loss, self.steps, self.stepsize, self.random_start, self.norm = loss, steps, stepsize, random_start, norm
        self.direction = -1.0 if targeted else 1.0
        self.trace_sign = self.direction  # a targeted run descends its loss
        self.x0 = np.zeros((n,) + shape, np.float32)
        self.eps, self.size = np.zeros(n, np.float32), np.zeros(n, np.float32)
        self.i = np.zeros(n, np.int64)

    def start(self, runs: Runs) -> np.ndarray:
        e = runs.examples
        self.x0[e], self.eps[e], self.i[e] = runs.x0, runs.eps, 0
        self.size[e] = [self.stepsize(float(eps)) for eps in runs.eps]
        if not self.random_start:
            return runs.x0.copy()
        return np.concatenate([draw_start(x0[None], np.array([eps]), self.norm, [rng])
                               for x0, eps, rng in zip(runs.x0, runs.eps, runs.rngs)])

    def step(self, e: np.ndarray, x: np.ndarray, out: Outputs, fooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert out.grad is not None
        sizes = tf.reshape(tf.constant(self.size[e]), (-1,) + (1,) * (x.ndim - 1))
        moved = tf.constant(x) + self.direction * (sizes * normalize(tf.constant(out.grad), self.norm))
        moved = project_in_box(moved, tf.constant(self.x0[e]), tf.constant(self.eps[e]), self.norm)
        ended = self.i[e] >= self.steps
        self.i[e] += 1
        return moved.numpy(), ended

    def end(self, e: np.ndarray, x: np.ndarray, out: Outputs) -> tuple[np.ndarray, np.ndarray]:
        return x, out.logits


def pgd_engine(
    model: keras.Model,
    x: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray | None,
    eps: np.ndarray,
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
    rel_stepsize: float,
    abs_stepsize: float | None = None,
    gradient: str = "auto",
) -> AttackResult:
    """PGD on validated inputs, each example with its own budgets ``eps (K, N)``: :class:`PgdStep` run by the engine
    (:func:`advsweep.attacks.engine.programme.run_engine`), which gives each example its programme: for each budget (ascending),
    up to ``restarts`` runs, each from its own random start (with ``early_stop``, until the example is fooled).
    The calls have :data:`~advsweep.attacks.engine.core.BLOCK` rows, the shape foolbox's runs get, so that both
    implementations compute the same floats. ``grid`` is the ``(K,)`` budgets the result reports as its ``epsilons``;
    ``attack`` names the random streams (:func:`~advsweep.attacks.engine.core.example_stream`)."""
    def stepsize(e: float) -> float:
        return float(abs_stepsize) if abs_stepsize is not None else float(rel_stepsize) * e

    step = PgdStep(len(x), x.shape[1:], loss=loss, steps=steps, stepsize=stepsize, random_start=random_start,
                   targeted=targets is not None, norm=norm)
    programme = Programme(stream=attack, restarts=restarts, targets=targets, early_stop=early_stop,
                          keep_first_end=True)
    return run_engine(model, step, programme, x, labels, eps, seed=seed, example_ids=example_ids,
                      plan=Plan(rows=BLOCK), grid=grid, norm=norm, gradient=gradient)
