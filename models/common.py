"""What every model of the harness shares: its input/output contract, its probability view, and the loading
of any Keras classifier a user brings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from advsweep.assets.validate import number
from advsweep.models.config import check_gradient_path

INPUT_SHAPE: tuple[int, int, int] = (28, 28, 1)
NUM_CLASSES = 10


def torch_default_init(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default for a convolution's or linear layer's weights and biases: uniform within ±1/√fan-in (a
    convolution's fan-in is kernel area × input channels), for the architectures copied from PyTorch code."""
    bound = 1.0 / float(np.sqrt(fan_in))
    return keras.initializers.RandomUniform(-bound, bound)


def check_contract(model: keras.Model, input_shape: tuple[int, ...] = INPUT_SHAPE, classes: int = NUM_CLASSES) -> None:
    """Raise ``ValueError`` unless ``model`` maps float32 ``(N, *input_shape)`` to ``(N, classes)`` outputs."""
    model_input = _shape(model, "input_shape")
    model_output = _shape(model, "output_shape")
    if model_input != tuple(input_shape) or model_output != (classes,):
        raise ValueError(
            f"the model must map float32 (N, {', '.join(map(str, input_shape))}) images in [0, 1] to (N, {classes}) "
            f"logits (the data set's shape and classes). Received: model.input_shape={model.input_shape}, "
            f"model.output_shape={model.output_shape}"
        )


def _shape(model: keras.Model, attribute: str) -> tuple[Any, ...] | None:
    try:
        shape = getattr(model, attribute)
    except (AttributeError, ValueError):  # a subclassed model that was never built
        return None
    if isinstance(shape, list):  # several inputs or outputs: not a classifier of one image
        return None
    return tuple(shape[1:]) if shape else None


def ends_in_softmax(model: keras.Model, probe: np.ndarray | None = None) -> bool:
    """Whether the model returns probabilities: its last layer is a softmax (as a layer or an activation), or, on
    ``probe`` inputs, every output row is non-negative and sums to 1."""
    layer: Any = model
    while isinstance(layer, keras.Model) and layer.layers:
        layer = layer.layers[-1]
    if isinstance(layer, keras.layers.Softmax) or getattr(layer, "activation", None) is keras.activations.softmax:
        return True
    if probe is None:
        return False
    outputs = np.asarray(model(probe, training=False))
    return bool(outputs.min() >= 0.0 and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-5))


def load_classifier(path: str | Path, *, input_shape: tuple[int, ...], classes: int,
                    input_range: tuple[float, float] = (0.0, 1.0)) -> keras.Model:
    """Load any Keras classifier that returns logits, checked against a data set, as a model on [0, 1] inputs.

    Args:
        path: a ``.keras`` file (or a folder holding ``model.keras``).
        input_shape: the data set's image shape; the model's input must be exactly this.
        classes: the data set's number of classes; the model must return this many logits.
        input_range: the pixel range the model was trained on, e.g. ``(0, 255)``; the returned model takes
            [0, 1] inputs and rescales them, so that ε is always in units of the [0, 1] box.

    Raises:
        ValueError: the shapes do not match the data set, or the model ends in a softmax (attacks need logits).
    """
    path = Path(path)
    file = path / "model.keras" if path.is_dir() else path
    return as_classifier(keras.saving.load_model(file, compile=False), input_shape=input_shape, classes=classes,
                         input_range=input_range)


def as_classifier(model: keras.Model, *, input_shape: tuple[int, ...], classes: int,
                  input_range: tuple[float, float] = (0.0, 1.0)) -> keras.Model:
    """:func:`load_classifier` for a model already in memory: checked, and rescaled to [0, 1] inputs."""
    check_contract(model, input_shape, classes)
    probe = np.random.default_rng(0).uniform(size=(4, *input_shape)).astype(np.float32)
    low, high = (float(v) for v in input_range)
    if ends_in_softmax(model, low + (high - low) * probe):
        raise ValueError("the model ends in a softmax: the attacks need logits. Save the model without its last "
                         "activation (e.g. Dense(classes) with no activation, or keras.Model(model.input, "
                         "model.layers[-2].output) when the softmax is a layer of its own)")
    if (low, high) == (0.0, 1.0):
        return model
    inputs = keras.Input(shape=input_shape, name="image_01")
    scaled = keras.layers.Rescaling(high - low, offset=low, name="input_range")(inputs)
    return keras.Model(inputs, model(scaled), name=f"{model.name}_on_01")


def probability_model(model: keras.Model, *, temperature: float = 1.0) -> keras.Model:
    """Wrap a logits model so that it returns ``softmax(logits / temperature)``.

    The attacks always use the logits model; this view exists for users who want calibrated
    probabilities (one of the source tutorials uses ``temperature=0.6``).

    Args:
        model: a logits model ``(N, C)`` of one image input.
        temperature: softmax temperature, a positive float.

    Returns:
        A ``keras.Model`` with the same input and probabilities ``(N, C)`` summing to 1.
    """
    number("temperature", temperature, above=0.0)
    input_shape = _shape(model, "input_shape")
    if input_shape is None or _shape(model, "output_shape") is None:
        raise ValueError(f"`model` must be a built classifier of one image input. Received: {model.name}")
    inputs = keras.Input(shape=input_shape, name="image")
    logits = model(inputs)
    scaled = keras.layers.Rescaling(1.0 / float(temperature), name="temperature")(logits)
    probabilities = keras.layers.Softmax(name="probabilities")(scaled)
    return keras.Model(inputs, probabilities, name=f"{model.name}_probabilities")


def model_function(model: keras.Model, gradient: str = "fast") -> Callable[[Any], Any]:
    """The function ``x → logits`` (inference mode) that the attack layer differentiates: what the model side
    hands the attacks, so that they never need to know a model kind.

    ``gradient="fast"``: a model with custom backward passes gives them (the frozen VGG16 base:
    :func:`advsweep.models.fast_gradient.fast_forward`, equal to the tape up to float rounding); any other model
    is called as it is. ``"plain"``: the Keras model as it is, differentiated by ``tf.GradientTape``.
    """
    if check_gradient_path(gradient) == "auto":
        raise ValueError("`gradient='auto'` is resolved by the attack layer's plan (advsweep.attacks.engine.plan) into "
                         "'fast' or 'plain' before the model is asked for its function")
    if gradient == "fast":
        from advsweep.models.fast_gradient import fast_forward

        return fast_forward(model)
    return lambda x: model(x, training=False)


def has_fast_gradient(model: keras.Model) -> bool:
    """Whether ``gradient="fast"`` differs from the plain tape for this model (a frozen VGG16 base inside)."""
    from advsweep.models.fast_gradient import BASE_NAME

    names = {layer.name for layer in model.layers}
    return BASE_NAME in names and not model.get_layer(BASE_NAME).trainable
