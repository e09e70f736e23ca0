"""The same attacks through foolbox 3 (Rauber et al., JOSS 2020), behind the harness' call and result.

The model is wrapped as ``foolbox.TensorFlowModel(model, bounds=(0, 1))`` with no preprocessing: the
harness' models carry their preprocessing inside the graph. foolbox's ``epsilons=[…]`` call gives
the (K × N) success matrix; the adapter adds batching, restarts over still-robust examples, the
Carlini–Wagner margin loss (by overriding foolbox's ``get_loss_fn``) and the logits of each result.
"""

from __future__ import annotations

import logging
from typing import Any

import eagerpy as ep
import foolbox as fb
import keras
import numpy as np
import tensorflow as tf

from attacks.core import (
    AttackResult,
    batches,
    check_epsilons,
    check_inputs,
    check_loss,
    check_model,
    check_norm,
    check_positive_int,
    check_stepsize,
    loss_per_example,
    predict_logits,
    success_of,
)
from attacks.pgd import DEFAULTS
from models.fast_gradient import check_gradient_path, model_function

logger = logging.getLogger(__name__)

_CLASSES: dict[tuple[str, str], type] = {
    ("fgm", "linf"): fb.attacks.LinfFastGradientAttack,
    ("fgm", "l2"): fb.attacks.L2FastGradientAttack,
    ("pgd", "linf"): fb.attacks.LinfProjectedGradientDescentAttack,
    ("pgd", "l2"): fb.attacks.L2ProjectedGradientDescentAttack,
    ("bim", "linf"): fb.attacks.LinfBasicIterativeAttack,
    ("bim", "l2"): fb.attacks.L2BasicIterativeAttack,
}
_MARGIN_CLASSES: dict[type, type] = {}


def _with_loss(cls: type, loss: str) -> type:
    """foolbox's attack class, or a subclass whose loss is the Carlini–Wagner margin."""
    if loss == "ce":
        return cls
    if cls not in _MARGIN_CLASSES:

        def get_loss_fn(self: Any, model: Any, labels: ep.Tensor) -> Any:
            def loss_fn(inputs: ep.Tensor) -> ep.Tensor:
                logits = model(inputs)
                return ep.astensor(tf.reduce_sum(loss_per_example(logits.raw, labels.raw, "margin")))

            return loss_fn

        _MARGIN_CLASSES[cls] = type(f"Margin{cls.__name__}", (cls,), {"get_loss_fn": get_loss_fn})
    return _MARGIN_CLASSES[cls]


def foolbox_model(model: keras.Model, gradient: str = "fast") -> fb.TensorFlowModel:
    """``foolbox.TensorFlowModel`` on bounds (0, 1) of the model (``"plain"``) or of its compiled
    function with fast backward passes (``"fast"``); no preprocessing, the model carries its own."""
    if check_gradient_path(gradient) == "plain":
        return fb.TensorFlowModel(model, bounds=(0.0, 1.0))
    return fb.TensorFlowModel(tf.function(model_function(model, "fast"), reduce_retracing=True), bounds=(0.0, 1.0))


def foolbox_attack(
    attack: str,
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = "linf",
    steps: int | None = None,
    rel_stepsize: float | None = None,
    abs_stepsize: float | None = None,
    random_start: bool | None = None,
    restarts: int = 1,
    loss: str = "ce",
    targets: Any = None,
    seed: int = 0,
    batch_size: int = 128,
    gradient: str = "fast",
) -> AttackResult:
    """Run ``"fgm"`` (FGSM for L∞), ``"pgd"`` or ``"bim"`` through foolbox.

    Arguments and result as :func:`attacks.fast_gradient_method` and
    :func:`attacks.projected_gradient_descent`; ``None`` means foolbox's default. foolbox's random
    start draws from TensorFlow's global generator, which is seeded with ``seed`` before each run.
    ``gradient="fast"`` hands foolbox the model's function with the fast backward passes
    (:mod:`models.fast_gradient`), ``"plain"`` the Keras model itself.
    """
    check_model(model)
    norm, loss = check_norm(norm), check_loss(loss)
    if attack not in ("fgm", "pgd", "bim"):
        raise ValueError(f"`attack` must be one of ['fgm', 'pgd', 'bim']. Received: attack={attack!r}")
    eps = check_epsilons(epsilons, norm)
    restarts = check_positive_int("restarts", restarts)
    batch_size = check_positive_int("batch_size", batch_size)
    x, labels, targets = check_inputs(x, labels, targets)
    cls = _with_loss(_CLASSES[(attack, norm)], loss)
    if attack == "fgm":
        if targets is not None:
            raise ValueError("foolbox's fast gradient attacks are untargeted only; use implementation='own' "
                             "for a targeted FGSM/FGM")
        if any(v is not None for v in (steps, rel_stepsize, abs_stepsize)) or random_start or restarts > 1:
            raise ValueError("FGSM/FGM take no steps, step size, random start or restarts")
        instance = cls()
    else:
        defaults = DEFAULTS[(attack, norm)]
        steps = check_positive_int("steps", defaults["steps"] if steps is None else steps)
        rel_stepsize = defaults["rel_stepsize"] if rel_stepsize is None else rel_stepsize
        check_stepsize(rel_stepsize, abs_stepsize)
        options: dict[str, Any] = {"steps": steps, "rel_stepsize": rel_stepsize, "abs_stepsize": abs_stepsize}
        if attack == "pgd":
            options["random_start"] = defaults["random_start"] if random_start is None else bool(random_start)
        elif random_start:
            raise ValueError("BIM has no random start; use attack='pgd'")
        instance = cls(**options)

    fmodel = foolbox_model(model, gradient)
    n = len(x)
    x_adv = np.repeat(x[None], len(eps), axis=0)
    success = np.zeros((len(eps), n), dtype=bool)
    # ε = 0 admits only the input itself (foolbox would return it after running every step)
    moving = [k for k in range(len(eps)) if eps[k] > 0]
    for restart in range(restarts if moving else 0):
        todo_any = np.flatnonzero(~success[moving].all(axis=0)) if restart > 0 else np.arange(n)
        if len(todo_any) == 0:
            break
        tf.random.set_seed(int(seed) * 1000 + restart)
        for part in batches(len(todo_any), batch_size):
            index = todo_any[part]
            inputs = tf.constant(x[index])
            classes = tf.constant(targets[index] if targets is not None else labels[index])
            criterion = (fb.criteria.TargetedMisclassification(classes) if targets is not None
                         else fb.criteria.Misclassification(classes))
            _, clipped, found = instance(fmodel, inputs, criterion, epsilons=[float(eps[k]) for k in moving])
            for j, k in enumerate(moving):
                found_k = np.asarray(found[j].numpy(), dtype=bool)
                keep = found_k & ~success[k, index] if restart > 0 else np.ones(len(index), dtype=bool)
                x_adv[k, index[keep]] = clipped[j].numpy()[keep]
                success[k, index[keep]] |= found_k[keep]
    logits = np.stack([predict_logits(model, x_adv[k], batch_size=max(batch_size, 256)) for k in range(len(eps))]) \
        if n else np.zeros((len(eps), 0, 10), np.float32)
    recomputed = np.stack([success_of(logits[k], labels, targets) for k in range(len(eps))])
    if not np.array_equal(recomputed, success):
        logger.debug("foolbox: %d success flags differ when recomputed from logits (float ties); using logits",
                     int(np.sum(recomputed != success)))
    return AttackResult(epsilons=eps, x_adv=x_adv, logits=logits, success=recomputed, norm=norm,
                        targeted=targets is not None)


def fmn_minimal_norms(
    model: keras.Model,
    x: Any,
    labels: Any,
    *,
    norm: str = "linf",
    steps: int = 100,
    batch_size: int = 128,
    gradient: str = "fast",
) -> np.ndarray:
    """Per-example perturbation size of foolbox's Fast Minimum-Norm attack (Pintor et al. 2021).

    The reference for :func:`attacks.minimal_perturbation`: float64 ``(N,)``, the L∞ or L2 size of
    FMN's adversarial, 0 where the clean input is misclassified, ``inf`` where FMN fails.
    """
    check_model(model)
    norm = check_norm(norm)
    steps = check_positive_int("steps", steps)
    x, labels, _ = check_inputs(x, labels)
    fmodel = foolbox_model(model, gradient)
    attack = fb.attacks.LInfFMNAttack(steps=steps) if norm == "linf" else fb.attacks.L2FMNAttack(steps=steps)
    sizes = np.full(len(x), np.inf)
    for part in batches(len(x), batch_size):
        _, clipped, success = attack(fmodel, tf.constant(x[part]), fb.criteria.Misclassification(
            tf.constant(labels[part])), epsilons=None)
        delta = (clipped.numpy() - x[part]).reshape(part.stop - part.start, -1)
        size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
        ok = np.asarray(success.numpy(), dtype=bool)
        sizes[part][ok] = size[ok]
    return sizes
