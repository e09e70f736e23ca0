"""An adversarially trained small CNN for the AutoAttack strength comparison: a stand-in until the harness trains
robust models itself (issue 13 brings adversarial training into ``models/`` and ``advsweep train``).

PGD adversarial training (Madry et al., ICLR 2018) of the harness's small CNN on MNIST: every batch is replaced by
its L∞ PGD adversarials (uniform random start in the ε-ball, ``steps`` sign-gradient steps of 2.5 ε / steps on the
cross-entropy, projected onto the ball and [0, 1]), then one Adam step on them. ``steps = 1`` is fast adversarial
training (Wong et al., ICLR 2020: FGSM from a random start, step 1.25 ε). The training ε ramps up linearly over
the first ``ramp_epochs`` epochs (per batch): at ε = 0.3 from the first batch the small CNN stayed at chance
(loss 2.3025 for two epochs). The cross-entropy gradient is computed through a plain ``tf.GradientTape``.

Writes the model as a ``.keras`` file and prints its clean and PGD-10 accuracy (margin loss, the harness's own
attack) on the held-out test images 9000–9999 (the benchmarks use the first test images, so these are unseen
by both training and the comparison):

    python benchmarks/robust_model.py /tmp/robust_small_cnn.keras --eps 0.3 --steps 7 --epochs 6 --ramp-epochs 2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import run_attack  # noqa: E402
from advsweep.models import build_small_cnn  # noqa: E402

HELD_OUT = np.arange(9000, 10000)  # test images the report uses: unseen by training and by the comparisons


def adversarially_trained_small_cnn(x: np.ndarray, y: np.ndarray, *, eps: float, steps: int, epochs: int,
                                    ramp_epochs: float = 2.0, batch_size: int = 100, lr: float = 1e-3,
                                    seed: int = 0, log: bool = False) -> keras.Model:
    """The small CNN trained on the PGD adversarials of ``x`` (float32 NHWC in [0, 1]), labels ``y``."""
    keras.utils.set_random_seed(seed)
    model = build_small_cnn()
    optimizer = keras.optimizers.Adam(lr)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    step_size = 2.5 / steps if steps > 1 else 1.25  # in units of ε

    @tf.function(reduce_retracing=True)
    def train_step(images: tf.Tensor, labels: tf.Tensor, budget: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        delta = tf.random.stateless_uniform(tf.shape(images), key, -1.0, 1.0) * budget
        adversarial = tf.clip_by_value(images + delta, 0.0, 1.0)
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(adversarial)
                loss = loss_fn(labels, model(adversarial, training=False))
            moved = adversarial + step_size * budget * tf.sign(tape.gradient(loss, adversarial))
            adversarial = tf.clip_by_value(tf.clip_by_value(moved, images - budget, images + budget), 0.0, 1.0)
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(adversarial, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    batches = len(x) // batch_size
    ramp_batches = max(1.0, ramp_epochs * batches)
    done = 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        started, total = time.perf_counter(), 0.0
        for b in range(batches):
            rows = order[b * batch_size:(b + 1) * batch_size]
            budget = np.float32(eps * min(1.0, (done + 1) / ramp_batches))
            key = tf.constant(rng.integers(0, 2**31 - 1, size=2), tf.int32)
            total += float(train_step(tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(budget), key))
            done += 1
        if log:
            print(f"epoch {epoch + 1}/{epochs}: training ε {budget:.3f}, adversarial loss {total / batches:.4f}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the model (.keras)")
    parser.add_argument("--eps", type=float, default=0.3, help="training ε, L∞ (default 0.3)")
    parser.add_argument("--steps", type=int, default=7, help="PGD steps per batch; 1 = FGSM from a random start")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--ramp-epochs", type=float, default=2.0, help="epochs over which ε ramps up from 0")
    parser.add_argument("--examples", type=int, default=60000, help="training images (the first N)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.output.suffix != ".keras":
        parser.error("the output must be a .keras file")
    data = load_dataset("mnist")
    x = data.train_images(np.arange(args.examples))
    y = data.y_train[: args.examples].astype(np.int64)
    model = adversarially_trained_small_cnn(x, y, eps=args.eps, steps=args.steps, epochs=args.epochs,
                                            ramp_epochs=args.ramp_epochs, seed=args.seed, log=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.output)
    x_test, y_test = data.test_images(HELD_OUT), data.y_test[HELD_OUT].astype(np.int64)
    pgd = run_attack("pgd", model, x_test, y_test, [0.0, args.eps], steps=10, loss="margin")
    print(f"held-out test images 9000–9999: clean {100 * pgd.robust_accuracy[0]:.1f}%, "
          f"PGD-10 (margin) at ε = {args.eps:g}: {100 * pgd.robust_accuracy[1]:.1f}%")


if __name__ == "__main__":
    main()
