"""The data sets a sweep can be about: test (and training) arrays, input shape, classes, bounds, provenance and
content hash. No TensorFlow: the arrays are numpy.

``DATASETS`` describes each data set without loading it, so that a sweep config is checked (the example count
against the test set, ε against the input box) before any work starts; :func:`load_dataset` loads and verifies it.

* ``mnist`` (the default): MNIST through :func:`advsweep.assets.load_mnist` (Keras' download or the verified
  registry copies, docs/ASSETS.md). 28×28×1, 10 classes, 10,000 test images.
* ``digits``: the UCI ML hand-written digits (Alpaydin & Kaynak 1998) as scikit-learn ships them inside its
  package (no download): 1797 images of 8×8 pixels with values 0–16, scaled to [0, 1]. The first 1200 are the
  training set and the last 597 the test set. Needs ``pip install advsweep[digits]`` (scikit-learn).
* ``cifar10``: CIFAR-10 (Krizhevsky 2009) through Keras' own loader, which downloads
  ``cifar-10-python.tar.gz`` from the University of Toronto and verifies it against its published sha256
  (:data:`CIFAR10_ARCHIVE_SHA256`). 32×32×3, 10 classes, 10,000 test images. Needs internet once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from advsweep.assets.files import sha256_arrays
from advsweep.assets.resolver import AssetError, Resolved, load_mnist
from advsweep.assets.validate import one_of

DIGITS_CONTENT_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"  # uint8 images, uint8 labels
DIGITS_TRAIN = 1200
CIFAR10_ARCHIVE_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"  # Keras' file_hash


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a data set is, known without loading it."""

    name: str
    input_shape: tuple[int, int, int]
    classes: int
    test_size: int
    train_size: int
    description: str
    bounds: tuple[float, float] = (0.0, 1.0)

    def eps_limit(self, norm: str) -> float:
        """The largest meaningful ε: the diameter of the input box (L∞: its width; L2: width · √dimensions; L1:
        width · dimensions)."""
        width = self.bounds[1] - self.bounds[0]
        if norm == "linf":
            return width
        dimensions = float(np.prod(self.input_shape))
        return width * (dimensions if norm == "l1" else float(np.sqrt(dimensions)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape), "classes": self.classes,
                "test_size": self.test_size, "train_size": self.train_size, "bounds": list(self.bounds)}


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, 10000, 60000,
                         "MNIST (LeCun et al. 1998), verified copies (docs/ASSETS.md)"),
    "digits": DatasetInfo("digits", (8, 8, 1), 10, 1797 - DIGITS_TRAIN, DIGITS_TRAIN,
                          "UCI ML hand-written digits as scikit-learn ships them (8×8, values 0–16 scaled to [0, 1])"),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, 10000, 50000,
                           "CIFAR-10 (Krizhevsky 2009) through Keras' loader, archive sha256 verified by Keras"),
}


def check_dataset(name: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of a data set's name; ``Invalid`` names the known ones."""
    return DATASETS[one_of("dataset", name, tuple(DATASETS))]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded, verified data set. Images are stored as loaded (uint8) and handed out as float32 in [0, 1]."""

    info: DatasetInfo
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    resolved: Resolved
    scale: float  # raw pixel value of 1.0

    def test_images(self, indices: Any = None) -> np.ndarray:
        """float32 ``(n, H, W, C)`` in [0, 1] of the test images at ``indices`` (default: all)."""
        return self._float(self.x_test if indices is None else self.x_test[np.asarray(indices)])

    def train_images(self, indices: Any = None) -> np.ndarray:
        return self._float(self.x_train if indices is None else self.x_train[np.asarray(indices)])

    def _float(self, raw: np.ndarray) -> np.ndarray:
        images = raw.astype(np.float32) / np.float32(self.scale)
        return images.reshape((len(raw),) + self.info.input_shape)

    @property
    def test_labels(self) -> np.ndarray:
        return self.y_test.astype(np.int64)


def _mnist(mnist_path: str | None) -> Dataset:
    (x_train, y_train, x_test, y_test), resolved = load_mnist(mnist_path)
    return Dataset(DATASETS["mnist"], x_train, y_train, x_test, y_test, resolved, 255.0)


def _digits(_: str | None) -> Dataset:
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError:
        raise AssetError("the digits data set is the copy scikit-learn ships; install it with "
                         "`pip install advsweep[digits]` (or `pip install scikit-learn`)") from None
    bunch = load_digits()
    images, labels = bunch.images.astype(np.uint8), bunch.target.astype(np.uint8)
    if not np.array_equal(images, bunch.images):
        raise AssetError("scikit-learn's digits are not whole numbers 0–16 as published; reinstall scikit-learn")
    content = sha256_arrays([images, labels])
    if content != DIGITS_CONTENT_SHA256:
        raise AssetError(f"scikit-learn {sklearn.__version__}'s digits hash to {content}, not the published "
                         f"{DIGITS_CONTENT_SHA256}; reinstall scikit-learn")
    resolved = Resolved(name="digits", source=f"scikit-learn-{sklearn.__version__}",
                        path=Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz", content_sha256=content)
    return Dataset(DATASETS["digits"], images[:DIGITS_TRAIN], labels[:DIGITS_TRAIN], images[DIGITS_TRAIN:],
                   labels[DIGITS_TRAIN:], resolved, 16.0)


def _cifar10(_: str | None) -> Dataset:
    import keras

    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras' download messages are not results
            (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:  # no network, a proxy page, a truncated archive: Keras raises several kinds
        raise AssetError(f"CIFAR-10 could not be loaded through Keras ({type(error).__name__}: {error}); it needs one "
                         f"download of cifar-10-python.tar.gz (sha256 {CIFAR10_ARCHIVE_SHA256}, verified by Keras) "
                         "into ~/.keras/datasets/: run once where the internet is reachable") from None
    y_train, y_test = y_train.reshape(-1).astype(np.uint8), y_test.reshape(-1).astype(np.uint8)
    content = sha256_arrays([x_train, y_train, x_test, y_test])
    resolved = Resolved(name="cifar10", source="keras", path=Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / "cifar-10-batches-py-target",
                        content_sha256=content)
    return Dataset(DATASETS["cifar10"], x_train, y_train, x_test, y_test, resolved, 255.0)


_LOADERS: dict[str, Callable[[str | None], Dataset]] = {"mnist": _mnist, "digits": _digits, "cifar10": _cifar10}


def load_dataset(name: str = "mnist", *, mnist_path: str | None = None) -> Dataset:
    """Load and verify a data set by name (see the module notes); ``mnist_path`` is an explicit MNIST copy.

    Raises:
        AssetError: the data set cannot be found or fails verification; the message says how to get it.
    """
    return _LOADERS[check_dataset(name).name](mnist_path)
