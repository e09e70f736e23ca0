"""The MNIST classifier of the adversarial-robustness literature: Madry et al.'s CNN.

Conv 32 5×5 "same" (ReLU) → max-pool 2×2 → Conv 64 5×5 "same" (ReLU) → max-pool 2×2 → Dense 1024 (ReLU) →
Dense 10 logits, as in ``mnist_challenge/model.py``. Input float32 (N, 28, 28, 1) in [0, 1], the harness'
contract.

Reference: A. Madry, A. Makelov, L. Schmidt, D. Tsipras and A. Vladu, "Towards Deep Learning Models Resistant
to Adversarial Attacks", ICLR 2018. Wong et al. (ICLR 2020) and the AutoAttack paper (Croce & Hein, ICML 2020)
report their MNIST numbers on this architecture.
"""

from __future__ import annotations

import keras

from advsweep.assets.validate import Invalid, integer
from advsweep.models.common import INPUT_SHAPE, NUM_CLASSES


def build_madry_cnn(*, filters: tuple[int, int] = (32, 64), dense_units: int = 1024) -> keras.Model:
    """Build Madry et al.'s MNIST CNN.

    Args:
        filters: channels of the two 5×5 convolutions (32, 64 in the paper).
        dense_units: width of the hidden dense layer (1024 in the paper).

    Returns:
        A ``keras.Model`` named ``"madry_cnn"``: ``(N, 28, 28, 1)`` in [0, 1] → logits ``(N, 10)``.
    """
    if isinstance(filters, (str, bytes)) or len(filters) != 2:
        raise Invalid("filters", "two positive integers", filters)
    for channels in filters:
        integer("filters", channels, minimum=1)
    integer("dense_units", dense_units, minimum=1)
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = keras.layers.Conv2D(filters[0], 5, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(filters[1], 5, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name="madry_cnn")
