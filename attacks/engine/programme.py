"""The one engine every iterative attack runs on: PGD, BIM, APGD, APGD-T, FAB-T, Square and the minimal-ε search.

An attack is a *step* over a block of examples (``Step``: where a run starts, and how a run moves on from one model
evaluation to the next); the engine does everything else, the same way for every attack:

* **the programme.** Each example runs its own list of runs, in order: for each ε of its grid (ascending), each
  target (APGD-T, FAB-T) and each restart, from a start point its own random stream draws
  (:func:`advsweep.attacks.engine.core.example_stream`, keyed by the seed, the example's test-set index, the attack, ε and
  the restart). A run is skipped when it cannot change the result: the example is already fooled at that ε or a
  smaller one (an adversarial lies inside every larger ball), its ε is 0, or the ε is at or above the example's
  ``limit`` (an ensemble's cascade: those budgets are another attack's);
* **the bookkeeping.** Every point evaluated is checked: the first misclassified point found at a budget is the
  budget's adversarial (the *any-iterate* view), and a run's end point (:attr:`Step.end`) is the budget's
  *last-iterate* view; with early stop an example's run ends at its first adversarial;
* **the loss trace.** For a step that ascends a loss (PGD, BIM, APGD, APGD-T; not FAB-T, whose loss only aims its
  steps, nor Square), each run's losses are watched for Pintor et al.'s *incomplete optimization* (:class:`LossTrace`);
  the result's ``loss_rise`` is the largest measure of the runs at each budget;
* **the model calls.** All examples with a run in progress are evaluated together, in calls of the shapes the
  model's plan measured to give every row the same floats (:class:`Plan`: ``rows`` per call, and the smaller
  ``sizes`` for the last call of a round; zero rows where a call has fewer examples), so the floats an example sees
  depend on its own point alone, never on which examples share its chunk or its call or how many are busy; and the
  evaluations are counted.

The point of one engine is that nothing of this lives in an attack file, which then reads as its paper.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import keras
import numpy as np

from advsweep.attacks.engine.core import (
    AttackResult,
    any_iterate_view,
    example_stream,
    in_calls,
    logits_fn,
    loss_gradient_fn,
    predict_logits,
    result_of,
    success_of,
)
from advsweep.attacks.engine.geometry import sizes_of
from advsweep.attacks.engine.plan import Plan, plan_of


@dataclasses.dataclass
class Outputs:
    """One evaluation of the points of a block: logits ``(M, C)``; for a gradient step also the per-example loss
    ``(M,)`` and its input gradient ``(M, …)``."""

    logits: np.ndarray
    loss: np.ndarray | None = None
    grad: np.ndarray | None = None


def evaluate(model: keras.Model, x: np.ndarray, classes: np.ndarray | None, example_ids: np.ndarray, plan: Plan,
             loss: str | None, gradient: str) -> Outputs:
    """The model's logits (and with ``loss``, that loss and its input gradient) at ``x`` ``(M, …)``, in the
    plan's calls (:func:`~advsweep.attacks.engine.core.in_calls`)."""
    if loss is None:
        return Outputs(*in_calls(logits_fn(model), (x,), example_ids, plan))
    assert classes is not None
    return Outputs(*in_calls(loss_gradient_fn(model, loss, gradient), (x, classes), example_ids, plan))


@dataclasses.dataclass
class Runs:
    """The runs starting now, one per example of ``examples`` ``(M,)`` (positions into the attack's call):
    their inputs ``x0``, labels, budgets ``eps`` (float64, as the caller gave them), target classes (−1 untargeted), restarts and random
    streams."""

    examples: np.ndarray
    x0: np.ndarray
    labels: np.ndarray
    eps: np.ndarray
    targets: np.ndarray
    restarts: np.ndarray
    rngs: list[np.random.Generator]


class Step:
    """An attack's algorithm as the engine runs it; each attack's step derives from this.

    ``loss``: the loss whose gradient an evaluation computes (``None``: logits only, Square). ``start`` returns
    the runs' first points ``(M, …)`` and resets their state. ``step`` gets the examples with a run in progress
    (positions into the call, ``(M,)``), their points, what the model said there and whether each point is
    misclassified, and returns the next points and which runs ended (``(M, …)``, ``(M,)`` bool). ``end``: a run's
    end point and its logits, the budget's last-iterate view where it is not fooled. ``needs_gradient``: for a step
    that needs the gradient at some points only (FAB-T: a forward pass checks a new point, the gradient is taken
    where the next step starts), which; ``None``: every point gets what ``loss`` says. ``trace_sign``: +1 for a step
    that ascends ``loss``, −1 for one that descends it (a targeted PGD), ``None`` for one whose loss is not what it
    optimises (FAB-T): the engine's :class:`LossTrace` follows the loss the attack optimises. ``outside``: for a
    step whose points may lie outside their run's budget for a while (l1-APGD's first stages at 3ε and 2ε), which
    do; a misclassified point there is no adversarial at the budget. ``gradients``: backward passes per gradient
    evaluation (untargeted FAB's: one per class), what the cost counts."""

    loss: str | None = None
    gradients: int = 1
    trace_sign: float | None = 1.0  # the loss the attack ascends is ``trace_sign · loss`` (None: not traced)

    def start(self, runs: Runs) -> np.ndarray:
        raise NotImplementedError

    def step(self, examples: np.ndarray, x: np.ndarray, out: Outputs, fooled: np.ndarray,
             ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def end(self, examples: np.ndarray, x: np.ndarray, out: Outputs) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def needs_gradient(self, examples: np.ndarray) -> np.ndarray | None:
        return None

    def outside(self, examples: np.ndarray) -> np.ndarray | None:
        return None


INCOMPLETE_WINDOW = 10  # Pintor et al.'s last steps
INCOMPLETE_THRESHOLD = 0.05  # and the rise over them that says the optimization had not converged


class LossTrace:
    """Pintor et al.'s *incomplete optimization* indicator (NeurIPS 2022, ``incomplete_optimization_indicator`` of
    their code), per run, without keeping the run's losses: the loss rescaled to [0, 1] over the run (its smallest
    and largest value), made monotone (the best so far), and its change over the run's last
    :data:`INCOMPLETE_WINDOW` evaluations. Above :data:`INCOMPLETE_THRESHOLD` the run ended while its loss was still
    improving: more steps might have found an adversarial. Their attacks minimise, the harness's ascend: the best so
    far is the running maximum. A constant loss measures 0."""

    def __init__(self, n: int):
        self.low, self.high = np.full(n, np.inf, np.float32), np.full(n, -np.inf, np.float32)
        self.best = np.zeros((n, INCOMPLETE_WINDOW), np.float32)  # the last best-so-far values, a ring
        self.count = np.zeros(n, np.int64)

    def reset(self, e: np.ndarray) -> None:
        self.low[e], self.high[e], self.count[e] = np.inf, -np.inf, 0

    def add(self, e: np.ndarray, loss: np.ndarray) -> None:
        self.low[e], self.high[e] = np.minimum(self.low[e], loss), np.maximum(self.high[e], loss)
        self.best[e, self.count[e] % INCOMPLETE_WINDOW] = self.high[e]
        self.count[e] += 1

    def rise(self, e: np.ndarray) -> np.ndarray:
        """``(M,)``: each run's rise of the rescaled best loss over its last evaluations (NaN: no loss seen)."""
        window = np.minimum(self.count[e], INCOMPLETE_WINDOW)
        oldest = self.best[e, (self.count[e] - window) % INCOMPLETE_WINDOW]
        span = self.high[e] - self.low[e]
        with np.errstate(invalid="ignore", divide="ignore"):
            rise = np.where(span > 0, (self.high[e] - oldest) / span, np.float32(0.0)).astype(np.float32)
        return np.where(self.count[e] > 0, rise, np.float32(np.nan))


@dataclasses.dataclass(frozen=True)
class Programme:
    """What an attack asks of the engine besides its step.

    Attributes:
        stream: the name of the attack's random streams (a target's rank is appended for targeted runs).
        restarts: runs per budget (and target).
        target_ranks: the ranks of the clean logits whose classes are targeted one after the other (APGD-T,
            FAB-T: 2, 3, …); ``None``: untargeted. The label is still what success is measured against.
        targets: fixed target classes ``(N,)`` for a targeted attack (PGD's ``targets``): success then means
            classified as the target, and the gradient is of the loss towards it.
        early_stop: an example's run (and programme) ends at its first adversarial.
        any_budget: a misclassified point counts at every budget whose ball holds it (FAB-T, a minimum-norm
            attack: one run answers every ε of the grid; its restarts run one per ε still undecided). Its runs
            have no end point: a FAB iterate may lie anywhere, so a budget's last-iterate view stays the input.
        keep_first_end: a budget's last-iterate view is its first run's end point unless a later restart ends
            on an adversarial (PGD, as foolbox); otherwise every run's end point replaces the one before (AutoAttack).
        classes_with_label: the loss takes ``[label, target]`` per example (the targeted DLR loss, FAB's logit
            difference) rather than one class.
        eot_draws: model calls per gradient, their input gradients averaged (Expectation over Transformation, for
            a randomized model: AutoAttack's ``eot_iter``); the loss and logits are the last call's, as the authors'
            APGD keeps them. 1: one call.
        keep_latest: a budget's adversarial is the latest misclassified point of its runs, not the first (the
            authors' APGD; for a randomized model, with ``early_stop`` off: a point misclassified by one draw near the
            boundary is replaced by the deeper ones the run reaches later, which a fresh call is likelier to confirm).
    """

    stream: str
    restarts: int = 1
    target_ranks: Sequence[int] | None = None
    targets: np.ndarray | None = None
    early_stop: bool = True
    any_budget: bool = False
    keep_first_end: bool = False
    classes_with_label: bool = False
    eot_draws: int = 1
    keep_latest: bool = False


def schedule_of(programme: Programme, budgets: int) -> list[tuple[int | None, int, int]]:
    """Every example's runs in order, as (budget position in its ascending order, target index, restart): for each
    budget, each target, each restart; FAB-T's (``any_budget``): target by target, one run for all budgets
    (position ``None``), then its restarts one per budget."""
    targets = len(programme.target_ranks or [None])
    if programme.any_budget:
        return [(None if s == 0 else p, t, s) for t in range(targets) for s in range(programme.restarts)
                for p in (range(1) if s == 0 else range(budgets))]
    return [(p, t, s) for p in range(budgets) for t in range(targets) for s in range(programme.restarts)]


class Engine:
    """The state of one attack call: every example's place in its programme and point, and the budgets' views."""

    def __init__(self, model: keras.Model, step: Step, programme: Programme, x: np.ndarray, labels: np.ndarray,
                 eps: np.ndarray, *, seed: int, example_ids: np.ndarray, limit: np.ndarray | None,
                 plans: tuple[Plan, Plan], gradient: str, norm: str):
        self.model, self.step, self.programme, self.plans, self.gradient = model, step, programme, plans, gradient
        self.norm = norm
        self.x, self.labels, self.seed, self.example_ids, self.targets = x, labels, seed, example_ids, programme.targets
        n, k_count = len(x), eps.shape[0]
        self.clean_logits = predict_logits(model, x, example_ids=example_ids)
        self.ranking = np.argsort(self.clean_logits, axis=-1, kind="stable")  # r-th highest class: ranking[:, -r]
        self.limit = np.full(n, k_count, dtype=np.int64) if limit is None else np.asarray(limit, dtype=np.int64)
        self.order = np.argsort(eps, axis=0, kind="stable")  # (K, N): each example's budgets, ascending
        self.eps_exact = np.take_along_axis(eps, self.order, axis=0)  # float64: what the random streams are keyed by
        self.eps_sorted = self.eps_exact.astype(np.float32)
        self.first_positive = np.argmax(self.eps_sorted > 0, axis=0)
        clean_wrong = success_of(self.clean_logits, labels, self.targets)
        # the views, by position in each example's ascending order: the first adversarial found at each budget
        # (any-iterate) and each budget's run end point (last-iterate)
        self.found = np.zeros((k_count, n), dtype=bool)
        self.found[(self.eps_sorted == 0) & clean_wrong[None]] = True
        if programme.any_budget:
            self.found[:, clean_wrong] = True
        self.x_found, self.x_end = np.repeat(x[None], k_count, axis=0), np.repeat(x[None], k_count, axis=0)
        self.logits_found = np.repeat(self.clean_logits[None], k_count, axis=0)
        self.logits_end = self.logits_found.copy()
        self.schedule = schedule_of(programme, k_count)
        self.run_of = np.full(n, -1, dtype=np.int64)  # each example's run in the schedule; −2 once it is over
        self.decisive = np.zeros(n, dtype=np.int64)  # the budget whose adversarial ends the run
        self.budget_of = np.zeros(n, dtype=np.int64)  # the budget the run's end point belongs to (−1: all, FAB)
        self.x_now = np.zeros_like(x)
        self.classes = np.zeros((n, 2) if programme.classes_with_label else n, np.int64)
        self.spent = {"forward": 0, "gradient": 0}
        self.traced = step.loss is not None and step.trace_sign is not None
        self.trace = LossTrace(n)
        self.loss_rise = np.full((k_count, n), np.nan, np.float32)  # by position: the largest rise of its runs

    def needed(self, example: int, run: int) -> bool:
        """Whether the run can change the result: its budget is positive and below the example's limit, and the
        example is not fooled there yet (at or below it, with early stop or for FAB-T)."""
        position, _, restart = self.schedule[run]
        p = int(self.first_positive[example]) if position is None else position
        if p >= self.limit[example] or self.eps_sorted[p, example] == 0:
            return False
        if self.programme.early_stop or self.programme.any_budget:
            return not self.found[: p + 1, example].any()
        return restart == 0 or not self.found[p, example]

    def start(self, examples: Sequence[int]) -> None:
        """Start each example's next needed run (after its current one), or end its programme."""
        chosen: list[int] = []
        runs: list[tuple[int | None, int, int]] = []
        for example in examples:
            run = int(self.run_of[example]) + 1
            while run < len(self.schedule) and not self.needed(example, run):
                run += 1
            self.run_of[example] = run if run < len(self.schedule) else -2
            if run < len(self.schedule):
                chosen.append(example)
                runs.append(self.schedule[run])
        if not chosen:
            return
        e = np.array(chosen)
        self.budget_of[e] = [-1 if p is None else p for p, _, _ in runs]
        self.decisive[e] = np.where(self.budget_of[e] < 0, self.first_positive[e], self.budget_of[e])
        budgets = self.eps_exact[self.decisive[e], e]
        targeted: Sequence[int | None] = self.programme.target_ranks or [None]
        ranks = [targeted[t] for _, t, _ in runs]
        aim = np.array([-1 if r is None else self.ranking[k, -r] for k, r in zip(e, ranks)], np.int64)
        aim = self.targets[e] if self.targets is not None else aim
        self.classes[e] = (np.stack([self.labels[e], aim], 1) if self.programme.classes_with_label
                           else aim if self.targets is not None else self.labels[e])
        streams = [self.programme.stream + ("" if r is None else str(r)) for r in ranks]
        rngs = [example_stream(self.seed, int(self.example_ids[k]), name, float(b), s)
                for k, name, b, (_, _, s) in zip(e, streams, budgets, runs)]
        restarts = np.array([s for _, _, s in runs])
        self.trace.reset(e)
        self.x_now[e] = self.step.start(Runs(e, self.x[e], self.labels[e], budgets, aim, restarts, rngs))

    def round(self) -> None:
        """Evaluate every run in progress once, keep what it found, move each on, and start the next runs."""
        active = np.flatnonzero(self.run_of >= 0)
        points = self.x_now[active]
        out = self.evaluate(active, points)
        fooled = success_of(out.logits, self.labels[active], None if self.targets is None else self.targets[active])
        outside = self.step.outside(active)
        if outside is not None:
            fooled &= ~outside
        self.keep(active[fooled], points[fooled], out.logits[fooled])
        if self.traced and out.loss is not None:
            self.trace.add(active, np.float32(self.step.trace_sign) * out.loss)
        moved, ended = self.step.step(active, points, out, fooled)
        if self.programme.early_stop or self.programme.any_budget:
            ended |= np.logical_or.accumulate(self.found, axis=0)[self.decisive[active], active]
        self.x_now[active] = moved
        if ended.any():
            done = active[ended]
            end_x, end_logits = self.step.end(done, points[ended], Outputs(out.logits[ended]))
            success = success_of(end_logits, self.labels[done], None if self.targets is None else self.targets[done])
            if self.traced:
                at = self.budget_of[done] >= 0
                rows, columns = self.budget_of[done][at], done[at]
                self.loss_rise[rows, columns] = np.fmax(self.loss_rise[rows, columns], self.trace.rise(columns))
            for i, example in enumerate(done.tolist()):
                position, restart = int(self.budget_of[example]), self.schedule[self.run_of[example]][2]
                if position >= 0 and not self.programme.any_budget and (
                        not self.programme.keep_first_end or restart == 0 or success[i]):  # FAB's ends: no point
                    self.x_end[position, example], self.logits_end[position, example] = end_x[i], end_logits[i]
            self.start(done.tolist())

    def evaluate(self, active: np.ndarray, points: np.ndarray) -> Outputs:
        """The model at the points: the gradient where the step needs it, logits alone elsewhere; counted."""
        wants = self.step.needs_gradient(active)
        if wants is None:
            wants = np.full(len(active), self.step.loss is not None)
        parts = [(kind, np.flatnonzero(wants if kind == "gradient" else ~wants)) for kind in ("gradient", "forward")]
        out = Outputs(np.empty((len(active), self.clean_logits.shape[1]), np.float32))
        if wants.any():
            out.loss, out.grad = np.zeros(len(active), np.float32), np.zeros_like(points)
        for kind, rows in parts:
            if len(rows):
                e = active[rows]
                draws = self.programme.eot_draws if kind == "gradient" else 1
                total = None
                for _ in range(draws):
                    got = evaluate(self.model, points[rows], self.classes[e], self.example_ids[e],
                                   self.plans[0 if kind == "gradient" else 1], self.step.loss if kind == "gradient"
                                   else None, self.gradient)
                    if got.grad is not None:
                        total = got.grad if total is None else total + got.grad
                out.logits[rows] = got.logits
                if got.grad is not None:
                    assert total is not None
                    out.loss[rows], out.grad[rows] = got.loss, total / np.float32(draws)  # type: ignore[index]
                self.spent[kind] += len(rows) * draws * (self.step.gradients if kind == "gradient" else 1)
        return out

    def keep(self, e: np.ndarray, points: np.ndarray, logits: np.ndarray) -> None:
        """Misclassified points (of distinct examples ``e`` ``(F,)``) are the adversarials of their runs' budgets,
        where a budget has none yet; for FAB-T (``any_budget``), of every budget whose ball holds the point
        (``‖point − x‖ ≤ ε``)."""
        if not len(e):
            return
        if self.programme.any_budget:
            distance = sizes_of(points - self.x[e], self.norm)
            holds = (distance <= self.eps_sorted[:, e]) & (self.eps_sorted[:, e] > 0) & ~self.found[:, e]  # (K, F)
        else:
            holds = np.zeros((len(self.found), len(e)), dtype=bool)
            position, j = self.budget_of[e], np.arange(len(e))
            holds[position, j] = ~self.found[position, e] | self.programme.keep_latest
        budgets, j = np.nonzero(holds)
        self.found[budgets, e[j]] = True
        self.x_found[budgets, e[j]], self.logits_found[budgets, e[j]] = points[j], logits[j]

    def result(self, grid: np.ndarray) -> AttackResult:
        """The any-iterate view (and without early stop the last-iterate view as ``.last``), back in the caller's
        order of ε, each adversarial carried to every larger budget."""
        columns = np.arange(len(self.x))
        found, x_found, logits_found = np.zeros_like(self.found), np.empty_like(self.x_found), np.empty_like(
            self.logits_found)
        x_end, logits_end = np.empty_like(self.x_end), np.empty_like(self.logits_end)
        loss_rise = np.empty_like(self.loss_rise)
        for position in range(len(self.order)):
            k = self.order[position]
            found[k, columns] = self.found[position]
            loss_rise[k, columns] = self.loss_rise[position]
            x_found[k, columns], logits_found[k, columns] = self.x_found[position], self.logits_found[position]
            x_end[k, columns], logits_end[k, columns] = self.x_end[position], self.logits_end[position]
        x_adv, logits_adv = any_iterate_view(self.order, found, x_found, logits_found, x_end, logits_end)
        result = result_of(grid, x_adv, logits_adv, self.labels, self.targets, self.norm)
        last = None if self.programme.early_stop else result_of(grid, x_end, logits_end, self.labels, self.targets,
                                                                self.norm)
        return dataclasses.replace(result, last=last, evaluations=sum(self.spent.values()),
                                   loss_rise=loss_rise if self.traced else None)


def run_engine(model: keras.Model, step: Step, programme: Programme, x: np.ndarray, labels: np.ndarray,
               eps: np.ndarray, *, seed: int, example_ids: np.ndarray, grid: np.ndarray, norm: str,
               gradient: str = "auto", limit: np.ndarray | None = None, plan: Plan | None = None) -> AttackResult:
    """Run ``step``'s attack on validated inputs: ``eps`` ``(K, N)`` are each example's budgets (any order),
    ``grid`` ``(K,)`` the budgets the result reports; ``limit`` ``(N,)`` (an ensemble's cascade) ends an example's
    programme at that position of its ascending budgets; ``plan``: the model calls' shape (default: the model's
    measured plans for gradient and for forward calls, :func:`advsweep.attacks.engine.plan.plan_of`). Returns the any-iterate view
    (``.last``: the last-iterate view, without early stop), the model evaluations spent and the cost."""
    started = time.perf_counter()
    plans = (plan, plan) if plan is not None else (plan_of(model).gradient, plan_of(model).forward)
    engine = Engine(model, step, programme, x, labels, eps, seed=seed, example_ids=example_ids, limit=limit,
                    plans=plans, gradient=gradient, norm=norm)
    engine.start(range(len(x)))
    while (engine.run_of >= 0).any():
        engine.round()
    cost = {programme.stream: {"examples": len(x), "seconds": round(time.perf_counter() - started, 3),
                               "forward": len(x) + engine.spent["forward"], "gradient": engine.spent["gradient"]}}
    return dataclasses.replace(engine.result(grid), cost=cost)


def grid_budgets(eps: np.ndarray, n: int) -> np.ndarray:
    """A ``(K,)`` grid as each of ``n`` examples' budgets ``(K, N)``."""
    return np.broadcast_to(np.asarray(eps)[:, None], (len(eps), n))

