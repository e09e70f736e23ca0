"""Records do not depend on how a sweep is cut: fixed-shape model calls and per-example random streams.

The two facts the design rests on are checked on the real models (so a TensorFlow upgrade that breaks them
fails here): batch shape changes rounding, and at one fixed shape a row ignores the other rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from advsweep.attacks import run_attack
from advsweep.attacks.engine.core import BLOCK, example_stream, gradient_fn
from advsweep.experiments.config import load_config
from advsweep.experiments.sweep import run_sweep


@pytest.mark.parametrize("model_name", ["small_cnn", "vgg16"])
def test_a_row_ignores_the_other_rows_at_a_fixed_shape(model_name, small_cnn, vgg16_model, test_images):
    model = small_cnn if model_name == "small_cnn" else vgg16_model
    x, y = test_images
    g = gradient_fn(model, "margin", "plain")
    logits, gradient = (t.numpy() for t in g(tf.constant(x[:BLOCK]), tf.constant(y[:BLOCK])))
    mixed_x, mixed_y = x[:BLOCK].copy(), y[:BLOCK].copy()
    rows = np.arange(0, BLOCK, 3)
    mixed_x[rows], mixed_y[rows] = x[100:100 + len(rows)], y[100:100 + len(rows)]
    mixed_logits, mixed_gradient = (t.numpy() for t in g(tf.constant(mixed_x), tf.constant(mixed_y)))
    kept = np.setdiff1d(np.arange(BLOCK), rows)
    np.testing.assert_array_equal(mixed_logits[kept], logits[kept])
    np.testing.assert_array_equal(mixed_gradient[kept], gradient[kept])


def test_random_streams_are_per_example():
    first = example_stream(0, 17, "pgd", 0.1, 0).uniform(size=5)
    np.testing.assert_array_equal(first, example_stream(0, 17, "pgd", 0.1, 0).uniform(size=5))
    for other in [(1, 17, "pgd", 0.1, 0), (0, 18, "pgd", 0.1, 0), (0, 17, "bim", 0.1, 0), (0, 17, "pgd", 0.2, 0),
                  (0, 17, "pgd", 0.1, 1)]:
        assert not np.array_equal(first, example_stream(*other).uniform(size=5)), other


@pytest.mark.parametrize("implementation", ["own", "foolbox"])
def test_an_examples_adversarial_does_not_depend_on_its_chunk(small_cnn, test_images, implementation):
    x, y = test_images[0][:70], test_images[1][:70]
    ids = np.arange(1000, 1070)
    params = {"steps": 10, "rel_stepsize": 0.25, "loss": "margin", "implementation": implementation}
    whole = run_attack("pgd", small_cnn, x, y, [0.05, 0.1, 0.2], example_ids=ids, **params)
    parts = [run_attack("pgd", small_cnn, x[a:b], y[a:b], [0.05, 0.1, 0.2], example_ids=ids[a:b], **params)
             for a, b in ((0, 23), (23, 40), (40, 70))]
    np.testing.assert_array_equal(np.concatenate([p.x_adv for p in parts], axis=1), whole.x_adv)
    np.testing.assert_array_equal(np.concatenate([p.logits for p in parts], axis=1), whole.logits)
    shuffled = np.random.default_rng(0).permutation(70)
    again = run_attack("pgd", small_cnn, x[shuffled], y[shuffled], [0.05, 0.1, 0.2], example_ids=ids[shuffled],
                       **params)
    np.testing.assert_array_equal(again.x_adv[:, np.argsort(shuffled)], whole.x_adv)


def test_own_and_foolbox_agree_to_the_bit_with_random_start(small_cnn, test_images):
    """Same per-example starts: the any-iterate views and the last iterates are identical, and early stop
    changes the own any-iterate view not at all (it only skips steps)."""
    x, y = test_images[0][:64], test_images[1][:64]
    params = {"steps": 10, "rel_stepsize": 0.25, "gradient": "plain"}
    own = run_attack("pgd", small_cnn, x, y, [0.0, 0.05, 0.1, 0.2], early_stop=False, **params)
    reference = run_attack("pgd", small_cnn, x, y, [0.0, 0.05, 0.1, 0.2], implementation="foolbox", **params)
    np.testing.assert_array_equal(own.x_adv, reference.x_adv)
    np.testing.assert_array_equal(own.last.x_adv, reference.last.x_adv)
    stopped = run_attack("pgd", small_cnn, x, y, [0.0, 0.05, 0.1, 0.2], early_stop=True, **params)
    np.testing.assert_array_equal(stopped.x_adv, own.x_adv)
    assert stopped.last is None
    assert np.all(np.diff(own.robust_accuracy) <= 0)  # any-iterate: fooled at ε stays fooled at larger ε


def test_sweep_records_are_byte_identical_across_chunk_sizes(model_folders, tmp_path):
    """The same sweep (FGSM, PGD-5 by both implementations, minimal ε) of Wong et al.'s CNN in chunks of 10 and of 50
    examples: the records, minimal ε's included, and the summary are byte-identical."""
    folder = model_folders["wong"]
    frames = []
    for chunk in (10, 50):
        path = tmp_path / f"chunk{chunk}.toml"
        path.write_text(f'''
name = "chunks"
chunk_size = {chunk}
[examples]
count = 50
[[models]]
name = "wong"
path = "{folder}"
[epsilons]
linf = [0.1, 0.2]
[[attacks]]
name = "fgsm"
[[attacks]]
name = "pgd"
steps = 5
rel_stepsize = 0.3
loss = "margin"
[minimal]
examples = 10
steps = 5
''')
        run_dir = run_sweep(load_config(path), tmp_path / "results", run_id=f"chunk{chunk}")
        records = pd.concat([pd.read_parquet(p) for p in sorted((run_dir / "records" / "wong").glob("*.parquet"))
                             if p.name != "minimal.parquet"])
        frames.append(records.sort_values(["attack", "implementation", "iterate", "eps", "example"])
                      .reset_index(drop=True))
        frames.append(pd.read_parquet(run_dir / "records" / "wong" / "minimal.parquet"))
        summary = pd.read_csv(run_dir / "summary.csv").drop(columns=["run"])
        summary.to_csv(tmp_path / f"summary{chunk}.csv", index=False)
    pd.testing.assert_frame_equal(frames[0], frames[2], check_exact=True)
    pd.testing.assert_frame_equal(frames[1], frames[3], check_exact=True)
    assert (tmp_path / "summary10.csv").read_bytes() == (tmp_path / "summary50.csv").read_bytes()
