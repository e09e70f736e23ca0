"""A fast input gradient through the frozen VGG16 base, with backward passes built from forward ops.

A frozen network needs no weight gradients, and the input gradient of a frozen layer is itself a
cheap forward operation:

- conv 3×3, stride 1, ``"same"`` padding, then ReLU: ``∂L/∂x = conv(∂L/∂y · [y > 0], W')`` where
  ``W'`` is the kernel flipped in both spatial axes with its input and output channels swapped;
- max pooling 2×2, stride 2: ``∂L/∂y`` goes to the first maximum of each window, in row-major order
  (top-left, top-right, bottom-left, bottom-right), which is how TensorFlow's ``MaxPoolGrad`` breaks
  ties. Padded borders make exact ties common, so the order matters.

TensorFlow's CPU kernels for ``Conv2DBackpropInput`` and ``MaxPoolGrad`` on small feature maps are
several times slower than these forward ops (``docs/ASSETS.md``; ``benchmarks/attack_speed.py``
measures the gap). :func:`fast_forward` returns the model's function ``x → logits`` with these
backward passes attached through ``tf.custom_gradient``; its forward values are the model's, bit for
bit, and its gradient equals ``tf.GradientTape``'s up to float rounding (``tests/test_fast_gradient.py``).

Models without a frozen ``"vgg16_base"`` sub-model (the CNNs, and the VGG16 trained from scratch, whose base
trains and whose weights may change after a call) are returned as they are, differentiated by the plain tape.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf


Forward = Callable[[tf.Tensor], tf.Tensor]
BASE_NAME = "vgg16_base"

_FORWARDS: weakref.WeakKeyDictionary[Any, Forward] = weakref.WeakKeyDictionary()


def _conv_relu(layer: keras.layers.Conv2D) -> Forward:
    """``relu(conv(x, W) + b)`` whose input gradient is a forward convolution with the flipped kernel."""
    kernel = tf.constant(np.asarray(layer.kernel), dtype=tf.float32)
    bias = tf.constant(np.asarray(layer.bias), dtype=tf.float32)
    # (kh, kw, in, out) → flipped in space, channels swapped: (kh, kw, out, in).
    kernel_backward = tf.constant(np.ascontiguousarray(np.asarray(layer.kernel)[::-1, ::-1].transpose(0, 1, 3, 2)))

    @tf.custom_gradient
    def conv_relu(x: tf.Tensor) -> Any:
        y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), bias))

        def backward(upstream: tf.Tensor) -> tf.Tensor:
            masked = tf.where(y > 0, upstream, tf.zeros_like(upstream))
            return tf.nn.conv2d(masked, kernel_backward, strides=1, padding="SAME")

        return y, backward

    return conv_relu


@tf.custom_gradient
def _max_pool_2x2(x: tf.Tensor) -> Any:
    """2×2 stride-2 max pooling whose gradient goes to the first maximum of each window (row-major)."""
    y = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")

    def backward(upstream: tf.Tensor) -> tf.Tensor:
        # space_to_depth puts window position (i, j) at channel block 2i + j: top-left, top-right,
        # bottom-left, bottom-right, the order in which MaxPoolGrad scans a window.
        windows = tf.nn.space_to_depth(x, 2)
        corners = tf.split(windows, 4, axis=-1)
        zeros = tf.zeros_like(upstream)
        taken = tf.zeros_like(upstream, dtype=tf.bool)
        routed = []
        for corner in corners:
            first = tf.logical_and(tf.equal(corner, y), tf.logical_not(taken))
            routed.append(tf.where(first, upstream, zeros))
            taken = tf.logical_or(taken, first)
        return tf.nn.depth_to_space(tf.concat(routed, axis=-1), 2)

    return y, backward


def _base_forward(base: keras.Model) -> Forward:
    """The frozen conv base as a chain of custom-gradient blocks. Raises for layers it cannot speed up."""
    blocks: list[Forward] = []
    for layer in base.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Conv2D):
            config = layer.get_config()
            if (tuple(config["kernel_size"]) != (3, 3) or tuple(config["strides"]) != (1, 1)
                    or config["padding"] != "same" or config["activation"] != "relu" or not config["use_bias"]
                    or tuple(config["dilation_rate"]) != (1, 1)):
                raise ValueError(f"fast gradient supports 3×3 stride-1 'same' conv+ReLU layers. Received: {layer.name} "
                                 f"with {config}")
            blocks.append(_conv_relu(layer))
        elif isinstance(layer, keras.layers.MaxPooling2D):
            config = layer.get_config()
            if (tuple(config["pool_size"]) != (2, 2) or tuple(config["strides"]) != (2, 2)
                    or config["padding"] != "valid"):
                raise ValueError(f"fast gradient supports 2×2 stride-2 'valid' max pooling. Received: {layer.name} "
                                 f"with {config}")
            height, width = layer.input.shape[1:3]
            if height % 2 or width % 2:
                raise ValueError(f"fast gradient needs even feature maps before pooling. Received: {layer.name} "
                                 f"input {height}×{width}")
            blocks.append(_max_pool_2x2)
        else:
            raise ValueError(f"fast gradient does not know layer {layer.name!r} ({type(layer).__name__})")

    def forward(x: tf.Tensor) -> tf.Tensor:
        for block in blocks:
            x = block(x)
        return x

    return forward


def _build_fast_forward(model: keras.Model) -> Forward:
    base = model.get_layer(BASE_NAME)
    if base.trainable:
        raise ValueError(f"the fast gradient is for a frozen base; {BASE_NAME!r} of {model.name!r} is trainable")
    base_forward = _base_forward(base)
    # The classifier is a chain: image → resize → grey_to_rgb → caffe → base → flatten → head.
    stages = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]

    def forward(x: tf.Tensor) -> tf.Tensor:
        for layer in stages:
            if layer is base:
                x = base_forward(x)
            elif isinstance(layer, keras.layers.Concatenate):
                x = layer([x, x, x])
            else:
                x = layer(x, training=False)
        return x

    return forward


def fast_forward(model: keras.Model) -> Forward:
    """The model's function ``(N, 28, 28, 1) → (N, 10)`` logits, with fast backward passes through a frozen
    VGG16 base; the model itself when it has no frozen ``"vgg16_base"``. Cached per model.

    The base's weights are read once: the base is frozen, so they cannot change.
    """
    if model not in _FORWARDS:
        names = {layer.name for layer in model.layers}
        frozen = BASE_NAME in names and not model.get_layer(BASE_NAME).trainable
        _FORWARDS[model] = _build_fast_forward(model) if frozen else (lambda x: model(x, training=False))
    return _FORWARDS[model]

