"""The small CNN of the source tutorials, trained end to end: the contrast to the frozen VGG16.

Conv 32 3×3 (ReLU) → max-pool 2×2 → Conv 64 3×3 (ReLU) → max-pool 2×2 → Dense 64 (ReLU) → Dense 10
logits. Input float32 (N, 28, 28, 1) in [0, 1], the harness' contract.
"""

from __future__ import annotations

import keras

from advsweep.assets.validate import Invalid, integer
from advsweep.models.common import INPUT_SHAPE, NUM_CLASSES


def build_small_cnn(*, filters: tuple[int, int] = (32, 64), dense_units: int = 64) -> keras.Model:
    """Build the small CNN.

    Args:
        filters: channels of the two 3×3 convolutions.
        dense_units: width of the hidden dense layer.

    Returns:
        A ``keras.Model`` named ``"small_cnn"``: ``(N, 28, 28, 1)`` in [0, 1] → logits ``(N, 10)``.
    """
    if len(filters) != 2:
        raise Invalid("filters", "two positive integers", filters)
    for channels in filters:
        integer("filters", channels, minimum=1)
    integer("dense_units", dense_units, minimum=1)
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = keras.layers.Conv2D(filters[0], 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(filters[1], 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name="small_cnn")
