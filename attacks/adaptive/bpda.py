"""Adaptive attacks for the failures the checks find: BPDA for a model whose gradients lie.

After A. Athalye, N. Carlini and D. Wagner, "Obfuscated Gradients Give a False Sense of Security: Circumventing
Defenses to Adversarial Examples" (ICML 2018), Backward Pass Differentiable Approximation: a layer that is not
differentiable (an input quantizer, JPEG, a thermometer code: its gradient zero or undefined almost everywhere) keeps
its forward pass, and its backward pass is replaced by the identity (straight-through), so that a gradient attack
follows the function the rest of the network computes. Their code (``anishathalye/obfuscated-gradients``) does the
same with ``x + tf.stop_gradient(g(x) - x)``; here the forward pass is the real layer's output to the bit
(``stop_gradient(g(x)) + (x − stop_gradient(x))``, whose second term is exactly zero), so that an attack's points are
judged by the real model whichever of the two it evaluates.

:func:`non_differentiable_layers` finds the layers to replace: a top-level layer of the model whose output has the
shape of its input, whose output changes under a small change of its input, and whose input gradient is zero (or
missing, or NaN) there. Layers elsewhere (inside a nested model) are replaced when named.

The other adaptation the checks call for, EOT for a randomized model, attacks the mean of the model's draws
(:func:`advsweep.attacks.adaptive.randomized.mean_of_draws`) with APGD-CE and APGD-DLR, AutoAttack's ``rand`` members.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

PROBE_STEP = 0.05  # the input change that must move a non-differentiable layer's output (of [0, 1] images)


class StraightThrough(keras.layers.Layer):
    """A layer's forward pass with the identity as its backward pass (BPDA). Not serialized: built in memory for an
    attack."""

    def __init__(self, inner: keras.layers.Layer, **kwargs: Any):
        super().__init__(name=f"{inner.name}_bpda", **kwargs)
        self.inner = inner

    def call(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        forward = self.inner(x, *args, **kwargs)
        return tf.stop_gradient(forward) + (x - tf.stop_gradient(x))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def _layer_input_models(model: keras.Model) -> list[tuple[keras.layers.Layer, Any]]:
    """Each top-level layer of a functional model of one input with a model from the model's input to that layer's
    input (so that it can be probed where the model would call it)."""
    pairs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            inputs = layer.input
        except (AttributeError, ValueError):  # a layer called several times, or never
            continue
        if isinstance(inputs, (list, tuple, dict)):
            continue
        if any(inputs is given for given in model.inputs):  # a layer on the model's own input
            pairs.append((layer, lambda images, training=False: images))
            continue
        try:
            pairs.append((layer, keras.Model(model.inputs, inputs)))
        except ValueError:  # not reachable from the model's input alone
            continue
    return pairs


def non_differentiable_layers(model: keras.Model, x: np.ndarray, *, seed: int = 0) -> list[str]:
    """The names of the model's top-level layers that BPDA should replace (see the module notes), probed on ``x``
    (a few images in [0, 1]): same output shape as input, an output that moves when its input moves by
    :data:`PROBE_STEP` in a random direction, and an input gradient of a random projection of the output that is
    zero, missing or NaN on every probe."""
    rng = np.random.default_rng(seed)
    found = []
    for layer, upstream in _layer_input_models(model):
        inputs = tf.constant(np.asarray(upstream(x, training=False), dtype=np.float32))
        try:
            outputs = layer(inputs, training=False)
        except TypeError:
            outputs = layer(inputs)
        if tuple(outputs.shape) != tuple(inputs.shape):
            continue
        weights = tf.constant(rng.standard_normal(outputs.shape).astype(np.float32))
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(inputs)
            value = tf.reduce_sum(tf.cast(layer(inputs), tf.float32) * weights)
        gradient = tape.gradient(value, inputs)
        dead = gradient is None or bool(np.all(np.nan_to_num(np.asarray(gradient), nan=0.0) == 0)) \
            or bool(np.isnan(np.asarray(gradient)).any())
        direction = rng.choice([-1.0, 1.0], size=inputs.shape).astype(np.float32)
        moved = layer(inputs + PROBE_STEP * direction)
        changes = not np.array_equal(np.asarray(moved), np.asarray(outputs))
        if dead and changes:
            found.append(layer.name)
    return found


def straight_through_model(model: keras.Model, layers: Sequence[str]) -> keras.Model:
    """A copy of ``model``'s graph (its layers and weights shared, not copied) in which each layer named in
    ``layers`` (at the top level or inside a nested functional model) has the identity as its backward pass.

    Raises:
        ValueError: a named layer is not in the model, or its output's shape is not its input's (the identity
            cannot stand for its gradient).
    """
    wanted, replaced = set(layers), set()

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in wanted:
            replaced.add(layer.name)
            return StraightThrough(layer)
        if isinstance(layer, keras.Model) and any(_contains(layer, name) for name in wanted):
            return keras.models.clone_model(layer, clone_function=clone)
        return layer

    surrogate = keras.models.clone_model(model, clone_function=clone)
    missing = sorted(wanted - replaced)
    if missing:
        names = sorted(_all_names(model))
        raise ValueError(f"BPDA: the model has no layer {missing[0]!r} to replace by the identity; its layers: "
                         f"{', '.join(names[:20])}{' …' if len(names) > 20 else ''}")
    return surrogate


def _contains(model: keras.Model, name: str) -> bool:
    return name in _all_names(model)


def _all_names(model: keras.Model) -> set[str]:
    names = set()
    for layer in model.layers:
        names.add(layer.name)
        if isinstance(layer, keras.Model):
            names |= _all_names(layer)
    return names
