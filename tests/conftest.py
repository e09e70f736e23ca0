"""Session fixtures on real MNIST and the real ImageNet VGG16 weights (no mocks of either).

The small CNN trains for one epoch on 12000 real images (≈ 97% test accuracy); the VGG16 fixture
is the default architecture with its head trained on the frozen features of 4000 real images. Both
are small enough for the default test run and real enough for attacks to mean something.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Deterministic kernels from the start: `train_model` turns them on for the rest of its process, so without this the
# session fixtures below would be trained differently depending on whether a training test ran first.
tf.config.experimental.enable_op_determinism()

from advsweep.assets import load_dataset, load_mnist, load_vgg16_weights  # noqa: E402
from advsweep.models import build_small_cnn, build_vgg16_classifier, build_wong_cnn, feature_extractor  # noqa: E402
from advsweep.experiments.config import load_config  # noqa: E402
from advsweep.experiments.sweep import run_sweep  # noqa: E402
from advsweep.models.config import ModelConfig  # noqa: E402
from advsweep.models.training import compute_features, to_float_images  # noqa: E402
from advsweep.attacks.engine.plan import plan_of  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def quick_plan_measurements():
    """Plans measured with 0.05 s per candidate size and kind instead of 0.25 s. A plan is measured once per model
    architecture (and Keras' generated layer names are part of it), so the models the tests build measure one each:
    14 measurements of 6–8 s in a default run. What a plan decides, the rows of each call, is checked against a full
    call whatever the timings chose (:func:`advsweep.attacks.engine.plan.best_plan`); only the speed it picks for
    is noisier. Sweeps run in a separate process measure at the product's setting."""
    import advsweep.attacks.engine.plan as planning

    kept = planning.SECONDS_PER_SIZE
    planning.SECONDS_PER_SIZE = 0.05
    yield
    planning.SECONDS_PER_SIZE = kept


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


def _shared(tmp_path_factory, name: str, build: Callable[[], Any], save: Callable[[Any, Path], None],
            load: Callable[[Path], Any]) -> Any:
    """A session fixture's value built once per test run. Under pytest-xdist the first worker to ask builds it and
    saves it into the run's folder that all workers share, under a file lock; the other workers wait and load it
    (the same weights, so the same floats). In one process, built."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build()
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "shared"  # the run's folder above each worker's own
    root.mkdir(exist_ok=True)
    path, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if done.exists():
            return load(path)
        value = build()
        save(value, path)
        done.touch()
        return value


def _keras_file(value: keras.Model, path: Path) -> None:
    value.save(path.with_suffix(".keras"))


def _load_keras_file(path: Path) -> keras.Model:
    return keras.saving.load_model(path.with_suffix(".keras"))


def _one_epoch(tmp_path_factory, mnist, build, images: int) -> keras.Model:
    """A network built by ``build`` (seed 0), trained for one epoch on the first ``images`` MNIST training images
    (once per test run: :func:`_shared`)."""
    def train() -> keras.Model:
        (x_train, y_train, _, _), _ = mnist
        keras.utils.set_random_seed(0)
        model = build()
        _compile(model)
        model.fit(to_float_images(x_train[:images]), y_train[:images].astype(np.int64), epochs=1, batch_size=64,
                  verbose=0)
        return model

    return _shared(tmp_path_factory, f"{build.__name__}-{images}", train, _keras_file, _load_keras_file)


@pytest.fixture(scope="session")
def small_cnn(tmp_path_factory, mnist):
    return _one_epoch(tmp_path_factory, mnist, build_small_cnn, 12000)


@pytest.fixture(scope="session")
def wong_cnn(tmp_path_factory, mnist):
    """Wong et al.'s MNIST network (two strided convolutions, 166k parameters), one epoch on 6000 real images: the
    tiny sweep's second model, a few times cheaper per call than the small CNN and a different architecture."""
    return _one_epoch(tmp_path_factory, mnist, build_wong_cnn, 6000)


@pytest.fixture(scope="session")
def vgg16_model(tmp_path_factory, mnist, vgg16_weights):
    """The default VGG16 classifier, its head trained for 15 epochs on the frozen features of 4000 training images,
    and its plan measured (once per test run: :func:`_shared`; the head's weights are what the workers share)."""
    weights, _ = vgg16_weights

    def train() -> keras.Model:
        (x_train, y_train, _, _), _ = mnist
        keras.utils.set_random_seed(0)
        model = build_vgg16_classifier(weights)  # the default architecture
        features = compute_features(feature_extractor(model), x_train[:4000])
        head = model.get_layer("head")
        head.get_layer("feature_scaling").adapt(features)
        _compile(head)
        head.fit(features, y_train[:4000].astype(np.int64), epochs=15, batch_size=64, verbose=0)
        plan_of(model)  # measured here, once: the other workers find it in the cache
        return model

    def load(path: Path) -> keras.Model:
        keras.utils.set_random_seed(0)
        model = build_vgg16_classifier(weights)
        model.get_layer("head").load_weights(path.with_suffix(".weights.h5"))
        return model

    return _shared(tmp_path_factory, "vgg16-head", train,
                   lambda model, path: model.get_layer("head").save_weights(path.with_suffix(".weights.h5")), load)


@pytest.fixture(scope="session", params=["small_cnn", "vgg16"])
def any_model(request):
    """Each model in turn, for property checks that must hold on both."""
    return request.param, request.getfixturevalue(f"{request.param}_model" if request.param == "vgg16" else "small_cnn")


# --------------------------------------------------------------------------------------------
# the UCI digits (8×8) and a Keras classifier trained on them here: the cheap real data set and model of the tests
# of data sets and models the harness did not build


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


def digits_classifier(input_shape: tuple[int, ...], *, softmax: bool = False, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=input_shape)
    hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    hidden = keras.layers.Dense(64, activation="relu")(hidden)
    outputs = keras.layers.Dense(10, activation="softmax" if softmax else None)(hidden)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="session")
def digits_model(digits, tmp_path_factory) -> Path:
    """A Keras classifier trained here on the digits training split (not by `advsweep train`), saved as .keras
    (once per test run: :func:`_shared`)."""
    def train() -> Path:
        model = digits_classifier((8, 8, 1))
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        model.fit(digits.train_images(), digits.y_train.astype(np.int64), epochs=30, batch_size=64, verbose=0)
        accuracy = float(np.mean(np.argmax(model.predict(digits.test_images(), verbose=0), -1) == digits.test_labels))
        assert accuracy > 0.9, accuracy  # a real classifier, or the attacks below would mean nothing
        path = tmp_path_factory.mktemp("digits") / "digits_cnn.keras"
        model.save(path)
        return path

    return _shared(tmp_path_factory, "digits-model", train, lambda path, shared: shared.write_text(str(path)),
                   lambda shared: Path(shared.read_text()))


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


# --------------------------------------------------------------------------------------------
# the tiny sweep (two small fixture models, 20 examples, FGSM and PGD-5 by both implementations): run once per
# session, the reference that resumed, repaired and Ray-executed runs of it are compared with. Its models are Wong et
# al.'s network and the small CNN, not the VGG16: the sweep's machinery does not depend on the architecture, and the
# VGG16's share (its 100-draw stability check alone took 14 s of the sweep's 70) fell on every test that reruns the
# sweep (resume, Ray, transfer). The VGG16 is swept end to end by the default job and the slow tests.


def _save(model, kind: str, folder: Path) -> Path:
    """A trained-model folder as `advsweep train` writes it (model.keras, config.json, metrics.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    config = ModelConfig(kind=kind)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "metrics.json").write_text(json.dumps({"model_id": f"{kind}-test-fixture", "clean_test_accuracy": None,
                                                     "assets": {}}))
    return folder


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory, small_cnn, wong_cnn):
    root = tmp_path_factory.mktemp("models")
    return {"wong": _save(wong_cnn, "wong_cnn", root / "wong"), "cnn": _save(small_cnn, "small_cnn", root / "cnn")}


def _models(folders: dict[str, Path]) -> str:
    """The models' tables, one per (name, folder), in order (the tiny sweep's: Wong's network, then the small CNN)."""
    return "".join(f'[[models]]\nname = "{name}"\npath = "{folder}"\n' for name, folder in folders.items())


def _config_text(folders: dict[str, Path], name: str = "tiny") -> str:
    return f'''
name = "{name}"
seed = 0
chunk_size = 20
[examples]
count = 20
selection = "balanced"
{_models(folders)}[epsilons]
linf = [0.1, 0.2]
[[attacks]]
name = "fgsm"
[[attacks]]
name = "pgd"
steps = 5
rel_stepsize = 0.3
[minimal]
examples = 10
steps = 5
tolerance = 0.02
[figures]
grid_examples = 4
grid_eps = [0.2]
'''


def _transfer_config(folders, copy: bool = False, **attack_extra) -> str:
    """A two-model sweep (Wong's network, small CNN; with ``copy`` a third, the small CNN again as "cnn_copy") of PGD-5 on
    the first 20 examples; ``attack_extra`` adds keys to the attack table (``surrogate="cnn"``: a transfer attack)."""
    copied = f'[[models]]\nname = "cnn_copy"\npath = "{folders["cnn"]}"\n' if copy else ""
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in attack_extra.items())
    return f'''
name = "transfer"
seed = 0
chunk_size = 10
[examples]
count = 20
selection = "first"
{_models(folders)}{copied}[epsilons]
linf = [0.0, 0.1, 0.2]
[[attacks]]
name = "pgd"
steps = 5
rel_stepsize = 0.3
implementations = ["own"]
{extra}[minimal]
enabled = false
'''


@pytest.fixture(scope="session")
def transfer_config_text():
    """The two-model transfer sweep's config text for given model folders."""
    return _transfer_config


@pytest.fixture(scope="session")
def tiny_config_text():
    """The tiny sweep's config text for given model folders (bad-config tests mutate it)."""
    return _config_text


@pytest.fixture(scope="session")
def sweep_config(model_folders, tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "tiny.toml"
    path.write_text(_config_text(model_folders))
    return path


@pytest.fixture(scope="session")
def finished_run(sweep_config, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    return run_sweep(load_config(sweep_config), results)


@pytest.fixture(scope="session")
def sweep_killed_after():
    """Run an ``advsweep sweep`` command line (arguments after ``sweep``) with results in ``results``, and SIGKILL
    it (no clean-up runs) once ``count`` units are in its ledger; returns the full command, to run again."""
    root = Path(__file__).resolve().parents[1]

    def run(arguments: list[str], results: Path, done_dir: Path, count: int) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "ADVSWEEP_RESULTS": str(results), "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, "-m", "advsweep.experiments.cli", "sweep", *arguments]
        process = subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        while time.time() < deadline and len(list(done_dir.glob("*.json"))) < count and process.poll() is None:
            time.sleep(0.1)
        assert process.poll() is None, "the sweep finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        return command, env

    return run
