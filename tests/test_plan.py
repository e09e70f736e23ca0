"""The plans of model calls: the rule that picks them, the call sizes they allow, and what the engine relies on,
that an example's floats do not depend on the size of the call it sits in or on how many examples are busy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from advsweep.attacks.gradient.apgd import auto_pgd
from advsweep.attacks.engine.core import logits_fn, loss_gradient_fn
from advsweep.attacks.engine.core import calls
from advsweep.attacks.engine.plan import (
    LADDER,
    ModelPlan,
    Plan,
    best_plan,
    call_seconds,
    plan_key,
    plan_of,
    round_cost,
    same_rows,
)
from advsweep.attacks.ensemble.square import square_attack
from advsweep.assets.resolver import cache_dir


def test_a_free_plan_packs_a_round_and_ends_it_with_the_smallest_size_that_fits():
    plan = Plan(rows=16, free=True, sizes=(4, 8))
    assert plan.sizes == (4, 8, 16)
    shapes = calls(np.arange(100, 137), plan)
    assert [len(c) for c in shapes] == [16, 16, 8]  # 37 busy: two full calls, the last 5 in a call of 8
    assert np.array_equal(np.concatenate(shapes)[np.concatenate(shapes) >= 0], np.arange(37))
    assert [len(c) for c in calls(np.arange(3), plan)] == [4]
    # where only large calls give a row a full call's floats (Madry et al.'s CNN: from 104 rows up), a round just
    # above a full call ends in a pair of calls that hold it with the fewest rows, not a full call and a call of 104
    sparse = Plan(rows=256, free=True, sizes=tuple(s for s in LADDER if s >= 104))
    for busy, rows in [(270, 272), (257, 260), (300, 300), (530, 532), (100, 104), (512, 512)]:
        shapes = calls(np.arange(busy), sparse)
        assert sum(len(c) for c in shapes) == rows and len(shapes) == -(-busy // 256), (busy, shapes)
        assert np.array_equal(np.sort(np.concatenate(shapes)[np.concatenate(shapes) >= 0]), np.arange(busy))
    # a plan whose rows depend on their position keeps one size, each example in row example_id % rows
    by_row = Plan(rows=8, free=False, sizes=(4,))
    assert by_row.sizes == (8,)
    table = calls(np.array([3, 11, 5]), by_row)
    assert len(table) == 2 and all(len(c) == 8 for c in table)
    assert table[0][3] == 0 and table[1][3] == 1 and table[0][5] == 2


def test_the_sizes_are_those_whose_rows_equal_the_largest_calls_and_the_rule_takes_the_cheapest_round():
    values = np.random.default_rng(0).random((256, 3))

    def call(rows: np.ndarray) -> np.ndarray:  # rows come out rounded differently in calls of fewer than 10
        return values[rows] * (1.0 if len(rows) >= 10 else 1.0 + 1e-9)

    assert same_rows(call, 64) == tuple(s for s in LADDER if 10 <= s <= 64)
    rates = {1: 50.0, 8: 300.0, 16: 500.0, 32: 900.0, 64: 1000.0}
    plan = best_plan(call, rates)
    assert plan.free and plan.sizes == tuple(s for s in LADDER if 10 <= s <= plan.rows)
    others = [Plan(rows=r, free=True, sizes=tuple(s for s in LADDER if 10 <= s <= r)) if r >= 10 else Plan(r, True)
              for r in rates]
    assert round_cost(plan, rates) == min(round_cost(p, rates) for p in others)
    # the last call's size matters: 33 busy in calls of 32 with a call of 10 for the last one, not of 32
    assert round_cost(Plan(rows=32, free=True, sizes=(10, 32)), rates) < round_cost(Plan(rows=32, free=True), rates)


def test_the_rule_reads_the_sizes_together_not_one_sizes_noise():
    """The frozen VGG16's gradient rates as measured here on 2026-12-01 (rows per second at each candidate size; a
    heavy model's rate is nearly flat, and these differ by ±20% between neighbouring sizes from timing noise): read
    size by size, 16 rows looked fastest and every round of 50 busy examples (APGD-T's on the hundred the quick
    sweep attacks) took four calls of 16, 14 rows idle; the fitted cost of a call takes a plan whose round of 50 is
    one call of 52."""
    rates = {1: 57.0, 8: 125.9, 16: 179.9, 32: 129.7, 64: 150.2, 128: 141.0, 256: 162.2}
    overhead, per_row = call_seconds(rates)
    assert 0 <= overhead < 0.05 and 0.004 < per_row < 0.009  # about 6 ms a row, a few ms a call
    exact = {s: s / (0.002 + 0.001 * s) for s in (1, 8, 16, 32, 64)}
    np.testing.assert_allclose(call_seconds(exact), (0.002, 0.001), rtol=1e-9)

    made = []

    def call(rows: np.ndarray) -> np.ndarray:  # the VGG16's gradient rows: the same bits from 16 rows up
        made.append(len(rows))
        return np.asarray(rows, dtype=np.float64)[:, None] * (1.0 if len(rows) >= 16 else 1.0 + 1e-9)

    plan = best_plan(call, rates)
    shapes = [len(c) for c in calls(np.arange(50), plan)]
    assert sum(shapes) <= 52 and len(shapes) == 1, (plan, shapes)
    assert set(LADDER) & set(range(16, plan.rows + 1)) <= set(plan.sizes)
    # the sizes above the plan's rows are not checked: one call of 256 rows (the reference), none of 144 … 240
    assert plan.rows < 256 and made.count(256) == 1 and not set(made) & set(range(plan.rows + 1, 256)), made


def test_a_model_whose_small_calls_differ_gets_calls_that_hold_an_adversarially_trained_models_rounds():
    """Madry et al.'s CNN's gradient rates as measured here on 2026-12-06, its rows the same to the bit only in calls
    of 128 rows and more (104 in another measurement): a round of 270 busy examples (APGD-T's on 300 examples of an
    adversarially trained model, nearly all robust) takes at most three calls, not the seventeen 16-row calls a rule
    weighing a round of one example as much as a round of 256 picked (APGD-T then took 174 s against the
    original's 114 s)."""
    rates = {1: 329.3, 8: 1274.6, 16: 1288.9, 32: 1817.8, 64: 2339.5, 128: 2544.9, 256: 3395.6}

    def call(rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows, dtype=np.float64)[:, None] * (1.0 if len(rows) >= 128 else 1.0 + 1e-9)

    plan = best_plan(call, rates)
    shapes = [len(c) for c in calls(np.arange(270), plan)]
    assert len(shapes) <= 2 and sum(shapes) <= 280, (plan, shapes)


def test_a_plan_is_measured_once_and_read_back_from_the_cache(small_cnn):
    plan = plan_of(small_cnn)
    path = cache_dir() / "plans" / f"{plan_key(small_cnn, 'cpu')}.json"
    assert ModelPlan.from_dict(json.loads(path.read_text())) == plan
    assert set(plan.measured) >= {"forward", "gradient-plain"}


def test_a_plans_key_is_the_architecture_not_keras_counters_nor_the_compile_settings():
    """The same layers built second in a process (Keras numbers the names it generates), or compiled, have the
    same key, and read the same cached plan; another activation, another width or a renamed layer the user named
    has another."""
    import keras

    def build(activation: str = "relu", units: int = 16, name: str | None = None) -> keras.Model:
        inputs = keras.Input((8, 8, 1))
        hidden = keras.layers.Dense(units, activation=activation, name=name)(keras.layers.Flatten()(inputs))
        return keras.Model(inputs, keras.layers.Dense(10)(hidden))

    first, second = build(), build()
    assert first.layers[0].name != second.layers[0].name  # input_layer_7, input_layer_8: counters, not layers
    second.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert plan_key(first, "cpu") == plan_key(second, "cpu")
    assert len({plan_key(m, "cpu") for m in (first, build("tanh"), build(units=32), build(name="mine"),
                                              build(name="yours"))}) == 5


@pytest.mark.parametrize("model_name", ["small_cnn", "vgg16"])
def test_every_size_of_the_plan_gives_a_row_the_floats_of_a_full_call(model_name, small_cnn, vgg16_model,
                                                                      test_images):
    """What the engine relies on, checked on real images (the plan was measured on random ones): in a call of any
    of the plan's sizes, at any position, an example's logits and gradient are those of a call of ``rows`` rows."""
    model = small_cnn if model_name == "small_cnn" else vgg16_model
    plan = plan_of(model)
    x, y = test_images[0][:256], test_images[1][:256].astype(np.int64)
    gradient = loss_gradient_fn(model, "ce", plan.gradient_path)
    forward = logits_fn(model)
    rng = np.random.default_rng(0)
    for kind, kind_plan in (("gradient", plan.gradient), ("forward", plan.forward)):
        def call(rows: np.ndarray, kind: str = kind) -> list[np.ndarray]:
            if kind == "forward":
                return [forward(tf.constant(x[rows])).numpy()]
            return [t.numpy() for t in gradient(tf.constant(x[rows]), tf.constant(y[rows]))]

        full = call(np.arange(kind_plan.rows))
        sizes = kind_plan.sizes if model_name == "small_cnn" else kind_plan.sizes[:2] + kind_plan.sizes[-3:-1]
        for size in sizes:
            rows = rng.choice(kind_plan.rows, size, replace=False)
            for part, whole in zip(call(rows), full):
                np.testing.assert_array_equal(part, whole[rows], err_msg=f"{kind}, a call of {size} rows")


def test_an_examples_attack_does_not_depend_on_how_many_are_busy(small_cnn, test_images):
    """APGD (gradient calls) and Square (forward calls) on 40 examples, and on parts of 1, 9 and 30: the rounds then
    end in calls of other sizes, and every example's adversarial and logits stay the same to the bit."""
    x, y = test_images[0][:40], test_images[1][:40]
    ids = np.arange(500, 540)
    for attack, params in ((auto_pgd, {"steps": 8}), (square_attack, {"queries": 60})):
        whole = attack(small_cnn, x, y, [0.1], example_ids=ids, **params)
        parts = [attack(small_cnn, x[a:b], y[a:b], [0.1], example_ids=ids[a:b], **params)
                 for a, b in ((0, 1), (1, 10), (10, 40))]
        np.testing.assert_array_equal(np.concatenate([p.x_adv for p in parts], axis=1), whole.x_adv)
        np.testing.assert_array_equal(np.concatenate([p.logits for p in parts], axis=1), whole.logits)
