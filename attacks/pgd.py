"""Projected gradient descent (L∞ and L2), with random start and restarts; BIM is PGD without them.

References:
    A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018 (PGD; the MNIST setting ε = 0.3, 40 steps of 0.01, random start);
    A. Kurakin, I. Goodfellow, S. Bengio, "Adversarial Examples in the Physical World", ICLR Workshop
    2017 (BIM).
"""

from __future__ import annotations

from typing import Any

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
    gradient_fn,
    pgd_step,
    predict_logits,
    random_start,
    success_of,
)

# foolbox 3.3.4's defaults
DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("pgd", "linf"): {"rel_stepsize": 0.01 / 0.3, "steps": 40, "random_start": True},
    ("pgd", "l2"): {"rel_stepsize": 0.025, "steps": 50, "random_start": True},
    ("bim", "linf"): {"rel_stepsize": 0.2, "steps": 10, "random_start": False},
    ("bim", "l2"): {"rel_stepsize": 0.2, "steps": 10, "random_start": False},
}


def projected_gradient_descent(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = "linf",
    steps: int | None = None,
    rel_stepsize: float | None = None,
    abs_stepsize: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    targets: Any = None,
    early_stop: bool = False,
    seed: int = 0,
    batch_size: int = 128,
    gradient: str = "fast",
) -> AttackResult:
    """PGD for every ε of a list (Madry et al. 2018).

    Each step: ``x ← clip_[0,1](Π_ε(x ± stepsize · normalize(∇_x loss)))``, from a uniform random
    point of the ε-ball (``random_start``) or from ``x``.

    Args:
        model: logits model, float32 ``(N, 28, 28, 1)`` in [0, 1] → ``(N, 10)``.
        x: clean images ``(N, 28, 28, 1)`` in [0, 1].
        labels: true classes ``(N,)`` in 0..9 (always required).
        epsilons: one ε or a list, each in [0, 1] (L∞) or [0, 28] (L2).
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps (default 40 for L∞, 50 for L2, as foolbox).
        rel_stepsize: step size as a fraction of ε (default 0.01/0.3 for L∞, 0.025 for L2).
        abs_stepsize: an absolute step size; takes precedence over ``rel_stepsize``.
        random_start: start from a uniform point of the ε-ball (on by default).
        restarts: independent runs; an example counts as robust only if no run fools it. Later runs
            attack only the examples that earlier runs did not fool.
        loss: ``"ce"`` or ``"margin"`` (Carlini–Wagner).
        targets: target classes for a targeted attack.
        early_stop: stop attacking an example as soon as the attack succeeds on it (saves work when
            robust accuracy is what is wanted; the adversarial returned is the first one found). The
            ε grid is then walked in ascending order and an adversarial found at one ε is kept for
            every larger ε (it lies in every larger ball), so robust accuracy never rises with ε.
        seed: seeds the random starts; the same seed gives the same adversarials.
        batch_size: examples per gradient call.
        gradient: ``"fast"`` (custom backward passes through a frozen VGG16 base, the default) or
            ``"plain"`` (``tf.GradientTape`` through the Keras model); equal up to float rounding.

    Returns:
        An :class:`~attacks.core.AttackResult` with ``K = len(epsilons)`` rows.
    """
    defaults = DEFAULTS[("pgd", check_norm(norm))]
    return _iterative(
        model, x, labels, epsilons, norm=norm,
        steps=defaults["steps"] if steps is None else steps,
        rel_stepsize=defaults["rel_stepsize"] if rel_stepsize is None else rel_stepsize,
        abs_stepsize=abs_stepsize, random_start=random_start, restarts=restarts, loss=loss, targets=targets,
        early_stop=early_stop, seed=seed, batch_size=batch_size, gradient=gradient,
    )  # fmt: skip


def basic_iterative_method(
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    norm: str = "linf",
    steps: int = 10,
    rel_stepsize: float = 0.2,
    abs_stepsize: float | None = None,
    loss: str = "ce",
    targets: Any = None,
    early_stop: bool = False,
    batch_size: int = 128,
    gradient: str = "fast",
) -> AttackResult:
    """BIM (Kurakin et al. 2017): PGD from the clean input, no random start (foolbox's defaults:
    10 steps of 0.2 ε). Arguments as :func:`projected_gradient_descent`."""
    return _iterative(
        model, x, labels, epsilons, norm=norm, steps=steps, rel_stepsize=rel_stepsize, abs_stepsize=abs_stepsize,
        random_start=False, restarts=1, loss=loss, targets=targets, early_stop=early_stop, seed=0,
        batch_size=batch_size, gradient=gradient,
    )  # fmt: skip


def _iterative(
    model: keras.Model, x: Any, labels: Any, epsilons: Any, *, norm: str, steps: int, rel_stepsize: float,
    abs_stepsize: float | None, random_start: bool, restarts: int, loss: str, targets: Any, early_stop: bool,
    seed: int, batch_size: int, gradient: str = "fast",
) -> AttackResult:
    check_model(model)
    norm, loss = check_norm(norm), check_loss(loss)
    eps = check_epsilons(epsilons, norm)
    steps = check_positive_int("steps", steps)
    restarts = check_positive_int("restarts", restarts)
    batch_size = check_positive_int("batch_size", batch_size)
    check_stepsize(rel_stepsize, abs_stepsize)
    if not isinstance(random_start, bool) or not isinstance(early_stop, bool):
        raise ValueError(f"`random_start` and `early_stop` must be true or false. "
                         f"Received: random_start={random_start!r}, early_stop={early_stop!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer. Received: seed={seed!r}")
    x, labels, targets = check_inputs(x, labels, targets)

    n = len(x)
    x_adv = np.empty((len(eps),) + x.shape, dtype=np.float32)
    logits = np.empty((len(eps), n, 10), dtype=np.float32)
    success = np.zeros((len(eps), n), dtype=bool)
    previous: int | None = None
    for k in np.argsort(eps, kind="stable"):  # ascending ε
        epsilon = eps[k]
        carried = np.zeros(n, dtype=bool)
        if early_stop and previous is not None:
            # an adversarial found at a smaller ε lies inside this ε-ball too: keep it, attack only the rest
            carried = success[previous].copy()
            x_adv[k, carried], logits[k, carried], success[k, carried] = (
                x_adv[previous, carried], logits[previous, carried], True)
        previous = k
        if epsilon == 0.0:  # nothing can move: the clean input, no gradient needed
            x_adv[k] = x
            logits[k] = predict_logits(model, x, batch_size=max(batch_size, 256))
            success[k] = success_of(logits[k], labels, targets)
            continue
        stepsize = float(abs_stepsize) if abs_stepsize is not None else float(rel_stepsize) * float(epsilon)
        for restart in range(restarts):
            todo = np.flatnonzero(~success[k]) if restart > 0 else np.flatnonzero(~carried)  # carried ones succeeded
            if len(todo) == 0:
                break
            rng = np.random.default_rng([seed, k, restart])
            found_x, found_logits = pgd_run(
                model, x[todo], labels[todo], None if targets is None else targets[todo],
                np.full(len(todo), epsilon), stepsize=stepsize, steps=steps, norm=norm, loss=loss,
                random_start=random_start, early_stop=early_stop, rng=rng, batch_size=batch_size, gradient=gradient,
            )  # fmt: skip
            found_success = success_of(found_logits, labels[todo], None if targets is None else targets[todo])
            # keep a run's result where it succeeds, or where no earlier run has been recorded
            keep = found_success | (restart == 0)
            x_adv[k, todo[keep]] = found_x[keep]
            logits[k, todo[keep]] = found_logits[keep]
            success[k, todo[keep]] = found_success[keep]
    return AttackResult(epsilons=eps, x_adv=x_adv, logits=logits, success=success, norm=norm,
                        targeted=targets is not None)


def pgd_run(
    model: keras.Model,
    x0: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray | None,
    eps: np.ndarray,
    *,
    stepsize: float | np.ndarray,
    steps: int,
    norm: str,
    loss: str,
    random_start: bool,
    early_stop: bool,
    rng: np.random.Generator,
    batch_size: int,
    gradient: str = "fast",
) -> tuple[np.ndarray, np.ndarray]:
    """One PGD run on validated inputs with a per-example ε ``(N,)`` (and step size); returns
    ``(x_adv (N, 28, 28, 1), logits (N, 10))``.

    With ``early_stop``, an example leaves the batch at the first iterate the model gets wrong (the
    logits of each iterate come free with its gradient), and that iterate is its result.
    """
    from attacks.core import random_start as draw_start

    classes = targets if targets is not None else labels
    direction = -1.0 if targets is not None else 1.0
    stepsizes = np.broadcast_to(np.asarray(stepsize, dtype=np.float32), eps.shape).astype(np.float32)
    eps32 = eps.astype(np.float32)
    start = draw_start(x0, eps, norm, rng) if random_start else x0.copy()
    value_and_gradient = gradient_fn(model, loss, gradient)

    x_out = np.empty_like(x0)
    logits_out = np.empty((len(x0), 10), dtype=np.float32)
    for part in batches(len(x0), batch_size):
        index = np.arange(part.start, part.stop)
        x_cur = tf.constant(start[part])
        x_orig = tf.constant(x0[part])
        cls = tf.constant(classes[part])
        eps_t, step_t = tf.constant(eps32[part]), tf.constant(stepsizes[part])
        for _ in range(steps):
            logits_t, gradient = value_and_gradient(x_cur, cls)
            if early_stop:
                logits_np = logits_t.numpy()
                done = success_of(logits_np, labels[index], None if targets is None else targets[index])
                if done.any():
                    x_out[index[done]] = x_cur.numpy()[done]
                    logits_out[index[done]] = logits_np[done]
                    keep = np.flatnonzero(~done)
                    if len(keep) == 0:
                        break
                    index = index[keep]
                    x_cur, x_orig, cls = (tf.gather(t, keep) for t in (x_cur, x_orig, cls))
                    eps_t, step_t, gradient = (tf.gather(t, keep) for t in (eps_t, step_t, gradient))
            x_cur = pgd_step(x_cur, x_orig, gradient, eps_t, step_t, norm, direction)
        else:
            x_out[index] = x_cur.numpy()
            logits_out[index] = predict_logits(model, x_out[index], batch_size=len(index))
    return x_out, logits_out
