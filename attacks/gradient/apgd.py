"""Auto-PGD (APGD) and its targeted form APGD-T (Croce & Hein, ICML 2020), L∞ and L2; and L1 (Croce & Hein, ICML
2021).

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
its random start from its own stream (:func:`advsweep.attacks.engine.core.example_stream`).

L1 (``norm="l1"``) is a different algorithm on the same engine (:class:`ApgdL1Step`; "Mind the box: l1-APGD for
sparse adversarial attacks on image classifiers", Croce & Hein, ICML 2021): sparse steps along the signs of the
gradient's largest coordinates, projected onto the L1 ball ∩ [0, 1] (:func:`advsweep.attacks.engine.geometry.l1_box_projection`), no momentum, and
an adaptive sparsity and step size at checkpoints every 4% of the steps. With ``large_radii`` (the authors'
``use_largereps``, on in AutoAttack's L1 version) a run spends 30% of its steps in the ball of radius 3ε, 30% in
2ε and the rest in ε, each stage starting from the previous one's best point projected onto its ball; only the
last stage's points count as adversarials at ε.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from advsweep.assets.validate import integer, one_of
from advsweep.attacks.engine.core import (
    AttackResult,
    checked_call,
    classes_of,
    model_classes,
    target_ranks,
)
from advsweep.attacks.engine.programme import Outputs, Programme, Runs, Step, grid_budgets, run_engine
from advsweep.attacks.engine.geometry import (
    edge_start,
    l1_box_projection,
    l1_point,
    l2_normalize,
    l2_project,
    linf_project,
    per_example,
)
from advsweep.attacks.engine.spec import L1_NORMS, check_combination
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
    eot_draws: int = APGD_CE["eot_draws"],
    large_radii: bool = APGD_CE["large_radii"],
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
        eot_draws: model calls per gradient, averaged (Expectation over Transformation, for a randomized model;
            AutoAttack's ``rand`` version takes 20); each costs a gradient evaluation.
        large_radii: L1 only: each run's steps in balls of 3ε, 2ε and ε (30%, 30%, 40%; the authors'
            ``use_largereps``, AutoAttack's L1 version).

    Returns:
        The any-iterate view: an example is fooled at ε if any point evaluated at that ε (or a smaller one of
        the call) was misclassified; ``x_adv`` is the first such point, else the point of highest loss.
    """
    loss = one_of("loss", loss, APGD_LOSSES, hint="APGD's losses; 'dlr' is scale-invariant")
    return _checked_run(model, x, labels, epsilons, norm=norm, loss=loss, steps=steps, restarts=restarts, rho=rho,
                        seed=seed, example_ids=example_ids, gradient=gradient, target_classes=None, eot_draws=eot_draws,
                        large_radii=large_radii)


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
    eot_draws: int = APGD_T["eot_draws"],
    large_radii: bool = APGD_T["large_radii"],
) -> AttackResult:
    """APGD-T: APGD on the targeted DLR loss, towards each of the ``target_classes`` classes with the highest clean
    logits after the top one (fewer when the model has fewer classes), on the examples still robust.

    Success is misclassification, as in AutoAttack: the target only steers the loss. Arguments as
    :func:`auto_pgd`; AutoAttack's standard setting is 100 steps, 9 target classes, one run each.
    """
    target_classes = integer("target_classes", target_classes, minimum=1)
    return _checked_run(model, x, labels, epsilons, norm=norm, loss="dlr-targeted", steps=steps, restarts=restarts,
                        rho=rho, seed=seed, example_ids=example_ids, gradient=gradient, target_classes=target_classes,
                        eot_draws=eot_draws, large_radii=large_radii)


def _checked_run(model: keras.Model, x: Any, labels: Any, epsilons: Any, *, norm: str, loss: str, steps: int,
                 restarts: int, rho: float, seed: int, example_ids: Any, gradient: str,
                 target_classes: int | None, eot_draws: int, large_radii: bool) -> AttackResult:
    call = checked_call(model, x, labels, epsilons, norm=norm, seed=seed, example_ids=example_ids, steps=steps,
                        restarts=restarts, rho=rho, gradient=gradient, eot_draws=eot_draws, norms=L1_NORMS)
    # the classes the model returns, read from its logits when its declared shape leaves them open
    classes = classes_of(model, call.x) if len(call.x) else model_classes(model)
    name = "apgd-t" if target_classes is not None else f"apgd-{loss}"
    check_combination(name, {"large_radii": large_radii, "steps": steps}, call.norm, classes)
    ranks = target_ranks(classes, target_classes) if target_classes is not None and classes is not None else None
    return apgd_engine(model, call.x, call.labels, call.eps, norm=call.norm, loss=loss, seed=call.seed,
                       example_ids=call.example_ids, stream=name, target_ranks=ranks,
                       large_radii=bool(large_radii), **call.params)


def checkpoints(steps: int) -> tuple[int, int, int]:
    """AutoAttack's checkpoint schedule for ``steps`` iterations: (first gap, smallest gap, shrink per checkpoint),
    ``(max(⌊0.22 N⌋, 1), max(⌊0.06 N⌋, 1), max(⌊0.03 N⌋, 1))``."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def halve_steps(history: np.ndarray, i: np.ndarray, window: np.ndarray, rho: float, reduced_last_check: np.ndarray,
                best_at_last_check: np.ndarray, best: np.ndarray) -> np.ndarray:
    """The checkpoint's decision after iteration ``i`` (0-based) for each of R runs at a checkpoint (``history``
    ``(R, steps)``, the others ``(R,)``): halve the step when at most ``rho · window`` of the last ``window`` steps
    raised the loss (``history[j] > history[j − 1]``; as in the authors' code, ``history[−1]``, still 0, stands
    before the first step), or when the step was not halved at the last checkpoint and the best loss has not
    improved since."""
    c = np.arange(int(window.max()) if len(window) else 0)
    counted = c[None, :] < window[:, None]
    at = np.where(counted, i[:, None] - c[None, :], 0)
    rows = np.arange(len(history))[:, None]
    raised = (counted & (history[rows, at] > history[rows, at - 1])).sum(axis=1)
    return (raised <= window * rho) | (~reduced_last_check & (best_at_last_check >= best))


def momentum_steps(x_cur: np.ndarray, x_old: np.ndarray, x0: np.ndarray, grad: np.ndarray, step: np.ndarray,
                   eps: np.ndarray, norm: str, first: np.ndarray) -> np.ndarray:
    """One APGD update of each of M examples ``(M, …)`` (step sizes, budgets and ``first`` ``(M,)``): a step along
    the normalised gradient, projected, then mixed with the last move (momentum 0.75; none on a run's first step)
    and projected again (onto the ε-ball and [0, 1])."""
    a = per_example(np.where(first, 1.0, 0.75), x_cur)
    step, eps_b = per_example(step, x_cur), per_example(eps, x_cur)
    previous_move = x_cur - x_old
    if norm == "linf":
        moved = linf_project(x0, x_cur + step * np.sign(grad), eps_b)
        mixed = x_cur + (moved - x_cur) * a + previous_move * (np.float32(1.0) - a)
        return linf_project(x0, mixed, eps_b).astype(np.float32)
    moved = l2_project(x0, x_cur + step * l2_normalize(grad), eps)
    mixed = x_cur + (moved - x_cur) * a + previous_move * (np.float32(1.0) - a)
    return l2_project(x0, mixed, eps).astype(np.float32)


class ApgdStep(Step):
    """APGD's iteration over a block of examples, each in its own run (Croce & Hein 2020, Algorithm 1). For one run,
    with η the step size and x₀ the input::

        x = start (random point of the ε-ball); evaluate loss and ∇ at x; x_best = x; η = 2ε; k = 0.22·N
        for i in 0 … N−1:
            z = P(x + η · normalize(∇)); x_new = P(x + a·(z − x) + (1 − a)·(x − x_previous))   (a = 1, then 0.75)
            evaluate loss and ∇ at x_new; keep x_best (highest loss) and its ∇
            every k iterations: if at most ρ·k of the last k steps raised the loss, or (η was not halved at the
                last checkpoint and the best loss did not improve since): η ← η / 2, x ← x_best, ∇ ← ∇_best;
                k ← max(k − 0.03·N, 0.06·N)

    P projects onto the ε-ball around x₀ and clips to [0, 1]. A run ends after N iterations (the engine ends it
    earlier, at its first misclassified point); its end point is x_best.
    """

    def __init__(self, n: int, shape: tuple[int, ...], classes: int, *, loss: str, steps: int, rho: float,
                 norm: str):
        self.loss, self.steps, self.rho, self.norm = loss, steps, rho, norm
        self.first_gap, self.min_gap, self.shrink = checkpoints(steps)
        self.x0, self.x_old, self.x_best, self.grad, self.grad_best = (np.zeros((n,) + shape, np.float32)
                                                                        for _ in range(5))
        self.logits_best = np.zeros((n, classes), np.float32)
        self.eps, self.eta, self.loss_best, self.loss_at_check = (np.zeros(n, np.float32) for _ in range(4))
        self.halved_at_check = np.ones(n, dtype=bool)
        self.i, self.gap, self.since_check = (np.zeros(n, np.int64) for _ in range(3))
        self.history = np.zeros((n, steps), np.float32)

    def start(self, runs: Runs) -> np.ndarray:
        e = runs.examples
        self.x0[e], self.eps[e], self.i[e] = runs.x0, runs.eps, -1
        return np.stack([edge_start(x0, float(eps), self.norm, rng)
                         for x0, eps, rng in zip(runs.x0, runs.eps, runs.rngs)])

    def step(self, e: np.ndarray, x: np.ndarray, out: Outputs, fooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert out.loss is not None and out.grad is not None
        i = self.i[e]
        new = i < 0  # the run's start point: its state begins here
        s, j = e[new], np.flatnonzero(new)
        self.x_best[s], self.grad_best[s], self.grad[s], self.x_old[s] = x[j], out.grad[j], out.grad[j], x[j]
        self.logits_best[s], self.loss_best[s], self.loss_at_check[s] = out.logits[j], out.loss[j], out.loss[j]
        self.halved_at_check[s], self.eta[s], self.gap[s], self.since_check[s] = True, 2 * self.eps[s], self.first_gap, 0
        self.history[s] = 0.0
        s, j = e[~new], np.flatnonzero(~new)
        self.history[s, i[j]], self.grad[s] = out.loss[j], out.grad[j]
        better = out.loss[j] > self.loss_best[s]
        b, jb = s[better], j[better]
        self.x_best[b], self.grad_best[b], self.logits_best[b], self.loss_best[b] = x[jb], out.grad[jb], out.logits[jb], out.loss[jb]
        self.since_check[s] += 1
        current = x.copy()
        rows = np.flatnonzero(~new)[self.since_check[s] == self.gap[s]]  # the runs at a checkpoint
        k = e[rows]
        halve = halve_steps(self.history[k], i[rows], self.gap[k], self.rho, self.halved_at_check[k],
                            self.loss_at_check[k], self.loss_best[k])
        self.halved_at_check[k], self.loss_at_check[k] = halve, self.loss_best[k]
        self.eta[k[halve]] /= 2.0
        current[rows[halve]], self.grad[k[halve]] = self.x_best[k[halve]], self.grad_best[k[halve]]
        self.gap[k], self.since_check[k] = np.maximum(self.gap[k] - self.shrink, self.min_gap), 0
        self.i[e] = i + 1
        moved = momentum_steps(current, self.x_old[e], self.x0[e], self.grad[e], self.eta[e], self.eps[e], self.norm,
                               first=i + 1 == 0)
        self.x_old[e] = current
        return moved, self.i[e] >= self.steps

    def end(self, e: np.ndarray, x: np.ndarray, out: Outputs) -> tuple[np.ndarray, np.ndarray]:
        return self.x_best[e], self.logits_best[e]


class ApgdL1Step(Step):
    """l1-APGD's iteration over a block of examples (Croce & Hein 2021, "Mind the box"), as the authors' code runs
    it (``autopgd_base.py``, ``norm='L1'``). For one run, with η the step size, d the input's dimensions::

        x = start; evaluate loss and ∇ at x; x_best = x; η = ε; k = max(⌊0.04·N⌋, 1); s = 0.2 (the step's
        sparsity: the fraction of coordinates it moves); s₀ = d (from a given start x: s₀ = ‖x − x₀‖₀, s = s₀/d/1.5)
        for i in 0 … N−1:
            g = ∇ on its ⌈s·d⌉ largest coordinates (|∇| ≥ the (1 − s)·d-th smallest), 0 elsewhere
            x = x₀ + P(x + η · sign(g) / ‖sign(g)‖₁ − x₀)          P: onto the L1 ball ∩ [0, 1]
            evaluate loss and ∇ at x; keep x_best (highest loss) and its ∇
            every k iterations: s₁ = ‖x_best − x₀‖₀; s ← s₁ / d / 1.5
                if s₁ / s₀ < 0.95: η ← ε, x ← x_best, ∇ ← ∇_best  else: η ← η / 1.5
                η ← clip(η, ε/10, ε); s₀ ← s₁

    A run ends after N iterations (the engine ends it earlier, at its first misclassified point); its end point is
    x_best. With ``large_radii`` (the authors' ``decr_eps_pgd``) this runs three times, with radius 3ε, 2ε and ε
    in place of ε and ⌈0.3·N⌉, ⌈0.3·N⌉ and the rest of the N steps, each from the previous stage's x_best
    projected onto the smaller ball (the first from the random start in the ball of 3ε).
    """

    def __init__(self, n: int, shape: tuple[int, ...], classes: int, *, loss: str, steps: int,
                 large_radii: bool = False):
        self.loss, self.large_radii = loss, large_radii
        if large_radii:
            first = math.ceil(0.3 * steps)
            self.stages = [(3.0, first), (2.0, first), (1.0, steps - 2 * first)]  # (radius / ε, steps)
        else:
            self.stages = [(1.0, steps)]
        self.factors = np.array([f for f, _ in self.stages], np.float32)  # per stage: radius / ε,
        self.stage_steps = np.array([n for _, n in self.stages])  # its steps,
        self.gaps = np.maximum((0.04 * self.stage_steps).astype(np.int64), 1)  # its checkpoints' spacing
        self.dims = int(np.prod(shape))
        self.stage = np.zeros(n, np.int64)
        self.radius = np.zeros(n, np.float32)
        self.x0, self.x_best, self.grad, self.grad_best = (np.zeros((n,) + shape, np.float32) for _ in range(4))
        self.logits_best = np.zeros((n, classes), np.float32)
        self.eps, self.eta, self.loss_best, self.sparsity, self.nonzero_before = (
            np.zeros(n, np.float32) for _ in range(5))
        self.i, self.since_check = np.zeros(n, np.int64), np.zeros(n, np.int64)

    def start(self, runs: Runs) -> np.ndarray:
        e = runs.examples
        factor = float(self.factors[0])
        self.x0[e], self.eps[e], self.i[e], self.stage[e] = runs.x0, runs.eps, -1, 0
        self.radius[e] = self.factors[0] * runs.eps.astype(np.float32)
        return np.stack([edge_start(x0, factor * float(eps), "l1", rng)
                         for x0, eps, rng in zip(runs.x0, runs.eps, runs.rngs)])

    def outside(self, e: np.ndarray) -> np.ndarray:
        """The points of a stage at a radius above ε."""
        return self.stage[e] < len(self.stages) - 1

    def step(self, e: np.ndarray, x: np.ndarray, out: Outputs, fooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert out.loss is not None and out.grad is not None
        i = self.i[e]
        new = i < 0  # a stage's start point: its state begins here
        s, j = e[new], np.flatnonzero(new)
        self.x_best[s], self.grad_best[s], self.grad[s] = x[j], out.grad[j], out.grad[j]
        self.logits_best[s], self.loss_best[s] = out.logits[j], out.loss[j]
        self.eta[s], self.since_check[s] = self.radius[s], 0
        if self.large_radii:  # the authors' start from a given point: the step as sparse as the point, over 1.5
            nonzero = np.count_nonzero((x[j] - self.x0[s]).reshape(len(s), self.dims), axis=1).astype(np.float32)
            self.sparsity[s], self.nonzero_before[s] = nonzero / np.float32(self.dims) / np.float32(1.5), nonzero
        else:
            self.sparsity[s], self.nonzero_before[s] = 0.2, self.dims
        s, j = e[~new], np.flatnonzero(~new)
        self.grad[s] = out.grad[j]
        better = out.loss[j] > self.loss_best[s]
        b, jb = s[better], j[better]
        self.x_best[b], self.grad_best[b], self.logits_best[b], self.loss_best[b] = x[jb], out.grad[jb], out.logits[jb], out.loss[jb]
        self.since_check[s] += 1
        current = x.copy()
        check = np.flatnonzero(~new)[self.since_check[s] == self.gaps[self.stage[s]]]
        if len(check):  # the checkpoint: sparsity and step size from how sparse the best point is
            k = e[check]
            nonzero = np.count_nonzero((self.x_best[k] - self.x0[k]).reshape(len(k), -1), axis=1).astype(np.float32)
            reset = nonzero / self.nonzero_before[k] < np.float32(0.95)
            self.sparsity[k] = nonzero / np.float32(self.dims) / np.float32(1.5)
            self.eta[k] = np.where(reset, self.radius[k], self.eta[k] / np.float32(1.5))
            self.eta[k] = np.clip(self.eta[k], self.radius[k] / np.float32(10.0), self.radius[k])
            self.nonzero_before[k], self.since_check[k] = nonzero, 0
            current[check[reset]], self.grad[k[reset]] = self.x_best[k[reset]], self.grad_best[k[reset]]
        self.i[e] = i + 1
        moved = self.sparse_steps(e, current)
        over = self.i[e] >= self.stage_steps[self.stage[e]]
        last = self.stage[e] == len(self.stages) - 1
        following = np.flatnonzero(over & ~last)
        if len(following):  # the next stage starts from this one's best point, projected onto its smaller ball
            k = e[following]
            self.stage[k] += 1
            self.radius[k] = self.factors[self.stage[k]] * self.eps[k]
            x0 = self.x0[k].reshape(len(k), self.dims)
            best = self.x_best[k].reshape(len(k), self.dims)
            moved[following] = l1_point(x0, best - x0, self.radius[k]).reshape((len(k),) + x.shape[1:])
            self.i[k] = -1
        return moved, over & last

    def sparse_steps(self, e: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The sparse sign step from ``x`` of each run, projected onto its L1 ball ∩ [0, 1]."""
        grad = self.grad[e].reshape(len(e), -1)
        magnitude = np.sort(np.abs(grad), axis=1)
        keep = np.clip(((np.float32(1.0) - self.sparsity[e]) * np.float32(self.dims)).astype(np.int64), 0,
                       self.dims - 1)
        threshold = magnitude[np.arange(len(e)), keep][:, None]
        signs = np.sign(grad * (np.abs(grad) >= threshold))
        direction = signs / (np.abs(signs).sum(axis=1, keepdims=True) + np.float32(1e-10))
        proposal = x.reshape(len(e), -1) + self.eta[e][:, None] * direction - self.x0[e].reshape(len(e), -1)
        x0 = self.x0[e].reshape(len(e), -1)
        moved = x0 + l1_box_projection(x0, proposal, self.radius[e])
        return moved.reshape(x.shape).astype(np.float32)

    def end(self, e: np.ndarray, x: np.ndarray, out: Outputs) -> tuple[np.ndarray, np.ndarray]:
        return self.x_best[e], self.logits_best[e]


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
    eot_draws: int = 1,
    large_radii: bool = False,
    budgets: np.ndarray | None = None,
) -> AttackResult:
    """APGD (APGD-T with ``target_ranks``) on validated inputs over an ε grid ``(K,)``: :class:`ApgdStep` run by the
    engine (:func:`advsweep.attacks.engine.programme.run_engine`), which gives each example its programme: for each ε
    (ascending), each target and each restart, one run, until the example is fooled. ``limit`` ``(N,)`` (an
    ensemble's cascade) ends an example's programme at that position of the ascending ε order; ``eot_draws``: model
    calls averaged per gradient (:class:`advsweep.attacks.engine.programme.Programme`); with more than one, every run takes all
    its steps and a budget keeps its latest adversarial iterate, as the authors' APGD (for a randomized model the
    first misclassified draw is often a lucky one that a fresh call does not repeat). ``budgets`` ``(K, N)``: each
    example's own budgets in place of the grid's (the minimal-ε search's bisection; ``eps`` then only labels them)."""
    step: Step = (ApgdL1Step(len(x), x.shape[1:], classes_of(model, x), loss=loss, steps=steps,
                             large_radii=large_radii) if norm == "l1"
                  else ApgdStep(len(x), x.shape[1:], classes_of(model, x), loss=loss, steps=steps, rho=rho, norm=norm))
    randomized = eot_draws > 1  # the authors' bookkeeping: every step runs, the latest adversarial iterate is kept
    programme = Programme(stream=stream, restarts=restarts, target_ranks=target_ranks,
                          classes_with_label=target_ranks is not None, eot_draws=eot_draws,
                          early_stop=not randomized, keep_latest=randomized)
    return run_engine(model, step, programme, x, labels, grid_budgets(eps, len(x)) if budgets is None else budgets,
                      seed=seed, example_ids=example_ids, grid=eps, norm=norm, gradient=gradient, limit=limit)
