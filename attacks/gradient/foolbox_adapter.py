"""The same attacks through foolbox 3 (Rauber et al., JOSS 2020), behind the harness' call and result.

The model is wrapped as ``foolbox.TensorFlowModel(model, bounds=(0, 1))`` with no preprocessing: the
harness' models carry their preprocessing inside the graph. foolbox's ``epsilons=[…]`` call gives
the (K × N) success matrix; the adapter adds batching, restarts over still-robust examples, the
Carlini–Wagner margin loss (by overriding foolbox's ``get_loss_fn``) and the logits of each result.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import eagerpy as ep
import foolbox as fb
import keras
import numpy as np
import tensorflow as tf

from advsweep.assets.validate import one_of
from advsweep.attacks.engine.core import (
    AttackResult,
    any_iterate_view,
    calls,
    check_epsilons,
    check_example_ids,
    check_inputs,
    check_loss,
    check_model,
    model_classes,
    check_norm,
    check_positive_int,
    check_stepsize,
    compiled_forward,
    example_stream,
    gather,
    loss_per_example,
    predict_logits,
    resolved_gradient,
    result_of,
    success_of,
)
from advsweep.attacks.engine.geometry import sizes_of, uniform_start
from advsweep.attacks.engine.spec import L1_NORMS
from advsweep.defaults import ATTACK, ITERATIVE

logger = logging.getLogger(__name__)

_CLASSES: dict[tuple[str, str], type] = {
    ("fgm", "linf"): fb.attacks.LinfFastGradientAttack,
    ("fgm", "l2"): fb.attacks.L2FastGradientAttack,
    ("pgd", "linf"): fb.attacks.LinfProjectedGradientDescentAttack,
    ("pgd", "l2"): fb.attacks.L2ProjectedGradientDescentAttack,
    ("bim", "linf"): fb.attacks.LinfBasicIterativeAttack,
    ("bim", "l2"): fb.attacks.L2BasicIterativeAttack,
}
_SUBCLASSES: dict[tuple[type, str], type] = {}


class Recorder:
    """Sees every point foolbox queries through the model, and keeps per example and budget the first one
    the model gets wrong: the any-iterate view, the same bookkeeping as the own attacks'.

    A point is credited to the budget of the run that queried it (foolbox runs one budget after the
    other; :meth:`begin_run` is called before each), and later carried to every larger budget.
    """

    def __init__(self, labels: np.ndarray, targets: np.ndarray | None, epsilons: np.ndarray, x_shape: tuple[int, ...]):
        self.labels, self.targets, self.epsilons = labels, targets, epsilons
        n = len(labels)
        self.found = np.zeros((len(epsilons), n), dtype=bool)
        self.x = np.zeros((len(epsilons), n) + x_shape, dtype=np.float32)
        self.logits: np.ndarray | None = None
        self.rows = np.full(0, -1)
        self.budget = -1

    def begin_block(self, rows: np.ndarray) -> None:
        """``rows``: ``(BLOCK,)`` positions of the examples in the block foolbox is about to attack (−1: idle)."""
        self.rows = rows

    def begin_run(self, epsilon: float) -> None:
        self.budget = int(np.flatnonzero(self.epsilons == epsilon)[0])

    def observe(self, x: np.ndarray, logits: np.ndarray) -> None:
        used = self.rows >= 0
        examples = self.rows[used]
        hit = success_of(logits[used], self.labels[examples], None if self.targets is None else self.targets[examples])
        new = hit & ~self.found[self.budget, examples]
        if not new.any():
            return
        if self.logits is None:
            self.logits = np.zeros(self.found.shape + logits.shape[1:], dtype=np.float32)
        chosen = examples[new]
        self.found[self.budget, chosen] = True
        self.x[self.budget, chosen] = x[used][new]
        self.logits[self.budget, chosen] = logits[used][new]


def _subclass(cls: type, loss: str) -> type:
    """foolbox's attack class with three overrides that change no step of its algorithm: the random start is
    each example's own stream (the same draw as the own attacks', :func:`advsweep.attacks.engine.core.example_stream`),
    each run tells the recorder its budget, and with ``loss="margin"`` the loss is Carlini–Wagner's margin."""
    key = (cls, loss)
    if key in _SUBCLASSES:
        return _SUBCLASSES[key]

    def get_random_start(self: Any, x0: ep.Tensor, epsilon: float) -> ep.Tensor:
        x0_np = x0.raw.numpy()
        starts = x0_np.copy()
        used = self.block_ids >= 0
        rngs = [example_stream(self.seed, int(i), self.stream, float(epsilon), self.restart)
                for i in self.block_ids[used]]
        starts[used] = uniform_start(x0_np[used], np.full(int(used.sum()), epsilon), self.norm, rngs)
        return ep.astensor(tf.constant(starts))

    def run(self: Any, model: Any, inputs: Any, criterion: Any, *, epsilon: float, **kwargs: Any) -> Any:
        self.recorder.begin_run(epsilon)
        return cls.run(self, model, inputs, criterion, epsilon=epsilon, **kwargs)  # type: ignore[attr-defined]

    methods: dict[str, Any] = {"get_random_start": get_random_start, "run": run}
    if loss == "margin":
        def get_loss_fn(self: Any, model: Any, labels: ep.Tensor) -> Any:
            def loss_fn(inputs: ep.Tensor) -> ep.Tensor:
                logits = model(inputs)
                return ep.astensor(tf.reduce_sum(loss_per_example(logits.raw, labels.raw, "margin")))

            return loss_fn

        methods["get_loss_fn"] = get_loss_fn
    _SUBCLASSES[key] = type(f"Harness{cls.__name__}", (cls,), methods)
    return _SUBCLASSES[key]


def foolbox_model(model: keras.Model, gradient: str = "auto", recorder: Recorder | None = None) -> fb.TensorFlowModel:
    """``foolbox.TensorFlowModel`` on bounds (0, 1), no preprocessing (the model carries its own), of the Keras
    model itself (``"plain"``) or of its compiled function with fast backward passes (``"fast"``). With a
    ``recorder``, every point foolbox queries is shown to it with its logits."""
    forward: Any = model if resolved_gradient(model, gradient) == "plain" else compiled_forward(model)
    if recorder is None:
        return fb.TensorFlowModel(forward, bounds=(0.0, 1.0))

    def recorded(x: tf.Tensor) -> tf.Tensor:
        logits = forward(x)
        recorder.observe(x.numpy(), logits.numpy())
        return logits

    return fb.TensorFlowModel(recorded, bounds=(0.0, 1.0))


def foolbox_attack(
    attack: str,
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    steps: int | None = None,
    rel_stepsize: float | None = None,
    abs_stepsize: float | None = None,
    random_start: bool | None = None,
    restarts: int = ATTACK["restarts"],
    loss: str = ATTACK["loss"],
    targets: Any = None,
    seed: int = ATTACK["seed"],
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> AttackResult:
    """Run ``"fgm"`` (FGSM for L∞), ``"pgd"`` or ``"bim"`` through foolbox.

    Arguments and result as :func:`advsweep.attacks.fast_gradient_method` and
    :func:`advsweep.attacks.projected_gradient_descent`; ``None`` means foolbox's default. foolbox attacks fixed-shape
    blocks, each example in its row of the own attacks (:mod:`advsweep.attacks.engine.core`), and starts each example from
    its own random stream, the same start the own PGD draws. The result is the any-iterate view, from every
    point foolbox queried; ``result.last`` is what foolbox itself returns (its last iterate).
    ``gradient="fast"`` hands foolbox the model's function with the fast backward passes
    (:mod:`advsweep.models.fast_gradient`), ``"plain"`` the Keras model itself, ``"auto"`` the one the model's plan
    measured faster (:mod:`advsweep.attacks.engine.plan`).
    """
    check_model(model)
    norm, loss = check_norm(norm), check_loss(loss)
    one_of("attack", attack, ("fgm", "pgd", "bim"))
    restarts = check_positive_int("restarts", restarts)
    x, labels, targets = check_inputs(x, labels, targets, model=model)
    eps = check_epsilons(epsilons, norm, x.shape[1:])
    ids = check_example_ids(example_ids, len(x))
    instance = _configured(attack, norm, loss, targets is not None, steps=steps, rel_stepsize=rel_stepsize,
                           abs_stepsize=abs_stepsize, random_start=random_start, restarts=restarts)
    recorder = Recorder(labels, targets, eps, x.shape[1:])
    instance.recorder, instance.seed, instance.stream, instance.norm = recorder, int(seed), attack, norm
    x_last = _run_blocks(instance, foolbox_model(model, gradient, recorder), x, labels, targets, eps, ids, restarts)
    logits_last = np.stack([predict_logits(model, x_last[k], example_ids=ids) for k in range(len(eps))]) \
        if len(x) else np.zeros((len(eps), 0, model_classes(model) or 0), np.float32)
    last = result_of(eps, x_last, logits_last, labels, targets, norm)
    if attack == "fgm":
        return last  # one point per ε: the any-iterate view is the result itself
    found_any, x_any = recorder.found.copy(), recorder.x.copy()
    logits_any = (recorder.logits if recorder.logits is not None else logits_last).copy()
    found_any[eps == 0], x_any[eps == 0], logits_any[eps == 0] = last.success[eps == 0], x, logits_last[eps == 0]
    order = np.broadcast_to(np.argsort(eps, kind="stable")[:, None], found_any.shape)
    x_any, logits_any = any_iterate_view(order, found_any, x_any, logits_any, x_last, logits_last)
    return dataclasses.replace(result_of(eps, x_any, logits_any, labels, targets, norm), last=last)


def _configured(attack: str, norm: str, loss: str, targeted: bool, *, steps: int | None, rel_stepsize: float | None,
                abs_stepsize: float | None, random_start: bool | None, restarts: int) -> Any:
    """foolbox's attack object with the hyper-parameters (defaults: :data:`advsweep.defaults.ITERATIVE`)."""
    cls = _subclass(_CLASSES[(attack, norm)], loss)
    if attack == "fgm":
        if targeted:
            raise ValueError("foolbox's fast gradient attacks are untargeted only; use implementation='own' "
                             "for a targeted FGSM/FGM")
        if any(v is not None for v in (steps, rel_stepsize, abs_stepsize)) or random_start or restarts > 1:
            raise ValueError("FGSM/FGM take no steps, step size, random start or restarts")
        return cls()
    defaults = ITERATIVE[(attack, norm)]
    steps = check_positive_int("steps", defaults["steps"] if steps is None else steps)
    rel_stepsize = defaults["rel_stepsize"] if rel_stepsize is None else rel_stepsize
    check_stepsize(rel_stepsize, abs_stepsize)
    options: dict[str, Any] = {"steps": steps, "rel_stepsize": rel_stepsize, "abs_stepsize": abs_stepsize}
    if attack == "pgd":
        options["random_start"] = defaults["random_start"] if random_start is None else bool(random_start)
    elif random_start:
        raise ValueError("BIM has no random start; use attack='pgd'")
    return cls(**options)


def _run_blocks(instance: Any, fmodel: fb.TensorFlowModel, x: np.ndarray, labels: np.ndarray,
                targets: np.ndarray | None, eps: np.ndarray, ids: np.ndarray, restarts: int) -> np.ndarray:
    """Run foolbox over fixed-shape blocks, each restart on the examples not yet fooled; its last iterates
    ``(K, N, …)`` (per budget the first run's, or a later restart's that succeeded). The recorder sees every
    point it queries."""
    n = len(x)
    moving = [int(k) for k in np.argsort(eps, kind="stable") if eps[k] > 0]  # ascending; ε = 0 admits only x
    x_last = np.repeat(x[None], len(eps), axis=0)
    last_success = np.zeros((len(eps), n), dtype=bool)
    classes = targets if targets is not None else labels
    for restart in range(restarts if moving else 0):
        todo = np.arange(n) if restart == 0 else np.flatnonzero(~instance.recorder.found[moving].all(axis=0))
        instance.restart = restart
        for rows in calls(ids[todo]):
            used = rows >= 0
            block = np.where(used, todo[np.maximum(rows, 0)], -1)
            instance.block_ids = np.where(used, ids[np.maximum(block, 0)], -1)
            instance.recorder.begin_block(block)
            inputs = tf.constant(gather(x, block))
            block_classes = tf.constant(gather(classes, block))
            criterion = (fb.criteria.TargetedMisclassification(block_classes) if targets is not None
                         else fb.criteria.Misclassification(block_classes))
            _, clipped, found = instance(fmodel, inputs, criterion, epsilons=[float(eps[k]) for k in moving])
            for j, k in enumerate(moving):
                found_k = np.asarray(found[j].numpy(), dtype=bool)[used]
                examples = block[used]
                keep = found_k & ~last_success[k, examples] if restart > 0 else np.ones(len(examples), dtype=bool)
                x_last[k, examples[keep]] = clipped[j].numpy()[used][keep]
                last_success[k, examples[keep]] |= found_k[keep]
    return x_last


def fmn_minimal_norms(
    model: keras.Model,
    x: Any,
    labels: Any,
    *,
    norm: str = "linf",
    steps: int = 100,
    batch_size: int = 128,
    gradient: str = "auto",
) -> np.ndarray:
    """Per-example perturbation size of foolbox's Fast Minimum-Norm attack (Pintor et al. 2021).

    The reference for :func:`advsweep.attacks.minimal_perturbation`: float64 ``(N,)``, the L∞, L2 or L1 size of
    FMN's adversarial, 0 where the clean input is misclassified, ``inf`` where FMN fails.
    """
    check_model(model)
    norm = check_norm(norm, L1_NORMS)
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    x, labels, _ = check_inputs(x, labels, model=model)
    fmodel = foolbox_model(model, gradient)
    kinds: dict[str, Any] = {"linf": fb.attacks.LInfFMNAttack, "l2": fb.attacks.L2FMNAttack,
                             "l1": fb.attacks.L1FMNAttack}
    attack = kinds[norm](steps=steps)
    sizes = np.full(len(x), np.inf)
    for part in (slice(i, min(i + batch_size, len(x))) for i in range(0, len(x), batch_size)):
        _, clipped, success = attack(fmodel, tf.constant(x[part]), fb.criteria.Misclassification(
            tf.constant(labels[part])), epsilons=None)
        delta = (clipped.numpy() - x[part]).reshape(part.stop - part.start, -1)
        size = sizes_of(delta, norm)
        ok = np.asarray(success.numpy(), dtype=bool)
        sizes[part][ok] = size[ok]
    return sizes
