"""The fast input gradient against TensorFlow's own gradient (the reference), on hand-made ties and the real VGG16."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from advsweep.attacks import run_attack
from advsweep.attacks.engine.core import gradient_fn
from advsweep.models.common import model_function
from advsweep.models.fast_gradient import _conv_relu, _max_pool_2x2, fast_forward


def _tape_gradient(function, x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        y = function(x_t)
    return tape.gradient(y, x_t, output_gradients=tf.constant(upstream)).numpy()


def test_max_pool_gradient_breaks_ties_like_tensorflow():
    """Values drawn from {0, 1, 2} make most 2×2 windows hold tied maxima; the gradient must go to the same
    cell as TensorFlow's MaxPoolGrad in every window, so the two gradients are equal exactly."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(8, 16, 16, 5)).astype(np.float32)
    upstream = rng.normal(size=(8, 8, 8, 5)).astype(np.float32)
    reference = _tape_gradient(lambda v: tf.nn.max_pool2d(v, 2, 2, "VALID"), x, upstream)
    fast = _tape_gradient(_max_pool_2x2, x, upstream)
    windows = x.reshape(8, 8, 2, 8, 2, 5).max(axis=(2, 4), keepdims=True)
    ties = (x.reshape(8, 8, 2, 8, 2, 5) == windows).sum(axis=(2, 4)) > 1
    assert ties.mean() > 0.3  # the case that matters is common here
    np.testing.assert_array_equal(fast, reference)


def test_max_pool_forward_is_tensorflows():
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(_max_pool_2x2(tf.constant(x)).numpy(),
                                  tf.nn.max_pool2d(x, 2, 2, "VALID").numpy())


def test_conv_relu_gradient_is_the_flipped_kernel_convolution():
    """A 3×3 'same' conv+ReLU layer: equal outputs, and the input gradient equals the tape's within float rounding."""
    keras.utils.set_random_seed(0)
    layer = keras.layers.Conv2D(7, 3, padding="same", activation="relu")
    layer.build((None, 6, 6, 4))
    x = np.random.default_rng(2).normal(size=(3, 6, 6, 4)).astype(np.float32)
    upstream = np.random.default_rng(3).normal(size=(3, 6, 6, 7)).astype(np.float32)
    fast_layer = _conv_relu(layer)
    np.testing.assert_allclose(fast_layer(tf.constant(x)).numpy(), layer(x).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(_tape_gradient(fast_layer, x, upstream), _tape_gradient(layer, x, upstream),
                               rtol=0, atol=1e-5)


def test_fast_forward_has_the_models_logits_and_gradient(vgg16_model, test_images):
    """On the real model (32×32 zero pad, ImageNet base to block4_pool): identical logits, and a loss gradient
    within float rounding of the tape's through the Keras model."""
    x, y = test_images[0][:32], test_images[1][:32]
    np.testing.assert_array_equal(tf.function(fast_forward(vgg16_model))(tf.constant(x)).numpy(),
                                  tf.function(lambda v: vgg16_model(v, training=False))(tf.constant(x)).numpy())
    _, fast = gradient_fn(vgg16_model, "ce", "fast")(tf.constant(x), tf.constant(y))
    _, plain = gradient_fn(vgg16_model, "ce", "plain")(tf.constant(x), tf.constant(y))
    assert float(tf.reduce_max(tf.abs(plain))) > 0
    assert float(tf.reduce_max(tf.abs(fast - plain))) <= 1e-5 * float(tf.reduce_max(tf.abs(plain)))


def test_fast_and_plain_fgsm_give_the_same_adversarials(vgg16_model, test_images):
    """Where the gradients differ in the last bits, FGSM's sign step must not: same adversarials, same accuracy."""
    x, y = test_images[0][:64], test_images[1][:64]
    grid = [0.0, 0.05, 0.1, 0.2]
    fast = run_attack("fgsm", vgg16_model, x, y, grid, gradient="fast")
    plain = run_attack("fgsm", vgg16_model, x, y, grid, gradient="plain")
    np.testing.assert_array_equal(fast.success, plain.success)
    assert np.abs(fast.x_adv - plain.x_adv).max() <= 1e-6


def test_small_cnn_has_no_fast_path_and_needs_none(small_cnn, test_images):
    x = tf.constant(test_images[0][:8])
    np.testing.assert_array_equal(fast_forward(small_cnn)(x).numpy(), small_cnn(x, training=False).numpy())


def test_bad_gradient_path_is_refused(small_cnn, test_images):
    with pytest.raises(ValueError, match=r"`gradient` must be one of 'auto', 'fast', 'plain'. Received: gradient='quick'"):
        model_function(small_cnn, "quick")
    with pytest.raises(ValueError, match="resolved by the attack layer's plan"):  # the model side never guesses
        model_function(small_cnn, "auto")
    with pytest.raises(ValueError, match="`gradient` must be one of"):
        run_attack("fgsm", small_cnn, test_images[0][:2], test_images[1][:2], [0.1], gradient="tape")


def test_unsupported_base_layer_is_refused():
    inputs = keras.Input((8, 8, 3))
    base = keras.Model(inputs, keras.layers.Conv2D(4, 5, padding="same", activation="relu", name="c")(inputs),
                       name="vgg16_base")
    base.trainable = False
    outer_in = keras.Input((8, 8, 3))
    model = keras.Model(outer_in, keras.layers.Flatten(name="flatten")(base(outer_in)))
    with pytest.raises(ValueError, match="fast gradient supports 3×3 stride-1 'same' conv"):
        fast_forward(model)
