"""What every model of the harness shares: its input/output contract and its probability view."""

from __future__ import annotations

import keras

INPUT_SHAPE: tuple[int, int, int] = (28, 28, 1)
NUM_CLASSES = 10


def check_contract(model: keras.Model) -> None:
    """Raise ``ValueError`` unless ``model`` maps float32 ``(N, 28, 28, 1)`` to ``(N, 10)`` outputs."""
    input_shape = tuple(model.input_shape[1:]) if model.input_shape else None
    output_shape = tuple(model.output_shape[1:]) if model.output_shape else None
    if input_shape != INPUT_SHAPE or output_shape != (NUM_CLASSES,):
        raise ValueError(
            "A model of this harness maps float32 (N, 28, 28, 1) images in [0, 1] to (N, 10) logits. "
            f"Received: model.input_shape={model.input_shape}, model.output_shape={model.output_shape}"
        )


def probability_model(model: keras.Model, *, temperature: float = 1.0) -> keras.Model:
    """Wrap a logits model so that it returns ``softmax(logits / temperature)``.

    The attacks always use the logits model; this view exists for users who want calibrated
    probabilities (one of the source tutorials uses ``temperature=0.6``).

    Args:
        model: a model of the harness' contract, returning logits ``(N, 10)``.
        temperature: softmax temperature, a positive float.

    Returns:
        A ``keras.Model`` with the same input and probabilities ``(N, 10)`` summing to 1.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"`temperature` must be a positive number. Received: temperature={temperature!r}")
    check_contract(model)
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    logits = model(inputs)
    scaled = keras.layers.Rescaling(1.0 / float(temperature), name="temperature")(logits)
    probabilities = keras.layers.Softmax(name="probabilities")(scaled)
    return keras.Model(inputs, probabilities, name=f"{model.name}_probabilities")
