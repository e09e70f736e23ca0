"""Fast gradient method: FGSM (L∞) and FGM (L2).

References:
    I. Goodfellow, J. Shlens, C. Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
    (FGSM); T. Miyato, A. Dai, I. Goodfellow, "Adversarial Training Methods for Semi-Supervised Text
    Classification", ICLR 2017 (the L2 variant).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.attacks.engine.core import (
    AttackResult,
    checked_call,
    gradient_fn,
    in_calls,
    model_classes,
    predict_logits,
    success_of,
)
from advsweep.attacks.engine.geometry import normalize, project_in_box
from advsweep.defaults import ATTACK


def fast_gradient_method(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = ATTACK["norm"],
    loss: str = ATTACK["loss"],
    targets: Any = None,
    example_ids: Any = None,
    gradient: str = ATTACK["gradient"],
) -> AttackResult:
    """One gradient step of size ε from the clean input, for every ε of a list.

    The gradient is computed once per example and reused for all ε:
    ``x_adv = clip_[0,1](x + Π_ε(± ε · normalize(∇_x loss)))``.

    Args:
        model: logits model, float32 ``(N, 28, 28, 1)`` in [0, 1] → ``(N, 10)``.
        x: clean images ``(N, 28, 28, 1)`` in [0, 1].
        labels: true classes ``(N,)`` in 0..9 (always required).
        epsilons: one ε or a list, each in [0, 1] (L∞) or [0, 28] (L2), in pixel units on [0, 1].
        norm: ``"linf"`` (FGSM: sign of the gradient) or ``"l2"`` (FGM: unit-norm gradient).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini–Wagner logit margin).
        targets: target classes ``(N,)`` for a targeted attack (descends the loss towards them).
        example_ids: test-set indices ``(N,)``: each example's row in the fixed-shape model calls
            (see :mod:`advsweep.attacks.engine.core`); default ``0 … N−1``.
        gradient: ``"auto"`` (the default: the faster of the two on this machine, measured once,
            :mod:`advsweep.attacks.engine.plan`), ``"fast"`` (custom backward passes through a frozen VGG16 base) or
            ``"plain"`` (``tf.GradientTape`` through the Keras model); equal up to float rounding.

    Returns:
        An :class:`~advsweep.attacks.engine.core.AttackResult` with ``K = len(epsilons)`` rows (one point per ε: FGSM has
        no last-iterate view apart from its result).
    """
    call = checked_call(model, x, labels, epsilons, norm=norm, example_ids=example_ids, targets=targets, loss=loss,
                        gradient=gradient)
    norm, x, labels, targets, eps, ids = call.norm, call.x, call.labels, call.targets, call.eps, call.example_ids
    loss, gradient = call.params["loss"], call.params["gradient"]
    classes = targets if targets is not None else labels
    direction = -1.0 if targets is not None else 1.0

    value_and_gradient = gradient_fn(model, loss, gradient)

    def steps(x_block: tf.Tensor, class_block: tf.Tensor) -> tuple[np.ndarray, ...]:
        """One block's gradient and its point at every ε: each block is gathered and called once."""
        unit_step = normalize(value_and_gradient(x_block, class_block)[1], norm).numpy()
        return tuple(fgm_step(x_block.numpy(), unit_step, float(epsilon), norm, direction) for epsilon in eps)

    x_adv = np.stack(in_calls(steps, (x, classes), ids)) if len(x) and len(eps) else np.empty(
        (len(eps),) + x.shape, dtype=np.float32)
    logits = np.stack([predict_logits(model, x_adv[k], example_ids=ids) for k in range(len(eps))]) \
        if len(x) else np.zeros((len(eps), 0, model_classes(model) or 0), np.float32)
    success = np.stack([success_of(logits[k], labels, targets) for k in range(len(eps))])
    return AttackResult(epsilons=eps, x_adv=x_adv, logits=logits, success=success, norm=norm,
                        targeted=targets is not None)


def fgm_step(x0: np.ndarray, unit_step: np.ndarray, epsilon: float, norm: str, direction: float = 1.0) -> np.ndarray:
    """``clip_[0,1](Π_ε(x0 + direction · ε · unit_step))`` in float32, in foolbox's order of operations."""
    if epsilon == 0.0:
        return x0.copy()
    x0_t = tf.constant(x0)
    moved = x0_t + direction * (np.float32(epsilon) * tf.constant(unit_step))
    eps = tf.fill([len(x0)], np.float32(epsilon))
    return project_in_box(moved, x0_t, eps, norm).numpy()
