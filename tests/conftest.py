"""Session fixtures on real MNIST and the real ImageNet VGG16 weights (no mocks of either).

The small CNN trains for one epoch on 12000 real images (≈ 97% test accuracy); the VGG16 fixture
is the default architecture with its head trained on the frozen features of 4000 real images. Both
are small enough for the default test run and real enough for attacks to mean something.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Deterministic kernels from the start: `train_model` turns them on for the rest of its process, so without this the
# session fixtures below would be trained differently depending on whether a training test ran first.
tf.config.experimental.enable_op_determinism()

from advsweep.assets import load_mnist, load_vgg16_weights  # noqa: E402
from advsweep.models import build_small_cnn, build_vgg16_classifier, feature_extractor  # noqa: E402
from advsweep.models.training import compute_features, to_float_images  # noqa: E402


@pytest.fixture(scope="session")
def mnist():
    """((x_train, y_train, x_test, y_test), resolved) as uint8, from the verified asset."""
    return load_mnist()


@pytest.fixture(scope="session")
def vgg16_weights():
    return load_vgg16_weights()


@pytest.fixture(scope="session")
def test_images(mnist):
    """The first 500 test images as float32 (500, 28, 28, 1) in [0, 1] and int64 labels."""
    (_, _, x_test, y_test), _ = mnist
    return to_float_images(x_test[:500]), y_test[:500].astype(np.int64)


def _compile(model: keras.Model) -> None:
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


@pytest.fixture(scope="session")
def small_cnn(mnist):
    (x_train, y_train, _, _), _ = mnist
    keras.utils.set_random_seed(0)
    model = build_small_cnn()
    _compile(model)
    model.fit(to_float_images(x_train[:12000]), y_train[:12000].astype(np.int64), epochs=1, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def vgg16_model(mnist, vgg16_weights):
    (x_train, y_train, _, _), _ = mnist
    weights, _ = vgg16_weights
    keras.utils.set_random_seed(0)
    model = build_vgg16_classifier(weights)  # the default architecture
    features = compute_features(feature_extractor(model), x_train[:4000])
    head = model.get_layer("head")
    head.get_layer("feature_scaling").adapt(features)
    _compile(head)
    head.fit(features, y_train[:4000].astype(np.int64), epochs=15, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session", params=["small_cnn", "vgg16"])
def any_model(request):
    """Each model in turn, for property checks that must hold on both."""
    return request.param, request.getfixturevalue(f"{request.param}_model" if request.param == "vgg16" else "small_cnn")


@pytest.fixture(scope="session")
def benchmark_module():
    """Loads a script of ``benchmarks/`` by name (the references the AutoAttack tests compare against live there)."""
    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
