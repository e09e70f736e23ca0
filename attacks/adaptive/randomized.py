"""Randomized models: detected by two calls on the same inputs, and judged by one written rule.

A model whose logits change between two calls on the same input (noise layers, random transforms, dropout at
inference) cannot be judged by a single call: one unlucky draw would count an example as fooled even where the input
was not perturbed at all (on a CNN behind Gaussian input noise of σ = 0.3, single draws left 91% "robust" at ε = 0
where the model is 98% accurate). The harness therefore judges every point of a randomized model, the clean input
and every attack's point alike, by **the mean of** :data:`DRAWS` **draws' softmax probabilities**: the predicted class
is the argmax of that mean, and the records' logits are its logarithm (so that their loss and margin are those of
the mean prediction). This is the expectation the attacks' EOT ascends (Athalye, Carlini & Wagner, ICML 2018), and
the prediction a randomized defence is deployed with.

The draws of one judgement are reproducible: before each draw the model's randomness is reset to a state derived
from the seed, the draw's index and the examples of the call (TensorFlow's global seed, which a seedless random op
draws from, and the state of every Keras ``SeedGenerator`` of the model), and the model is called eagerly, where
that reset takes effect. The same point in the same call is therefore judged the same way twice: an attack's point
at ε = 0, which is the clean input, gets the clean judgement, and every attack's robust accuracy at ε = 0 equals
clean accuracy. :func:`draws_reproducible` says whether a model's randomness obeys the reset (a SavedModel's random
ops, compiled into its graph, may not).

Deterministic models are never judged this way: their records are those of one call, as before.
"""

from __future__ import annotations

import hashlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.defaults import RANDOMIZED
from advsweep.attacks.engine.core import BLOCK, calls, check_example_ids, gather, predict_logits

# Draws per judgement. Measured on the quick sweep's small CNN behind Gaussian input noise of σ = 0.3, first 1,000
# test images, two judgements with independent draws (`python benchmarks/randomized_draws.py
# results/defenses/cnn_noise.keras --custom-objects experiments/configs/defenses/my_defense.py`, AMD EPYC, AVX2, 2
# cores, 2026-12-07; docs/defenses.md):
#   draws  accuracy       examples judged differently
#   1      60.3 / 60.8%   14.6%
#   5      61.2 / 61.0%   7.7%
#   15     61.8 / 62.2%   3.5%
#   50     62.5 / 62.4%   2.5%
# At 15 the accuracy of two independent judgements differs by 0.4 points, well inside the 95% interval of a
# 1,000-example accuracy (±3 points), within 0.7 points of 50 draws' at under a third of their cost.
DRAWS: int = RANDOMIZED["draws"]


def is_randomized(model: keras.Model, x: np.ndarray) -> bool:
    """Whether ``model``'s logits differ between two calls on the same images (AutoAttack's own check before its
    ``rand`` version; the harness's :func:`advsweep.attacks.evaluation.checks.check_deterministic` reports it per example)."""
    first = predict_logits(model, x)
    second = predict_logits(model, x)
    return bool(np.any(first != second))


def _seed_generator_states(model: keras.Model) -> list[Any]:
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _reset(model: keras.Model, states: list[tuple[Any, np.ndarray]], seed: int) -> None:
    tf.random.set_seed(seed)
    for variable, value in states:
        variable.assign(value)


def _call_seed(seed: int, draw: int, ids: np.ndarray) -> int:
    digest = hashlib.sha256(f"judge/{seed}/{draw}/".encode() + ids.astype(np.int64).tobytes()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def judged_logits(model: keras.Model, x: np.ndarray, *, example_ids: Any = None, draws: int = DRAWS,
                  seed: int = 0) -> np.ndarray:
    """``(N, C)`` float32: the log of the mean of ``draws`` draws' softmax probabilities per image (the rule of the
    module notes), in blocks of :data:`~advsweep.attacks.engine.core.BLOCK` rows as every model call of the harness (an
    example in row test index mod BLOCK), each draw from a randomness reset to a state of (seed, draw, the block's
    examples)."""
    ids = check_example_ids(example_ids, len(x))
    states = [(v, np.asarray(v.numpy())) for v in _seed_generator_states(model)]
    out: np.ndarray | None = None
    for rows in calls(ids):
        block = tf.constant(gather(x, rows))
        used = rows >= 0
        key = np.where(used, ids[np.maximum(rows, 0)], -1)
        total: np.ndarray | None = None
        for draw in range(draws):
            _reset(model, states, _call_seed(seed, draw, key))
            probabilities = tf.nn.softmax(tf.cast(model(block, training=False), tf.float64)).numpy()
            total = probabilities if total is None else total + probabilities
        assert total is not None
        mean = total / draws
        if out is None:
            out = np.empty((len(x), mean.shape[1]), dtype=np.float32)
        out[rows[used]] = np.log(np.maximum(mean[used], np.finfo(np.float64).tiny)).astype(np.float32)
    for variable, value in states:  # the model's own streams as they were: a judgement leaves no trace
        variable.assign(value)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def draws_reproducible(model: keras.Model, x: np.ndarray, *, draws: int = 2, seed: int = 0) -> bool:
    """Whether two judgements of the same images give the same logits (the model's randomness obeys the reset)."""
    n = min(len(x), BLOCK)
    first = judged_logits(model, x[:n], draws=draws, seed=seed)
    return bool(np.array_equal(first, judged_logits(model, x[:n], draws=draws, seed=seed)))


def mean_of_draws(model: keras.Model, draws: int = DRAWS) -> keras.Model:
    """The randomized model as the rule sees it: ``x → log(mean of draws' softmax(model(x)))``, ``draws`` fresh
    draws per call (the model called ``draws`` times in one graph, each call its own random ops). Its gradient is
    the gradient of the rule's own prediction through every draw (Expectation over Transformation on the expectation
    the records judge), and an attack's success check on it is a check by the rule, with fresh draws: what the
    escalation's EOT attacks (:mod:`advsweep.attacks.adaptive.bpda`) attack."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    probabilities = [keras.ops.softmax(model(inputs, training=False), axis=-1) for _ in range(draws)]
    mean = keras.layers.Average(name="mean_of_draws")(probabilities) if draws > 1 else probabilities[0]
    tiny = float(np.finfo(np.float32).tiny)
    outputs = keras.layers.Lambda(lambda p: keras.ops.log(keras.ops.maximum(p, tiny)), name="log")(mean)
    return keras.Model(inputs, outputs, name=f"{model.name}_mean_of_{draws}")
