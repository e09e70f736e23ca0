"""What every attack shares: argument checks, losses, the input gradient, projection, the result.

Conventions (foolbox's, so that both implementations compute the same thing):

* inputs are float32 ``(N, 28, 28, 1)`` in [0, 1]; the model returns logits ``(N, 10)``;
* the loss is summed over the batch, so each example's gradient is its own;
* untargeted attacks ascend ``loss(logits, labels)``, targeted ones descend ``loss(logits, targets)``;
* every step is normalised (sign for L∞, unit L2 norm for L2), projected onto the ε-ball and
  clipped to [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models.fast_gradient import GRADIENT_PATHS, check_gradient_path, model_function

NORMS: tuple[str, ...] = ("linf", "l2")
LOSSES: tuple[str, ...] = ("ce", "margin")
EPS_LIMITS: dict[str, float] = {"linf": 1.0, "l2": 28.0}  # largest meaningful ε on [0, 1]^784
BALL_TOLERANCE = 1e-5  # float32 rounding of x0 + δ - x0


@dataclasses.dataclass
class AttackResult:
    """What one attack call returns, foolbox's contract for a list of ε.

    Attributes:
        epsilons: the K budgets, float64 ``(K,)``, in the norm's units on [0, 1] pixels.
        x_adv: adversarial inputs, float32 ``(K, N, 28, 28, 1)``, in [0, 1] and in each ε-ball.
        logits: the model's logits on ``x_adv``, float32 ``(K, N, 10)``.
        success: ``(K, N)`` bool: misclassified (untargeted) or classified as the target (targeted).
        norm: ``"linf"`` or ``"l2"``.
        targeted: whether ``success`` means "hit the target".
    """

    epsilons: np.ndarray
    x_adv: np.ndarray
    logits: np.ndarray
    success: np.ndarray
    norm: str
    targeted: bool = False

    @property
    def robust_accuracy(self) -> np.ndarray:
        """``(K,)``: fraction of examples the attack did not succeed on (untargeted: still correct)."""
        return 1.0 - self.success.mean(axis=1)

    @property
    def predictions(self) -> np.ndarray:
        """``(K, N)`` int64 predicted classes on ``x_adv``."""
        return np.argmax(self.logits, axis=-1)


# --------------------------------------------------------------------------------------------
# argument checks (ValueError/TypeError naming the argument and what is allowed)


def check_norm(norm: Any) -> str:
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {list(NORMS)} (strings, not np.inf). Received: norm={norm!r}")
    return str(norm)


def check_loss(loss: Any) -> str:
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {list(LOSSES)} ('margin' is Carlini-Wagner's logit margin). "
                         f"Received: loss={loss!r}")
    return str(loss)


def check_epsilons(epsilons: Any, norm: str) -> np.ndarray:
    """A list (or one number) of ε → float64 ``(K,)``; each finite, ≥ 0 and ≤ the norm's limit."""
    values = [epsilons] if isinstance(epsilons, numbers.Number) or np.ndim(epsilons) == 0 else list(epsilons)
    if len(values) == 0:
        raise ValueError("`epsilons` must hold at least one value. Received: epsilons=[]")
    checked = []
    limit = EPS_LIMITS[norm]
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
            raise ValueError(f"`epsilons` must be numbers. Received: epsilon={value!r} of type {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value) or value < 0 or value > limit:
            raise ValueError(f"`epsilons` must be finite numbers in [0, {limit}] for norm={norm!r} "
                             f"(inputs live in [0, 1]). Received: epsilon={value!r}")
        checked.append(value)
    return np.asarray(checked, dtype=np.float64)


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer ≥ 1. Received: {name}={value!r}")
    return int(value)


def check_stepsize(rel_stepsize: Any, abs_stepsize: Any) -> None:
    for name, value in (("rel_stepsize", rel_stepsize), ("abs_stepsize", abs_stepsize)):
        if value is None and name == "abs_stepsize":
            continue
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating)) or not (
            math.isfinite(float(value)) and float(value) > 0
        ):
            raise ValueError(f"`{name}` must be a positive finite number. Received: {name}={value!r}")


def check_inputs(x: Any, labels: Any, targets: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate images and labels (and targets); return float32 images, int64 labels (and targets)."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:] != (28, 28, 1):
        raise ValueError(f"`x` must be images of shape (N, 28, 28, 1). Received: x.shape={x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"`x` must be floating point in [0, 1]. Received: x.dtype={x.dtype}")
    x = x.astype(np.float32, copy=False)
    if x.size and (not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"`x` must lie in [0, 1] with no NaN. Received: min={np.nanmin(x)}, max={np.nanmax(x)}, "
                         f"NaN={bool(np.isnan(x).any())}")
    checked: list[np.ndarray | None] = []
    for name, value in (("labels", labels), ("targets", targets)):
        if value is None and name == "targets":
            checked.append(None)
            continue
        if value is None:
            raise ValueError("`labels` are required: attacks are evaluated against the true labels")
        array = np.asarray(value)
        if array.shape != (len(x),) or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"`{name}` must be integers of shape ({len(x)},), one per image. "
                             f"Received: {name}.shape={array.shape}, dtype={array.dtype}")
        if array.size and (array.min() < 0 or array.max() > 9):
            raise ValueError(f"`{name}` must be classes in 0..9. Received: min={array.min()}, max={array.max()}")
        checked.append(array.astype(np.int64))
    labels_checked, targets_checked = checked
    assert labels_checked is not None
    if targets_checked is not None and np.any(targets_checked == labels_checked):
        raise ValueError("`targets` must differ from `labels` for every example (a targeted attack towards the "
                         "true class is meaningless)")
    return x, labels_checked, targets_checked


def check_model(model: Any) -> keras.Model:
    if not callable(model):
        raise TypeError(f"`model` must be a callable keras.Model returning logits. Received: {type(model).__name__}")
    return model


# --------------------------------------------------------------------------------------------
# losses and the input gradient


def loss_per_example(logits: tf.Tensor, classes: tf.Tensor, loss: str) -> tf.Tensor:
    """Per-example loss ``(N,)`` of logits ``(N, 10)`` w.r.t. ``classes``.

    ``"ce"``: softmax cross-entropy (as foolbox). ``"margin"``: Carlini & Wagner (2017)'s logit margin
    ``max_{j≠c} z_j − z_c``, positive exactly when the prediction is not ``c``.
    """
    if loss == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=logits)
    one_hot = tf.one_hot(classes, tf.shape(logits)[-1], dtype=logits.dtype)
    own = tf.reduce_sum(one_hot * logits, axis=-1)
    other = tf.reduce_max(logits - one_hot * 1e9, axis=-1)
    return other - own


GradientFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
_GRADIENT_FNS: weakref.WeakKeyDictionary[Any, dict[str, GradientFn]] = weakref.WeakKeyDictionary()


def gradient_fn(model: keras.Model, loss: str, gradient: str = "fast") -> GradientFn:
    """A compiled ``(x, classes) → (logits, ∇_x Σ loss)`` for ``model``, cached per model, loss and path.

    A ``tf.GradientTape(watch_accessed_variables=False)`` watching only ``x``, with the model in
    inference mode. ``gradient="fast"`` differentiates :func:`models.fast_gradient.fast_forward`
    (backward passes of the frozen VGG16 base built from forward ops, equal up to float rounding);
    ``"plain"`` differentiates the Keras model as it is.
    """
    gradient = check_gradient_path(gradient)
    per_model = _GRADIENT_FNS.setdefault(model, {})
    key = f"{loss}/{gradient}"
    if key not in per_model:
        forward = model_function(model, gradient)

        @tf.function(reduce_retracing=True)
        def value_and_gradient(x: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                logits = forward(x)
                total = tf.reduce_sum(loss_per_example(logits, classes, loss))
            return logits, tape.gradient(total, x)

        per_model[key] = value_and_gradient
    return per_model[key]


_LOGIT_FNS: weakref.WeakKeyDictionary[Any, Callable[[tf.Tensor], tf.Tensor]] = weakref.WeakKeyDictionary()


def logits_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A compiled forward pass in inference mode, cached per model."""
    if model not in _LOGIT_FNS:
        _LOGIT_FNS[model] = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return _LOGIT_FNS[model]


def predict_logits(model: keras.Model, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits ``(N, 10)`` float32 of images ``(N, 28, 28, 1)``, in batches."""
    forward = logits_fn(model)
    if len(x) == 0:
        return np.zeros((0, 10), dtype=np.float32)
    return np.concatenate([forward(tf.constant(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)])


# --------------------------------------------------------------------------------------------
# normalisation, projection and random starts (foolbox's definitions)


def _per_example(values: tf.Tensor, ndim: int) -> tf.Tensor:
    return tf.reshape(values, [-1] + [1] * (ndim - 1))


def _l2_norms(values: tf.Tensor) -> tf.Tensor:
    """Per-example L2 norms as eagerpy computes them: ``sqrt(sum(square(x)))``."""
    return tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(values, [tf.shape(values)[0], -1])), axis=-1))


# normalize and project run eagerly, with foolbox's exact sequence of float32 operations: a compiled
# graph may rewrite them (x * (1 / y) into x / y) and so differ from foolbox in the last bit.


def normalize(gradient: tf.Tensor, norm: str) -> tf.Tensor:
    """Sign (L∞) or unit L2 norm per example (norms floored at 1e-12, as foolbox)."""
    if norm == "linf":
        return tf.sign(gradient)
    factor = 1.0 / tf.maximum(_l2_norms(gradient), 1e-12)
    return gradient * _per_example(factor, gradient.shape.rank)


def project(x: tf.Tensor, x0: tf.Tensor, eps: tf.Tensor, norm: str) -> tf.Tensor:
    """Project ``x`` onto the ε-ball around ``x0``; ``eps`` is per example ``(N,)`` float32."""
    delta = x - x0
    if norm == "linf":
        eps_b = _per_example(eps, x.shape.rank)
        return x0 + tf.clip_by_value(delta, -eps_b, eps_b)
    factor = tf.minimum(1.0, eps / tf.maximum(_l2_norms(delta), 1e-12))
    return x0 + delta * _per_example(factor, x.shape.rank)


def pgd_step(x: tf.Tensor, x0: tf.Tensor, gradient: tf.Tensor, eps: tf.Tensor, stepsize: tf.Tensor, norm: str,
             direction: float) -> tf.Tensor:
    """``clip_[0,1](Π_ε(x + direction · stepsize · normalize(g)))``, foolbox's update (eager)."""
    moved = x + direction * (_per_example(stepsize, x.shape.rank) * normalize(gradient, norm))
    return tf.clip_by_value(project(moved, x0, eps, norm), 0.0, 1.0)


def random_start(x0: np.ndarray, eps: np.ndarray, norm: str, rng: np.random.Generator) -> np.ndarray:
    """A uniform draw from the ε-ball around ``x0`` (L∞: uniform per pixel; L2: Voelker et al. 2017),
    clipped to [0, 1]."""
    n, dims = len(x0), int(np.prod(x0.shape[1:]))
    eps_b = eps.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(np.float32)
    if norm == "linf":
        noise = rng.uniform(-1.0, 1.0, size=x0.shape).astype(np.float32)
    else:
        gauss = rng.standard_normal(size=(n, dims + 2))
        noise = (gauss / np.linalg.norm(gauss, axis=1, keepdims=True))[:, :dims].reshape(x0.shape).astype(np.float32)
    return np.clip(x0 + eps_b * noise, 0.0, 1.0).astype(np.float32)


def batches(n: int, batch_size: int) -> Sequence[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def success_of(logits: np.ndarray, labels: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
    """Untargeted: prediction ≠ label; targeted: prediction = target."""
    predictions = np.argmax(logits, axis=-1)
    return predictions == targets if targets is not None else predictions != labels
