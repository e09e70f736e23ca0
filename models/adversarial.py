"""Adversarial training: PGD (Madry et al. 2018), fast FGSM from a random start (Wong et al. 2020) and TRADES
(Zhang et al. 2019), with a held-out PGD accuracy after every epoch, early stopping on it and the detection of
fast training's collapse ("catastrophic overfitting").

The training-time attacks live here, not in :mod:`advsweep.attacks`: they are part of the training recipe (as in
Madry et al.'s ``mnist_challenge`` and Wong et al.'s ``fast_adversarial``), run inside one compiled training step,
and the model layer does not import the attack layer. How robust a trained model is, is measured afterwards by the
attack layer's evaluation (AutoAttack, PGD), never by these.

References:
    A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018. E. Wong, L. Rice, J. Z. Kolter, "Fast is better than free: Revisiting adversarial
    training", ICLR 2020. H. Zhang, Y. Yu, J. Jiao, E. Xing, L. El Ghaoui, M. Jordan, "Theoretically Principled
    Trade-off between Robustness and Accuracy", ICML 2019. P. de Jorge, A. Bibi, R. Volpi, A. Sanyal, P. Torr,
    G. Rogez, P. Dokania, "Make Some Noise: Reliable and Efficient Single-Step Adversarial Training", NeurIPS 2022.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.models.config import AdversarialConfig

logger = logging.getLogger(__name__)

Forward = Callable[[tf.Tensor], tf.Tensor]
EVAL_BATCH = 500


def _cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example softmax cross-entropy, (N,)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def _margin(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example Carlini–Wagner margin ``max_{j≠y} z_j − z_y``, (N,): positive when misclassified."""
    true = tf.gather(logits, labels, axis=1, batch_dims=1)
    others = tf.where(tf.one_hot(labels, tf.shape(logits)[1]) > 0, tf.fill(tf.shape(logits), -np.inf), logits)
    return tf.reduce_max(others, axis=1) - true


def _kl(p_log: tf.Tensor, q_log: tf.Tensor) -> tf.Tensor:
    """Per-example KL(p ‖ q) from log-probabilities, (N,)."""
    return tf.reduce_sum(tf.exp(p_log) * (p_log - q_log), axis=1)


def _input_gradient(forward: Forward, x: tf.Tensor, objective: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        value = tf.reduce_sum(objective(forward(x)))
    return tape.gradient(value, x)


def _project(x_adv: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)


def pgd_linf(forward: Forward, x: tf.Tensor, labels: tf.Tensor, eps: tf.Tensor, *, steps: int, step_size: float,
             random_start: bool, key: tf.Tensor, loss: str = "cross_entropy") -> tf.Tensor:
    """L∞ PGD ascending ``loss`` (``"cross_entropy"`` or ``"margin"``), last iterate, in the ε-ball and [0, 1].

    ``step_size`` is in units of ``eps``; the start is uniform in the ε-ball when ``random_start``. ``key`` seeds the
    start (a stateless ``(2,)`` int32 key), so a training step is a function of its inputs.
    """
    objective = _cross_entropy if loss == "cross_entropy" else _margin
    x_adv = x
    if random_start:
        x_adv = _project(x + eps * tf.random.stateless_uniform(tf.shape(x), key, -1.0, 1.0), x, eps)
    for _ in range(steps):
        gradient = _input_gradient(forward, x_adv, lambda logits: objective(labels, logits))
        x_adv = _project(x_adv + step_size * eps * tf.sign(gradient), x, eps)
    return tf.stop_gradient(x_adv)


def fast_fgsm(forward: Forward, x: tf.Tensor, labels: tf.Tensor, eps: tf.Tensor, *, step_size: float, noise: float,
              clip_noise: bool, key: tf.Tensor) -> tf.Tensor:
    """One FGSM step of ``step_size``·ε on the cross-entropy from a uniform start of radius ``noise``·ε.

    The gradient is taken at the start as drawn, not clipped to [0, 1] (Wong et al.'s MNIST code and N-FGSM's both
    do so; Wong et al.'s CIFAR-10 code clips it). On MNIST this decides the outcome, measured with their own PyTorch
    loop on their network (``benchmarks/fast_at_reference.py``: 10 epochs, ε = 0.3, 1000 test images, PGD-10): 89.4%
    robust with the start as drawn, 0.3% with the start clipped to the box, where half of every background pixel's
    noise is cut away.
    With ``clip_noise`` the step's result is projected onto the ε-ball (Wong et al.); without it only onto [0, 1],
    so the point may lie up to ``(noise + step_size)``·ε away (N-FGSM, de Jorge et al.).
    """
    start = x + noise * eps * tf.random.stateless_uniform(tf.shape(x), key, -1.0, 1.0)
    gradient = _input_gradient(forward, start, lambda logits: _cross_entropy(labels, logits))
    moved = start + step_size * eps * tf.sign(gradient)
    return tf.stop_gradient(_project(moved, x, eps) if clip_noise else tf.clip_by_value(moved, 0.0, 1.0))


def trades_adversarial(forward: Forward, x: tf.Tensor, eps: tf.Tensor, *, steps: int, step_size: float,
                       key: tf.Tensor) -> tf.Tensor:
    """TRADES' inner maximisation: PGD on KL(softmax(f(x)) ‖ softmax(f(x'))) from ``x + 0.001·N(0, 1)``."""
    clean = tf.stop_gradient(tf.nn.log_softmax(forward(x)))
    x_adv = tf.clip_by_value(x + 0.001 * tf.random.stateless_normal(tf.shape(x), key), 0.0, 1.0)
    for _ in range(steps):
        gradient = _input_gradient(forward, x_adv, lambda logits: _kl(clean, tf.nn.log_softmax(logits)))
        x_adv = _project(x_adv + step_size * eps * tf.sign(gradient), x, eps)
    return tf.stop_gradient(x_adv)


def learning_rate_at(schedule: str, peak: float, progress: float) -> float:
    """The learning rate at ``progress`` ∈ [0, 1] of training (see :class:`AdversarialConfig` ``schedule``)."""
    if schedule == "constant":
        return peak
    if schedule == "decay":
        return peak * min(1.0, 2.0 * (1.0 - progress))
    if progress < 0.4:  # onecycle
        return peak * progress / 0.4
    return peak * (1.0 - progress) / 0.6


@dataclasses.dataclass
class Collapse:
    """Catastrophic overfitting found after ``epoch``: why, and which epoch's weights are kept instead."""

    epoch: int
    reason: str
    robust_accuracy: float
    best_robust_accuracy: float
    best_epoch: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def detect_collapse(history: dict[str, list[float]], adversarial: AdversarialConfig) -> Collapse | None:
    """Whether the last epoch of ``history`` shows catastrophic overfitting.

    ``history`` has, per epoch, ``val_robust_accuracy`` (held-out PGD at the full training ε), ``accuracy`` (on that
    epoch's own training adversarials) and ``eps_reached`` (1.0 when the whole epoch trained at the full ε). The
    last epoch collapsed when its held-out robust accuracy fell more than ``collapse_drop`` below the best earlier
    epoch (Wong et al.'s early-stopping signal), or when, trained at the full ε throughout, it is more than
    ``collapse_gap`` below the accuracy on its own training adversarials: the model withstands the training attack
    and not PGD, the signature of fast training's collapse (Wong et al., Fig. 3), which a collapse in the first epoch
    shows without an earlier epoch to compare with. The gap counts only while the held-out robust accuracy is not
    climbing (the first epoch, or no better than an earlier one): early in training a model withstands its own
    training attack before it withstands PGD, and Wong et al.'s recipe on their MNIST network showed a gap of 0.48
    at epoch 2 (held-out PGD 0.168 → 0.174) on a run that went on to 0.88.
    """
    robust = history["val_robust_accuracy"]
    epoch = len(robust)
    last = robust[-1]
    if epoch > 1:
        best_index = int(np.argmax(robust[:-1]))
        if robust[best_index] - last > adversarial.collapse_drop:
            return Collapse(epoch=epoch, robust_accuracy=last, best_robust_accuracy=robust[best_index],
                            best_epoch=best_index + 1,
                            reason=f"held-out PGD accuracy fell from {robust[best_index]:.3f} (epoch {best_index + 1}) "
                                   f"to {last:.3f}, more than collapse_drop={adversarial.collapse_drop:g}")
    climbing = epoch > 1 and last > max(robust[:-1])
    if history["eps_reached"][-1] >= 1.0 and history["accuracy"][-1] - last > adversarial.collapse_gap and not climbing:
        best_index = int(np.argmax(robust))
        return Collapse(epoch=epoch, robust_accuracy=last, best_robust_accuracy=robust[best_index],
                        best_epoch=best_index + 1,
                        reason=f"accuracy on the training adversarials {history['accuracy'][-1]:.3f} against held-out "
                               f"PGD accuracy {last:.3f}: a gap of more than collapse_gap={adversarial.collapse_gap:g}")
    return None


def robust_accuracy_check(forward: Forward, eps: float, *, steps: int) -> Callable[[np.ndarray, np.ndarray, int],
                                                                               tuple[float, float]]:
    """``(x, y, seed) → (clean, robust)`` accuracy of ``forward`` on ``x``: L∞ PGD with the margin loss, a random
    start and ``steps`` steps of 2.5 ε / steps, in batches, compiled once. The held-out check of training; reported
    robustness comes from the attack layer."""

    @tf.function(reduce_retracing=True)
    def batch(images: tf.Tensor, labels: tf.Tensor, key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        clean = tf.argmax(forward(images), axis=1) == labels
        x_adv = pgd_linf(forward, images, labels, tf.constant(eps, tf.float32), steps=steps, step_size=2.5 / steps,
                         random_start=True, key=key, loss="margin")
        robust = tf.logical_and(clean, tf.argmax(forward(x_adv), axis=1) == labels)
        return tf.reduce_sum(tf.cast(clean, tf.int32)), tf.reduce_sum(tf.cast(robust, tf.int32))

    def check(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float]:
        clean_total = robust_total = 0
        for start in range(0, len(x), EVAL_BATCH):
            key = tf.constant([seed, start], tf.int32)
            clean, robust = batch(tf.constant(x[start:start + EVAL_BATCH]), tf.constant(y[start:start + EVAL_BATCH]),
                                  key)
            clean_total += int(clean)
            robust_total += int(robust)
        return clean_total / len(x), robust_total / len(x)

    return check


@dataclasses.dataclass
class AdversarialResult:
    """What :func:`train_adversarially` returns: the per-epoch history, the kept epoch and any collapse."""

    history: dict[str, list[float]]
    best_epoch: int
    collapse: Collapse | None
    stopped_early: bool


def train_adversarially(model: keras.Model, adversarial: AdversarialConfig, *, x: np.ndarray, y: np.ndarray,
                        x_val: np.ndarray, y_val: np.ndarray, epochs: int, batch_size: int, learning_rate: float,
                        patience: int, seed: int, attack_forward: Forward | None = None,
                        batches: Callable[[int], Any] | None = None, log_dir: Path | None = None) -> AdversarialResult:
    """Train ``model``'s trainable variables on adversarial inputs, and keep the epoch of best held-out PGD accuracy.

    Args:
        model: a logits model; only its trainable variables change (for the frozen VGG16: the head).
        adversarial: the method and its options.
        x, y: training images float32 (N, 28, 28, 1) in [0, 1] and int64 labels.
        x_val, y_val: validation images; the first ``eval_examples`` are attacked after each epoch.
        epochs, batch_size, learning_rate, patience: as in the model config; Adam at ``learning_rate``, shaped by
            ``adversarial.schedule``; training stops after ``patience`` epochs without a better held-out PGD accuracy.
        seed: seeds the batch order and every random start (stateless keys), so a run is reproducible.
        attack_forward: the function the attacks differentiate (default: the model in inference mode); the frozen
            VGG16 passes its fast input gradient.
        batches: ``epoch → iterable of (images, labels)`` replacing the plain shuffled batches (augmentation).
        log_dir: where TensorBoard's event files go (``train/`` and ``validation/``), or ``None``.

    Returns:
        The history (per epoch: ``loss``, ``accuracy`` on the training adversarials, ``val_accuracy``,
        ``val_robust_accuracy``, ``eps`` at the epoch's end, ``eps_reached``, ``learning_rate``, ``seconds``),
        the kept epoch (1-based), whose weights the model now holds, and the collapse if one was found.
    """
    forward: Forward = attack_forward or (lambda images: model(images, training=False))
    # The schedule is applied by assigning the optimizer's own rate variable before each step: Keras 3 copies the
    # value of a tf.Variable handed to `optimizer.learning_rate` once, so a separate variable would leave the rate
    # at its peak for the whole run (what happened to every schedule before 2026-11-30).
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    train_step = _train_step(model, forward, optimizer, adversarial)
    rng = np.random.default_rng(seed)
    steps_per_epoch = int(np.ceil(len(x) / batch_size))
    schedule = _Schedule(adversarial, learning_rate, steps_per_epoch * epochs, adversarial.ramp_epochs * steps_per_epoch)
    eval_x, eval_y = x_val[: adversarial.eval_examples], y_val[: adversarial.eval_examples]
    held_out = robust_accuracy_check(forward, adversarial.eps, steps=adversarial.eval_steps)
    writers = None if log_dir is None else {
        part: tf.summary.create_file_writer(str(log_dir / part)) for part in ("train", "validation")}
    history: dict[str, list[float]] = {name: [] for name in (
        "loss", "accuracy", "val_accuracy", "val_robust_accuracy", "eps", "eps_reached", "learning_rate", "seconds")}
    kept = _Kept(model.get_weights())
    for epoch in range(epochs):
        started = time.perf_counter()
        if batches is None:
            order = rng.permutation(len(x))
            epoch_batches: Any = ((x[order[i:i + batch_size]], y[order[i:i + batch_size]])
                                  for i in range(0, len(x), batch_size))
        else:
            epoch_batches = batches(epoch)
        row = _train_epoch(train_step, optimizer, schedule, epoch_batches, rng)
        clean, robust = held_out(eval_x, eval_y, seed + epoch)
        row.update({"val_accuracy": clean, "val_robust_accuracy": robust, "seconds": time.perf_counter() - started})
        for name in history:
            history[name].append(float(row[name]))
        _log_epoch(writers, epoch, epochs, row, adversarial)
        if kept.stop_after(model, epoch, robust, detect_collapse(history, adversarial), patience):
            break
    for writer in (writers or {}).values():
        writer.flush()
        writer.close()
    model.set_weights(kept.weights)
    return AdversarialResult(history=history, best_epoch=kept.epoch, collapse=kept.collapse,
                             stopped_early=len(history["loss"]) < epochs)


@dataclasses.dataclass
class _Kept:
    """The weights kept so far: those of the epoch of best held-out PGD accuracy (1-based ``epoch``; 0 before the
    first), the epochs since it, and the collapse that ended the training, if one did."""

    weights: list[np.ndarray]
    epoch: int = 0
    robust: float = -1.0
    since: int = 0
    collapse: Collapse | None = None

    def stop_after(self, model: keras.Model, epoch: int, robust: float, collapse: Collapse | None,
                   patience: int) -> bool:
        """Keep epoch ``epoch`` (0-based) if it is the best so far; whether the training stops here (a collapse,
        or ``patience`` epochs without a better held-out PGD accuracy)."""
        if collapse is not None:
            logger.warning("catastrophic overfitting after epoch %d: %s. Training stopped; the weights of epoch %d "
                           "(held-out PGD accuracy %.4f) are kept", collapse.epoch, collapse.reason,
                           collapse.best_epoch, collapse.best_robust_accuracy)
            if collapse.best_epoch == collapse.epoch:  # collapsed from the first epoch: nothing better to keep
                self.weights, self.epoch = model.get_weights(), collapse.epoch
            self.collapse = collapse
            return True
        if robust > self.robust:
            self.weights, self.epoch, self.robust, self.since = model.get_weights(), epoch + 1, robust, 0
            return False
        self.since += 1
        if self.since >= patience:
            logger.info("no better held-out PGD accuracy for %d epochs: stopping", patience)
            return True
        return False


def _train_step(model: keras.Model, forward: Forward, optimizer: keras.optimizers.Optimizer,
                adversarial: AdversarialConfig) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """One compiled step of the method: craft the batch's adversarials through ``forward``, then one optimizer step
    on the method's loss (cross-entropy on them; TRADES: clean cross-entropy + β · KL(clean ‖ adversarial));
    returns the loss and the count of adversarials classified right."""
    variables = model.trainable_variables
    method = adversarial.method
    # resolved by AdversarialConfig: every option of the method is set
    steps, step_size = int(adversarial.steps or 1), float(adversarial.step_size or 0.0)
    random_start, noise = bool(adversarial.random_start), float(adversarial.noise or 0.0)
    clip_noise, beta = bool(adversarial.clip_noise), float(adversarial.beta or 0.0)

    @tf.function(reduce_retracing=True)
    def train_step(images: tf.Tensor, labels: tf.Tensor, eps: tf.Tensor, key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if method == "trades":
            x_adv = trades_adversarial(forward, images, eps, steps=steps, step_size=step_size, key=key)
        elif method == "fast":
            x_adv = fast_fgsm(forward, images, labels, eps, step_size=step_size, noise=noise, clip_noise=clip_noise,
                              key=key)
        else:
            x_adv = pgd_linf(forward, images, labels, eps, steps=steps, step_size=step_size,
                             random_start=random_start, key=key)
        with tf.GradientTape() as tape:
            adv_logits = model(x_adv, training=True)
            if method == "trades":
                clean_logits = model(images, training=True)
                loss = tf.reduce_mean(_cross_entropy(labels, clean_logits)) + beta * tf.reduce_mean(
                    _kl(tf.nn.log_softmax(clean_logits), tf.nn.log_softmax(adv_logits)))
            else:
                loss = tf.reduce_mean(_cross_entropy(labels, adv_logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        correct = tf.reduce_sum(tf.cast(tf.argmax(adv_logits, axis=1) == labels, tf.int32))
        return loss, correct

    return train_step


@dataclasses.dataclass
class _Schedule:
    """Where the training is: ε ramped linearly over ``ramp_steps`` steps, the learning rate by the method's schedule
    over ``total_steps``, and the steps ``done``."""

    adversarial: AdversarialConfig
    learning_rate: float
    total_steps: int
    ramp_steps: float
    done: int = 0

    def eps(self) -> float:
        return self.adversarial.eps * (min(1.0, (self.done + 1) / self.ramp_steps) if self.ramp_steps > 0 else 1.0)

    def rate(self) -> float:
        return learning_rate_at(self.adversarial.schedule, self.learning_rate, self.done / self.total_steps)


def _train_epoch(train_step: Callable[..., tuple[tf.Tensor, tf.Tensor]], optimizer: keras.optimizers.Optimizer,
                 schedule: _Schedule, epoch_batches: Any, rng: np.random.Generator) -> dict[str, float]:
    """One epoch's steps, each at the schedule's ε and learning rate and with a fresh random key: the mean
    adversarial loss and accuracy, ε at the epoch's end, whether ε was reached from its first step, and the rate."""
    loss_sum = correct_sum = seen = 0.0
    epoch_first_eps = eps = schedule.adversarial.eps
    for index, (images, labels) in enumerate(epoch_batches):
        eps = schedule.eps()
        if index == 0:
            epoch_first_eps = eps
        optimizer.learning_rate = schedule.rate()
        key = tf.constant(rng.integers(0, 2**31 - 1, size=2), tf.int32)
        loss, correct = train_step(tf.convert_to_tensor(images), tf.convert_to_tensor(labels),
                                   tf.constant(eps, tf.float32), key)
        count = int(np.shape(labels)[0])
        loss_sum += float(loss) * count
        correct_sum += int(correct)
        seen += count
        schedule.done += 1
    return {"loss": loss_sum / seen, "accuracy": correct_sum / seen, "eps": eps,
            "eps_reached": float(epoch_first_eps >= schedule.adversarial.eps),
            "learning_rate": float(optimizer.learning_rate.numpy())}


def _log_epoch(writers: dict[str, Any] | None, epoch: int, epochs: int, row: dict[str, float],
               adversarial: AdversarialConfig) -> None:
    """An epoch's line in the log, and its scalars in TensorBoard's train and validation logs."""
    logger.info("epoch %d/%d: training ε %.3f, adversarial loss %.4f, accuracy on the training adversarials "
                "%.4f; held-out clean %.4f, PGD-%d at ε %g %.4f (%.0f s)", epoch + 1, epochs, row["eps"], row["loss"],
                row["accuracy"], row["val_accuracy"], adversarial.eval_steps, adversarial.eps,
                row["val_robust_accuracy"], row["seconds"])
    if writers is None:
        return
    with writers["train"].as_default():
        tf.summary.scalar("epoch_loss", row["loss"], step=epoch)
        tf.summary.scalar("epoch_accuracy", row["accuracy"], step=epoch)
        tf.summary.scalar("epoch_eps", row["eps"], step=epoch)
        tf.summary.scalar("epoch_learning_rate", row["learning_rate"], step=epoch)
    with writers["validation"].as_default():
        tf.summary.scalar("epoch_accuracy", row["val_accuracy"], step=epoch)
        tf.summary.scalar("epoch_robust_accuracy", row["val_robust_accuracy"], step=epoch)
