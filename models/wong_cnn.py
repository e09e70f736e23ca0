"""Wong et al.'s MNIST classifier: the network of their fast adversarial training code.

Conv 16 4×4 stride 2 (ReLU) → Conv 32 4×4 stride 2 (ReLU) → Dense 100 (ReLU) → Dense 10 logits, each convolution
padded by one pixel on every side (28 → 14 → 7), as ``fast_adversarial/MNIST/mnist_net.py`` defines it; Keras'
``"same"`` padding pads a 4×4 kernel of stride 2 on 28 (and 14) pixels by exactly one on each side, the same
network. PyTorch's default initialisation, which their code keeps: every weight and bias uniform within
±1/√fan-in (a convolution's fan-in is kernel area × input channels). Input float32 (N, 28, 28, 1) in [0, 1], the
harness' contract; no dropout, no batch normalisation.

The flatten order is Keras' (height, width, channels) where PyTorch's is (channels, height, width): the same network
up to a permutation of the first dense layer's inputs, which a model trained from scratch does not see.

Reference: E. Wong, L. Rice and J. Z. Kolter, "Fast is better than free: revisiting adversarial training", ICLR 2020
(code: locuslab/fast_adversarial). The AutoAttack paper (Croce & Hein, ICML 2020) reports their MNIST model at
82.93% under AutoAttack at ε = 0.3.
"""

from __future__ import annotations

import keras

from advsweep.models.common import INPUT_SHAPE, NUM_CLASSES, torch_default_init


def build_wong_cnn() -> keras.Model:
    """Build Wong et al.'s MNIST network.

    Returns:
        A ``keras.Model`` named ``"wong_cnn"``: ``(N, 28, 28, 1)`` in [0, 1] → logits ``(N, 10)``, 166,406
        parameters.
    """
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = keras.layers.Conv2D(16, 4, strides=2, padding="same", activation="relu",
                            kernel_initializer=torch_default_init(16), bias_initializer=torch_default_init(16),
                            name="conv1")(inputs)
    x = keras.layers.Conv2D(32, 4, strides=2, padding="same", activation="relu",
                            kernel_initializer=torch_default_init(256), bias_initializer=torch_default_init(256),
                            name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(100, activation="relu", kernel_initializer=torch_default_init(1568),
                           bias_initializer=torch_default_init(1568), name="dense")(x)
    logits = keras.layers.Dense(NUM_CLASSES, kernel_initializer=torch_default_init(100),
                                bias_initializer=torch_default_init(100), name="logits")(x)
    return keras.Model(inputs, logits, name="wong_cnn")
