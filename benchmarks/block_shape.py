"""Why every model call of an attack has a fixed shape: rounding against batch shape, and throughput.

Measures, in one run on the real VGG16 (frozen ImageNet base, untrained linear head) and a small CNN:
- whether an example's logits and input gradient change with the batch it is computed in (shape and row),
- whether, at one fixed shape, a row's result depends on the other rows (it should not),
- input-gradient throughput at batch sizes 1 … 128 (images/s, side by side; ratios are what matter).

    python benchmarks/block_shape.py
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from advsweep.assets import load_mnist, load_vgg16_weights  # noqa: E402
from advsweep.attacks.engine.core import gradient_fn  # noqa: E402
from advsweep.models import build_small_cnn, build_vgg16_classifier  # noqa: E402
from advsweep.models.training import to_float_images  # noqa: E402


def main() -> None:
    (_, _, x_test, y_test), _ = load_mnist()
    x, y = to_float_images(x_test[:256]), y_test[:256].astype(np.int64)
    weights, _ = load_vgg16_weights()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    for name, model in (("small_cnn", build_small_cnn()), ("vgg16", build_vgg16_classifier(weights, feature_scaling=False))):
        g = gradient_fn(model, "margin", "fast")
        full_logits, _ = (t.numpy() for t in g(tf.constant(x[:64]), tf.constant(y[:64])))
        small_logits = np.concatenate([g(tf.constant(x[i:i + 32]), tf.constant(y[i:i + 32]))[0].numpy()
                                       for i in (0, 32)])
        print(f"{name}: largest logit difference, batch 32 against 64: {np.abs(small_logits - full_logits).max():.3g}")
        reference = [t.numpy() for t in g(tf.constant(x[:32]), tf.constant(y[:32]))]
        invariant = True
        for _ in range(3):
            mixed_x, mixed_y = x[:32].copy(), y[:32].copy()
            rows = rng.choice(32, 16, replace=False)
            others = rng.choice(np.arange(32, 256), 16, replace=False)
            mixed_x[rows], mixed_y[rows] = x[others], y[others]
            logits, gradient = (t.numpy() for t in g(tf.constant(mixed_x), tf.constant(mixed_y)))
            kept = np.setdiff1d(np.arange(32), rows)
            invariant &= bool(np.array_equal(logits[kept], reference[0][kept])
                              and np.array_equal(gradient[kept], reference[1][kept]))
        print(f"{name}: at a fixed shape of 32 rows, a row's logits and gradient ignore the other rows: {invariant}")
        for batch in (1, 8, 16, 32, 64, 128):
            xb, yb = tf.constant(x[:batch]), tf.constant(y[:batch])
            g(xb, yb)
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < 3.0:
                g(xb, yb)[1].numpy()
                count += batch
            print(f"{name}: batch {batch:3d}: {count / (time.perf_counter() - started):8.1f} images/s")


if __name__ == "__main__":
    main()
