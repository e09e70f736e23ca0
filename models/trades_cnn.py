"""TRADES' MNIST classifier: Zhang et al.'s SmallCNN.

Conv 32 3×3 (ReLU) → Conv 32 3×3 (ReLU) → max-pool 2×2 → Conv 64 3×3 (ReLU) → Conv 64 3×3 (ReLU) → max-pool 2×2 →
Dense 200 (ReLU) → dropout 0.5 → Dense 200 (ReLU) → Dense 10 logits, every convolution "valid" (28 → 26 → 24 → 12 →
10 → 8 → 4), as ``TRADES/models/small_cnn.py``. Its initialisation too: the convolutions He-normal (PyTorch's
``kaiming_normal_``, fan-in, not truncated) with zero biases, the first two dense layers PyTorch's default
(uniform within ±1/√fan-in, weights and biases), the logit layer all zeros. Input float32 (N, 28, 28, 1) in [0, 1],
the harness' contract. The dropout is active only in training (``model(x, training=True)``); every attack and
evaluation calls the model in inference mode, where it is the identity.

The flatten order is Keras' (height, width, channels) where PyTorch's is (channels, height, width): the same network
up to a permutation of the first dense layer's inputs, which a model trained from scratch does not see.

Reference: H. Zhang, Y. Yu, J. Jiao, E. Xing, L. El Ghaoui and M. Jordan, "Theoretically Principled Trade-off
between Robustness and Accuracy", ICML 2019. The AutoAttack paper (Croce & Hein, ICML 2020) reports their MNIST model
at 92.81% under AutoAttack at ε = 0.3.
"""

from __future__ import annotations

import keras

from advsweep.assets.validate import number
from advsweep.models.common import INPUT_SHAPE, NUM_CLASSES, torch_default_init


def build_trades_cnn(*, dropout: float = 0.5) -> keras.Model:
    """Build TRADES' SmallCNN.

    Args:
        dropout: rate of the dropout after the first dense layer (0.5 in the paper's code), in [0, 1).

    Returns:
        A ``keras.Model`` named ``"trades_cnn"``: ``(N, 28, 28, 1)`` in [0, 1] → logits ``(N, 10)``.
    """
    number("dropout", dropout, minimum=0.0, below=1.0)
    he_normal = keras.initializers.VarianceScaling(2.0, mode="fan_in", distribution="untruncated_normal")
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = inputs
    for name, channels in (("conv1", 32), ("conv2", 32), ("pool1", None), ("conv3", 64), ("conv4", 64),
                           ("pool2", None)):
        if channels is None:
            x = keras.layers.MaxPooling2D(2, name=name)(x)
        else:
            x = keras.layers.Conv2D(channels, 3, activation="relu", kernel_initializer=he_normal, name=name)(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(200, activation="relu", kernel_initializer=torch_default_init(1024),
                           bias_initializer=torch_default_init(1024), name="dense1")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(200, activation="relu", kernel_initializer=torch_default_init(200),
                           bias_initializer=torch_default_init(200), name="dense2")(x)
    logits = keras.layers.Dense(NUM_CLASSES, kernel_initializer="zeros", name="logits")(x)
    return keras.Model(inputs, logits, name="trades_cnn")

