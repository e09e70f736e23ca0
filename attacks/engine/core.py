"""What every attack shares: argument checks, losses, the input gradient, projection, the result.

Conventions (foolbox's, so that both implementations compute the same thing):

* inputs are float32 ``(N, H, W, C)`` in [0, 1] (the model's input shape); the model returns logits ``(N, classes)``;
* the loss is summed over the batch, so each example's gradient is its own;
* untargeted attacks ascend ``loss(logits, labels)``, targeted ones descend ``loss(logits, targets)``;
* every step is normalised (sign for L∞, unit L2 norm for L2, APGD's sparse step for L1), projected onto the
  ε-ball and clipped to [0, 1];
* the model is only ever called on blocks of exactly :data:`BLOCK` rows (FGSM, PGD, BIM, both implementations),
  an example always in row ``example_id % BLOCK`` of its block (idle rows are zeros); AutoAttack's attacks use
  the rows of the model's measured plan instead (:mod:`advsweep.attacks.engine.plan`). TensorFlow's CPU kernels round
  differently for different batch shapes, but at a fixed shape each row's result depends on that row alone
  (``tests/test_determinism.py`` checks it on the real models). So an example's adversarial is the same to the
  bit however the examples are chunked, batched, ordered or stopped early;
* random starts come from one stream per example, seeded by (seed, the example's test-set index, the
  attack, ε, restart): :func:`example_stream`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.attacks.engine.spec import (  # noqa: F401  (re-exported: the attacks check their arguments with these)
    LOSSES,
    NORMS,
    PARAMETER_CHECKS,
    check_epsilons,
    check_flag,
    check_loss,
    check_norm,
    check_positive_int,
    check_seed,
    check_stepsize,
    eps_limit,
)
from advsweep.attacks.engine.plan import Plan
from advsweep.models.common import model_function
from advsweep.models.config import check_gradient_path

BALL_TOLERANCE = 1e-5  # float32 rounding of x0 + δ - x0
BLOCK = 32  # rows of every model call an attack makes; an example always sits in row (test index mod BLOCK)
FIXED = Plan(rows=BLOCK)  # that rule as a plan of calls (AutoAttack's attacks use the model's measured plan instead)


def device_kind() -> str:
    """``"gpu"`` where TensorFlow sees a GPU (it then runs the model there), else ``"cpu"``. Records depend on it: the
    kernels round differently, and the plan of model calls (:mod:`advsweep.attacks.engine.plan`) is measured per device."""
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


@dataclasses.dataclass
class AttackResult:
    """What one attack call returns, foolbox's contract for a list of ε.

    Attributes:
        epsilons: the K budgets, float64 ``(K,)``, in the norm's units on [0, 1] pixels.
        x_adv: adversarial inputs, float32 ``(K, N, H, W, C)``, in [0, 1] and in each ε-ball.
        logits: the model's logits on ``x_adv``, float32 ``(K, N, classes)``.
        success: ``(K, N)`` bool: misclassified (untargeted) or classified as the target (targeted).
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        targeted: whether ``success`` means "hit the target".
        last: for iterative attacks, the *last-iterate* view: the point each run ends on, as foolbox
            returns it. The result itself is the *any-iterate* view: an example counts as fooled at ε if
            any point the attack evaluated inside the ε-ball (at this ε or a smaller one of the same call)
            was misclassified, and ``x_adv`` is the first such point. ``None`` where the two cannot
            differ (FGSM) or where the last iterate was not run (``early_stop=True``).
        found_by: for an ensemble (``autoattack``), ``(K, N)`` str: the attack that fooled each example at each ε
            (``""`` where none did, ``"clean"`` where the input is misclassified as it is); ``None`` otherwise.
        evaluations: for the attacks the engine runs (:mod:`advsweep.attacks.engine.programme`), the model evaluations
            (gradient or forward) spent on the examples, summed over them and over ε (the clean pass not counted);
            ``None`` where not counted.
        cost: where the time went, per attack (per member of an ensemble, in the order they ran, after the
            ensemble's ``"clean"`` pass): ``{"examples", "seconds", "forward", "gradient"}``, the examples it
            attacked, its wall time and its model evaluations without and with an input gradient (its own clean
            pass of those examples included); ``None`` where not measured.
        loss_rise: ``(K, N)`` float32, for the attacks that ascend a loss on the engine (PGD, BIM, APGD, APGD-T and
            an ensemble of them): Pintor et al.'s incomplete-optimization measure, the largest over the example's runs
            at each ε (:class:`advsweep.attacks.engine.programme.LossTrace`; above 0.05 a run ended with its loss still
            rising); NaN where no run was made at that ε (fooled at a smaller one, or ε = 0); ``None`` where not
            traced.
    """

    epsilons: np.ndarray
    x_adv: np.ndarray
    logits: np.ndarray
    success: np.ndarray
    norm: str
    targeted: bool = False
    last: AttackResult | None = None
    found_by: np.ndarray | None = None
    evaluations: int | None = None
    cost: dict[str, dict[str, float]] | None = None
    loss_rise: np.ndarray | None = None

    @property
    def robust_accuracy(self) -> np.ndarray:
        """``(K,)``: fraction of examples the attack did not succeed on (untargeted: still correct). Counted, not
        ``1 − success rate``: 1 robust example of 100 is 0.01 exactly as a threshold reads it (1 − 0.99 is
        0.010000000000000009, which failed the unbounded attack's "at most 1%" on such a chunk)."""
        return (~self.success).mean(axis=1)

    @property
    def predictions(self) -> np.ndarray:
        """``(K, N)`` int64 predicted classes on ``x_adv``."""
        return np.argmax(self.logits, axis=-1)


# --------------------------------------------------------------------------------------------
# argument checks (ValueError/TypeError naming the argument and what is allowed)


def check_inputs(x: Any, labels: Any, targets: Any = None, *, model: Any = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate images and labels (and targets); return float32 images, int64 labels (and targets).

    Images are ``(N, H, W, C)``; with a ``model``, they must have its input shape and the classes must be below
    its number of outputs (:func:`model_classes`)."""
    x = np.asarray(x)
    expected = _model_shape(model, "input_shape")
    if x.ndim != 4 or (expected is not None and x.shape[1:] != expected):
        shape = f"(N, {', '.join(map(str, expected))})" if expected is not None else "(N, height, width, channels)"
        raise ValueError(f"`x` must be images of shape {shape}. Received: x.shape={x.shape}")
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
        classes = model_classes(model)
        if array.size and (array.min() < 0 or (classes is not None and array.max() >= classes)):
            top = f"0..{classes - 1}" if classes is not None else "≥ 0"
            raise ValueError(f"`{name}` must be classes in {top}. Received: min={array.min()}, max={array.max()}")
        checked.append(array.astype(np.int64))
    labels_checked, targets_checked = checked
    assert labels_checked is not None
    if targets_checked is not None and np.any(targets_checked == labels_checked):
        raise ValueError("`targets` must differ from `labels` for every example (a targeted attack towards the "
                         "true class is meaningless)")
    return x, labels_checked, targets_checked


def _model_shape(model: Any, attribute: str) -> tuple[int, ...] | None:
    try:
        shape = getattr(model, attribute, None)
    except (AttributeError, ValueError):
        return None
    if not isinstance(shape, tuple) or any(not isinstance(d, int) for d in shape[1:]):
        return None
    return tuple(shape[1:])


def model_classes(model: Any) -> int | None:
    """The number of logits a Keras classifier returns, from its output shape (``None`` if it does not say)."""
    shape = _model_shape(model, "output_shape")
    return shape[0] if shape is not None and len(shape) == 1 else None


def classes_of(model: Any, x: np.ndarray) -> int:
    """The number of logits the model returns: from its output shape (:func:`model_classes`), else from one call on
    the first image."""
    return model_classes(model) or int(predict_logits(model, x[:1]).shape[1])


def target_ranks(classes: int, count: int) -> list[int]:
    """The ranks of the clean logits a targeted AutoAttack member aims at: the 2nd … (count + 1)-th highest,
    fewer when the model has fewer classes (AutoAttack: 9 targets on 10 classes)."""
    return list(range(2, 2 + min(count, classes - 1)))


def check_model(model: Any) -> keras.Model:
    if not callable(model):
        raise TypeError(f"`model` must be a callable keras.Model returning logits. Received: {type(model).__name__}")
    return model


# --------------------------------------------------------------------------------------------
# losses and the input gradient


def loss_per_example(logits: tf.Tensor, classes: tf.Tensor, loss: str) -> tf.Tensor:
    """Per-example loss ``(N,)`` of logits ``(N, C)`` w.r.t. ``classes``, the quantity an attack ascends.

    ``"ce"``: softmax cross-entropy (as foolbox). ``"margin"``: Carlini & Wagner (2017)'s logit margin
    ``max_{j≠c} z_j − z_c``, positive exactly when the prediction is not ``c``. ``"dlr"``: Croce & Hein (2020)'s
    difference of logits ratio ``−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12)`` (π: logits sorted in
    descending order), invariant to shifting and scaling the logits. ``"dlr-targeted"``: its targeted form
    ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2 + 1e-12)``, with ``classes`` ``(N, 2)`` holding ``[y, t]``.
    ``"logit-difference"``: ``z_t − z_y`` with ``classes`` ``[y, t]``, whose zero set is the decision boundary
    between the two classes that FAB-T linearises.
    """
    if loss == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=logits)
    if loss in ("dlr", "dlr-targeted"):
        return dlr_loss(logits, classes, targeted=loss == "dlr-targeted")
    if loss == "logit-difference":
        return (tf.gather(logits, classes[:, 1], axis=1, batch_dims=1)
                - tf.gather(logits, classes[:, 0], axis=1, batch_dims=1))
    one_hot = tf.one_hot(classes, tf.shape(logits)[-1], dtype=logits.dtype)
    own = tf.reduce_sum(one_hot * logits, axis=-1)
    other = tf.reduce_max(logits - one_hot * 1e9, axis=-1)
    return other - own


LOSS_ROWS = 256  # the losses are computed on logits zero-padded to a multiple of this many rows (:func:`padded_loss`)
PAIRED_LOSSES = ("dlr-targeted", "logit-difference")  # the losses whose classes are [label, target] per example
ALL_LOSSES = ("ce", "margin", "dlr") + PAIRED_LOSSES  # every loss :func:`loss_per_example` computes


def padded_loss(logits: tf.Tensor, classes: tf.Tensor, loss: str) -> tf.Tensor:
    """:func:`loss_per_example` computed on the logits zero-padded to a multiple of :data:`LOSS_ROWS` rows: the loss
    kernels (a vectorised ``exp``, fused multiply-adds, work split between threads) round a row differently at
    other numbers of rows, and this makes each row's loss and its gradient the same whatever the rows of the call
    (measured: the cross-entropy's gradient differs in calls of 3 and 6 rows otherwise); a few thousand floats,
    nothing beside the model."""
    n = tf.shape(logits)[0]
    extra = (-n) % LOSS_ROWS
    values = loss_per_example(tf.pad(logits, [[0, extra], [0, 0]]),
                              tf.pad(classes, [[0, extra]] + [[0, 0]] * (len(classes.shape) - 1)), loss)
    return values[:n]


def dlr_loss(logits: tf.Tensor, classes: tf.Tensor, *, targeted: bool = False) -> tf.Tensor:
    """The DLR loss and its targeted form (see :func:`loss_per_example`), as AutoAttack computes them."""
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    if targeted:
        labels, targets = classes[:, 0], classes[:, 1]
        own = tf.gather(logits, labels, axis=1, batch_dims=1)
        target = tf.gather(logits, targets, axis=1, batch_dims=1)
        return -(own - target) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)
    own = tf.gather(logits, classes, axis=1, batch_dims=1)
    top_is_own = tf.cast(tf.argmax(logits, axis=-1, output_type=classes.dtype) == classes, logits.dtype)
    best_other = ordered[:, 1] * top_is_own + ordered[:, 0] * (1.0 - top_is_own)
    return -(own - best_other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


GradientFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
LossGradientFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]
_LOSS_GRADIENT_FNS: weakref.WeakKeyDictionary[Any, dict[str, LossGradientFn]] = weakref.WeakKeyDictionary()


def loss_gradient_fn(model: keras.Model, loss: str, gradient: str = "auto") -> LossGradientFn:
    """A compiled ``(x, classes) → (logits, per-example loss, ∇_x Σ loss)`` for ``model``, cached per model, loss
    and gradient path.

    A ``tf.GradientTape(watch_accessed_variables=False)`` watching only ``x``, with the model in
    inference mode. The model side hands over the function to differentiate (:func:`advsweep.models.common.model_function`):
    ``gradient="fast"`` differentiates :func:`advsweep.models.fast_gradient.fast_forward`
    (backward passes of the frozen VGG16 base built from forward ops, equal up to float rounding);
    ``"plain"`` differentiates the Keras model as it is; ``"auto"``: the one the model's plan measured faster
    (:func:`resolved_gradient`). ``loss="closest-boundary-<norm>"`` is untargeted FAB's (:func:`closest_boundary`):
    the gradients of every class's logit, one backward pass each.
    """
    gradient = resolved_gradient(model, gradient)
    per_model = _LOSS_GRADIENT_FNS.setdefault(model, {})
    key = f"{loss}/{gradient}"
    if key not in per_model and loss.startswith(CLOSEST_BOUNDARY):
        per_model[key] = closest_boundary_fn(model, loss[len(CLOSEST_BOUNDARY):], gradient)
    if key not in per_model:
        forward = model_function(model, gradient)

        def value_loss_and_gradient(x: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                logits = forward(x)
                values = padded_loss(logits, classes, loss)
                total = tf.reduce_sum(values)
            gradient = tape.gradient(total, x)
            if gradient is None:  # the graph from input to logits is interrupted: no gradient reaches the input,
                gradient = tf.zeros_like(x)  # which the gradient check reports (Pintor et al.'s unavailable gradients)
            return logits, values, gradient

        compiled = one_graph(value_loss_and_gradient, model,
                             tf.TensorSpec((None, 2) if loss in PAIRED_LOSSES else (None,), tf.int64))
        per_model[key] = lambda x, classes: compiled(x, tf.cast(classes, tf.int64))
    return per_model[key]


CLOSEST_BOUNDARY = "closest-boundary-"  # untargeted FAB's "loss", followed by the norm its distances are in


def closest_boundary(logits: tf.Tensor, jacobian: tf.Tensor, labels: tf.Tensor, norm: str
                     ) -> tuple[tf.Tensor, tf.Tensor]:
    """Untargeted FAB's choice (the authors' ``get_diff_logits_grads_batch`` and the distances after it): for each
    row, the class k ≠ y whose linearised boundary ``z_k − z_y = 0`` is closest in ``norm`` (distance ``|z_k − z_y|
    / ‖∇(z_k − z_y)‖_*``, the dual norm: L1 for L∞, L2 for L2, L∞ for L1), and that difference and its gradient.
    ``logits`` ``(M, C)``, ``jacobian`` ``(M, C, …)`` each logit's input gradient."""
    rows = tf.range(tf.shape(logits)[0])
    at_label = tf.stack([rows, tf.cast(labels, tf.int32)], axis=1)
    values = logits - tf.gather_nd(logits, at_label)[:, None]
    slopes = jacobian - tf.gather_nd(jacobian, at_label)[:, None]
    values = tf.where(tf.one_hot(labels, tf.shape(logits)[1]) > 0, tf.constant(1e10, logits.dtype), values)
    flat = tf.reshape(slopes, tf.concat([tf.shape(slopes)[:2], [-1]], 0))
    dual = {"linf": lambda: tf.reduce_sum(tf.abs(flat), -1), "l2": lambda: tf.sqrt(tf.reduce_sum(flat * flat, -1)),
            "l1": lambda: tf.reduce_max(tf.abs(flat), -1)}[norm]()
    closest = tf.argmin(tf.abs(values) / (1e-12 + dual), axis=1, output_type=tf.int32)
    chosen = tf.stack([rows, closest], axis=1)
    return tf.gather_nd(values, chosen), tf.gather_nd(slopes, chosen)


def closest_boundary_fn(model: keras.Model, norm: str, gradient: str) -> LossGradientFn:
    """``(x, labels) → (logits, z_k − z_y, ∇(z_k − z_y))`` at the closest linearised boundary
    (:func:`closest_boundary`), compiled: one forward pass and a backward pass per class."""
    forward = model_function(model, gradient)

    def value_and_jacobian(x: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(x)
            logits = forward(x)
            columns = [logits[:, k] for k in range(int(logits.shape[-1]))]
        grads = [tape.gradient(column, x) for column in columns]
        jacobian = tf.stack([tf.zeros_like(x) if g is None else g for g in grads], axis=1)
        return (logits, *closest_boundary(logits, jacobian, labels, norm))

    compiled = one_graph(value_and_jacobian, model, tf.TensorSpec((None,), tf.int64))
    return lambda x, labels: compiled(x, tf.cast(labels, tf.int64))


def one_graph(function: Callable[..., Any], model: keras.Model, *more: tf.TensorSpec) -> Callable[..., Any]:
    """``function(x, *more)`` compiled once for any number of rows (the model's input shape, any batch), so that
    every call runs the same graph: TensorFlow optimises a graph traced for a fixed batch differently, and its
    rows then come out rounded differently from the same rows of a graph for any batch (measured on the DLR loss's
    gradient). A model whose input shape is not known is compiled per shape instead. With a known shape the one
    concrete function is returned: called directly it skips the dispatch on its arguments (0.2 ms a call)."""
    shape = _model_shape(model, "input_shape")
    if shape is None:
        return tf.function(function, reduce_retracing=True)
    return tf.function(function, input_signature=[tf.TensorSpec((None,) + shape, tf.float32), *more]
                       ).get_concrete_function()


def resolved_gradient(model: keras.Model, gradient: str) -> str:
    """``"fast"`` or ``"plain"``: ``gradient``, or for ``"auto"`` the path the model's plan measured faster here
    (:func:`advsweep.attacks.engine.plan.plan_of`)."""
    if check_gradient_path(gradient) != "auto":
        return gradient
    from advsweep.attacks.engine.plan import plan_of

    return plan_of(model).gradient_path


def gradient_fn(model: keras.Model, loss: str, gradient: str = "auto") -> GradientFn:
    """``(x, classes) → (logits, ∇_x Σ loss)``: :func:`loss_gradient_fn` without the loss values."""
    value_loss_and_gradient = loss_gradient_fn(model, loss, gradient)

    def value_and_gradient(x: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        logits, _, grad = value_loss_and_gradient(x, classes)
        return logits, grad

    return value_and_gradient


_LOGIT_FNS: weakref.WeakKeyDictionary[Any, Callable[[tf.Tensor], tf.Tensor]] = weakref.WeakKeyDictionary()


def logits_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A compiled forward pass in inference mode, cached per model."""
    if model not in _LOGIT_FNS:
        _LOGIT_FNS[model] = one_graph(lambda x: model(x, training=False), model)
    return _LOGIT_FNS[model]


_COMPILED: weakref.WeakKeyDictionary[Any, Callable[[tf.Tensor], tf.Tensor]] = weakref.WeakKeyDictionary()


def compiled_forward(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """The model's function with the fast backward passes (:func:`advsweep.models.fast_gradient.fast_forward`),
    compiled once per model: what foolbox differentiates on the fast path."""
    if model not in _COMPILED:
        _COMPILED[model] = tf.function(model_function(model, "fast"), reduce_retracing=True)
    return _COMPILED[model]


@dataclasses.dataclass(frozen=True)
class Call:
    """One attack call's checked arguments."""

    norm: str
    x: np.ndarray
    labels: np.ndarray
    eps: np.ndarray
    seed: int
    example_ids: np.ndarray
    params: dict[str, Any]
    targets: np.ndarray | None = None


def checked_call(model: Any, x: Any, labels: Any, epsilons: Any, *, norm: str, example_ids: Any, seed: int = 0,
                 targets: Any = None, norms: tuple[str, ...] = NORMS, **params: Any) -> Call:
    """Check an attack call, the one check every attack of the engine goes through: the model, the inputs, labels
    (and targets) against it, ε against the norm and the inputs' shape, the seed (an attack without randomness
    leaves it), the example ids, and each hyper-parameter in ``params`` with its check
    (:data:`advsweep.attacks.engine.spec.PARAMETER_CHECKS`), whose value it keeps (``abs_stepsize=None`` stays
    ``None``); ``norms``: the threat models the attack takes."""
    check_model(model)
    norm = check_norm(norm, norms)
    x, labels, targets = check_inputs(x, labels, targets, model=model)
    eps = check_epsilons(epsilons, norm, x.shape[1:])
    checked = {key: PARAMETER_CHECKS[key](value) for key, value in params.items()}
    return Call(norm=norm, x=x, labels=labels, eps=eps, seed=check_seed(seed),
                example_ids=check_example_ids(example_ids, len(x)), params=checked, targets=targets)


def check_example_ids(example_ids: Any, n: int) -> np.ndarray:
    """``(N,)`` non-negative integer ids (test-set indices) of the examples; ``None`` → ``0 … N−1``."""
    if example_ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(example_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer) or (n and ids.min() < 0):
        raise ValueError(f"`example_ids` must be {n} non-negative integers (test-set indices), one per image. "
                         f"Received: shape={ids.shape}, dtype={ids.dtype}")
    return ids.astype(np.int64)


# --------------------------------------------------------------------------------------------
# the one way the attack layer calls a model: a plan's calls over a set of examples


def calls(example_ids: np.ndarray, plan: Plan = FIXED) -> list[np.ndarray]:
    """The model calls of one round over ``example_ids`` ``(M,)``: each an array of positions into ``example_ids``,
    as long as the call's rows, −1 for an idle row. A free plan packs the examples in order into calls of the sizes
    :meth:`Plan.packing` gives; otherwise every call has ``plan.rows`` rows and an example sits in row
    ``example_id % rows`` (:data:`FIXED`: the :data:`BLOCK` rows of FGSM, PGD, BIM, foolbox, the checks and the
    minimal ε)."""
    m, rows = len(example_ids), plan.rows
    if plan.free:
        parts, start = [], 0
        for size in plan.packing(m):
            part = np.full(size, -1, dtype=np.int64)
            part[:min(size, m - start)] = np.arange(start, min(start + size, m))
            parts.append(part)
            start += size
        return parts
    slots = np.asarray(example_ids) % rows
    order = np.argsort(slots, kind="stable")
    counts = np.bincount(slots, minlength=rows)
    rank = np.arange(m) - np.repeat(np.cumsum(counts) - counts, counts)  # each example's turn within its row
    table = np.full((int(counts.max(initial=0)), rows), -1, dtype=np.int64)
    table[rank, slots[order]] = order
    return list(table)


def gather(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` with zeros for idle rows (−1): one call's block, ``(len(rows), …)``."""
    block = np.zeros((len(rows),) + array.shape[1:], dtype=array.dtype)
    used = rows >= 0
    block[used] = array[rows[used]]
    return block


def in_calls(function: Callable[..., Any], arrays: Sequence[np.ndarray], example_ids: np.ndarray,
             plan: Plan = FIXED) -> tuple[np.ndarray, ...]:
    """``function`` over the plan's calls (:func:`calls`): called on one block of each of ``arrays`` (``(M, …)``,
    gathered as tensors, idle rows zero), it returns one array or tensor or a tuple of them, each ``(rows, …)``; their
    used rows are put back in the examples' order, ``(M, …)`` each. Every model call of the attack layer is made
    here."""
    outputs: list[np.ndarray] = []
    for rows in calls(example_ids, plan):
        used = rows >= 0
        out = function(*(tf.constant(gather(array, rows)) for array in arrays))
        for j, value in enumerate(out if isinstance(out, tuple | list) else (out,)):
            value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            if len(outputs) <= j:
                outputs.append(np.empty((len(example_ids),) + value.shape[1:], value.dtype))
            outputs[j][rows[used]] = value[used]
    return tuple(outputs)


def predict_logits(model: keras.Model, x: np.ndarray, *, example_ids: Any = None) -> np.ndarray:
    """Logits ``(N, C)`` float32 of images, in blocks of :data:`BLOCK` rows (:data:`FIXED`, see the module notes)."""
    ids = check_example_ids(example_ids, len(x))
    if not len(x):
        return np.zeros((0, model_classes(model) or 0), dtype=np.float32)
    return in_calls(logits_fn(model), (x,), ids)[0]


def input_gradients(value_and_gradient: GradientFn, x: np.ndarray, classes: np.ndarray,
                    example_ids: np.ndarray) -> np.ndarray:
    """``∇_x loss`` ``(N, …)`` of every example (``value_and_gradient``: :func:`gradient_fn`'s), in blocks of
    :data:`BLOCK` rows."""
    return in_calls(value_and_gradient, (x, classes), example_ids)[1] if len(x) else np.empty_like(x)


def example_stream(seed: int, example_id: int, attack: str, epsilon: float, restart: int) -> np.random.Generator:
    """The random stream of one example's run: a function of (seed, test-set index, attack, ε, restart) alone,
    so that a random start does not depend on which other examples share its chunk or batch."""
    attack_key = int.from_bytes(hashlib.sha256(attack.encode()).digest()[:8], "little")
    eps_key = int(np.float64(epsilon).view(np.uint64))
    return np.random.default_rng([int(seed), int(example_id), attack_key, eps_key, int(restart)])


# --------------------------------------------------------------------------------------------
def any_iterate_view(order: np.ndarray, found: np.ndarray, x_found: np.ndarray, logits_found: np.ndarray,
                     x_last: np.ndarray, logits_last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The any-iterate view ``(x_adv, logits)``, ``(K, N, …)``, of an iterative attack, shared by both implementations.

    An adversarial found at one budget lies inside every larger ball, so it is carried upwards: each budget
    reports the first adversarial of the smallest budget that had one. ``order`` ``(K, N)`` lists each
    example's budget indices in ascending order of ε; ``found``, ``x_found``, ``logits_found`` (updated in
    place) hold per budget the first misclassified point the attack evaluated; examples never fooled report
    their run's end point (``x_last``, ``logits_last``).
    """
    columns = np.arange(found.shape[1])
    for position in range(1, len(order)):
        k, below = order[position], order[position - 1]  # (N,) budget indices, one per example
        carry = found[below, columns]
        to, source, examples = k[carry], below[carry], columns[carry]
        found[to, examples] = True
        x_found[to, examples] = x_found[source, examples]
        logits_found[to, examples] = logits_found[source, examples]
    x_adv = np.where(found.reshape(found.shape + (1,) * (x_found.ndim - 2)), x_found, x_last)
    return x_adv, np.where(found[..., None], logits_found, logits_last)


def success_of(logits: np.ndarray, labels: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
    """Untargeted: prediction ≠ label; targeted: prediction = target."""
    predictions = np.argmax(logits, axis=-1)
    return predictions == targets if targets is not None else predictions != labels


def result_of(epsilons: np.ndarray, x_adv: np.ndarray, logits: np.ndarray, labels: np.ndarray,
              targets: np.ndarray | None, norm: str) -> AttackResult:
    """An :class:`AttackResult` whose success matrix is read off the logits ``(K, N, C)``."""
    success = np.stack([success_of(row, labels, targets) for row in logits]) if len(logits) else np.zeros(
        (0, len(labels)), dtype=bool)
    return AttackResult(epsilons=epsilons, x_adv=x_adv, logits=logits, success=success, norm=norm,
                        targeted=targets is not None)
