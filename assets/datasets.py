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
* a researcher's own data, a ``.npz`` file (:func:`read_dataset_file`): arrays ``x_test`` and ``y_test``, optionally
  ``x_train`` and ``y_train``; the image shape and the classes read from the arrays, the values in the range the
  file says (``[0, 1]`` for floats, ``[0, 255]`` for ``uint8`` unless given), the arrays' sha256 in the run id.
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
    # a data set file's: its path, the range of its stored values, and the sha256 of its arrays
    path: str | None = None
    value_range: tuple[float, float] | None = None
    content_sha256: str | None = None

    def eps_limit(self, norm: str) -> float:
        """The largest meaningful ε: the diameter of the input box (L∞: its width; L2: width · √dimensions; L1:
        width · dimensions)."""
        width = self.bounds[1] - self.bounds[0]
        if norm == "linf":
            return width
        dimensions = float(np.prod(self.input_shape))
        return width * (dimensions if norm == "l1" else float(np.sqrt(dimensions)))

    def to_dict(self) -> dict[str, Any]:
        values = {"name": self.name, "input_shape": list(self.input_shape), "classes": self.classes,
                  "test_size": self.test_size, "train_size": self.train_size, "bounds": list(self.bounds)}
        if self.path is not None:
            values.update({"path": self.path, "range": list(self.value_range or (0.0, 1.0)),
                           "content_sha256": self.content_sha256})
        return values


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
    scale: float  # raw pixel value of 1.0 (above ``offset``)
    offset: float = 0.0  # raw pixel value of 0.0

    def test_images(self, indices: Any = None) -> np.ndarray:
        """float32 ``(n, H, W, C)`` in [0, 1] of the test images at ``indices`` (default: all)."""
        return self._float(self.x_test if indices is None else self.x_test[np.asarray(indices)])

    def train_images(self, indices: Any = None) -> np.ndarray:
        return self._float(self.x_train if indices is None else self.x_train[np.asarray(indices)])

    def _float(self, raw: np.ndarray) -> np.ndarray:
        shifted = raw.astype(np.float32) if self.offset == 0 else raw.astype(np.float32) - np.float32(self.offset)
        images = shifted / np.float32(self.scale)
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
DATASET_FILE_ARRAYS = ("x_test", "y_test", "x_train", "y_train")


class DatasetFileError(ValueError):
    """A data set file that cannot be used; the message names the file, the problem and the fix in one line."""


def read_dataset_file(path: str | Path, *, value_range: tuple[float, float] | None = None,
                      classes: int | None = None) -> Dataset:
    """Read and check a researcher's data set file (``.npz``), completely, before any work.

    Args:
        path: a ``.npz`` of ``x_test`` ``(N, H, W)`` or ``(N, H, W, C)`` and ``y_test`` ``(N,)`` integer labels, and
            optionally ``x_train`` and ``y_train`` of the same image shape.
        value_range: the range of the stored values, mapped onto [0, 1] (the box ε is measured in); default
            ``(0, 255)`` for ``uint8`` images and ``(0, 1)`` for others.
        classes: the number of classes; default the largest label + 1.

    Raises:
        DatasetFileError: a missing or unreadable file, a missing array, images and labels of different lengths,
            labels that are not integers in ``0 … classes − 1``, NaN, or values outside ``value_range``.
    """
    path = Path(path)

    def refuse(problem: str, fix: str) -> DatasetFileError:
        return DatasetFileError(f"data set file {path}: {problem}; {fix}")

    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files if name in DATASET_FILE_ARRAYS}
    except FileNotFoundError:
        raise refuse("does not exist", "give the path of a .npz with x_test and y_test") from None
    except (OSError, ValueError) as error:  # not a zip, or an object array (pickles are not read)
        raise refuse(f"cannot be read as a .npz of plain arrays ({error})",
                     "save it with numpy.savez(path, x_test=..., y_test=...)") from None
    for name in ("x_test", "y_test"):
        if name not in arrays:
            raise refuse(f"has no array `{name}`", "save it with numpy.savez(path, x_test=..., y_test=...)")
    if ("x_train" in arrays) != ("y_train" in arrays):
        raise refuse("has only one of `x_train` and `y_train`", "give both or neither")
    parts = [("test", arrays["x_test"], arrays["y_test"])]
    if "x_train" in arrays:
        parts.append(("train", arrays["x_train"], arrays["y_train"]))
    shape = None
    for split, x, y in parts:
        if x.ndim not in (3, 4) or len(x) == 0:
            raise refuse(f"`x_{split}` has shape {x.shape}", "images must be (N, H, W) or (N, H, W, C), N ≥ 1")
        image = x.shape[1:] if x.ndim == 4 else (*x.shape[1:], 1)
        if shape is not None and image != shape:
            raise refuse(f"`x_train` images are {image}, `x_test` images {shape}", "give images of one shape")
        shape = image
        if y.shape != (len(x),):
            raise refuse(f"`y_{split}` has shape {y.shape} for {len(x)} images", f"give one label per image, ({len(x)},)")
        if not np.issubdtype(y.dtype, np.integer):
            raise refuse(f"`y_{split}` is {y.dtype}, not integers", "give class indices 0 … classes − 1 as integers")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise refuse(f"`x_{split}` is {x.dtype}", "give real-valued images")
    low, high = value_range if value_range is not None else \
        ((0.0, 255.0) if arrays["x_test"].dtype == np.uint8 else (0.0, 1.0))
    labels = np.concatenate([y for _, _, y in parts])
    count = int(labels.max()) + 1 if classes is None else int(classes)
    for split, x, y in parts:
        if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
            raise refuse(f"`x_{split}` holds NaN", "replace or drop those images")
        if float(x.min()) < low or float(x.max()) > high:
            raise refuse(f"`x_{split}` values lie in [{float(x.min()):g}, {float(x.max()):g}], outside the range "
                         f"[{low:g}, {high:g}]", "set the data set's `range` to the pixel range it is stored in")
        if int(y.min()) < 0 or int(y.max()) >= count:
            raise refuse(f"`y_{split}` labels lie in [{int(y.min())}, {int(y.max())}], outside 0 … {count - 1}",
                         "give class indices from 0" + ("" if classes is None else " or raise `classes`"))
    if count < 2:
        raise refuse("has labels of one class only", "a classifier's data set has at least two classes")
    x_test = arrays["x_test"].reshape((len(arrays["x_test"]), *shape))  # type: ignore[misc]
    empty = np.zeros((0, *shape), dtype=x_test.dtype)  # type: ignore[misc]
    x_train = arrays["x_train"].reshape((len(arrays["x_train"]), *shape)) if "x_train" in arrays else empty  # type: ignore[misc]
    y_train = arrays["y_train"] if "y_train" in arrays else np.zeros(0, dtype=arrays["y_test"].dtype)
    content = sha256_arrays([x_train, y_train, x_test, arrays["y_test"]])
    info = DatasetInfo(name=path.stem, input_shape=shape, classes=count, test_size=len(x_test),  # type: ignore[arg-type]
                       train_size=len(x_train), description=f"a data set file ({path.name})", path=str(path.resolve()),
                       value_range=(float(low), float(high)), content_sha256=content)
    resolved = Resolved(name=path.stem, source="file", path=path.resolve(), content_sha256=content)
    return Dataset(info, x_train, y_train, x_test, arrays["y_test"], resolved, float(high - low), float(low))


def load_dataset(name: str | DatasetInfo = "mnist", *, mnist_path: str | None = None) -> Dataset:
    """Load and verify a data set by name (see the module notes), or a data set file by its
    :class:`DatasetInfo` (read again, and refused if its content changed since the config was read);
    ``mnist_path`` is an explicit MNIST copy.

    Raises:
        AssetError: the data set cannot be found or fails verification; the message says how to get it.
    """
    if isinstance(name, DatasetInfo):
        if name.path is None:
            return _LOADERS[check_dataset(name.name).name](mnist_path)
        try:
            data = read_dataset_file(name.path, value_range=name.value_range, classes=name.classes)
        except DatasetFileError as error:
            raise AssetError(str(error)) from None
        if data.info.content_sha256 != name.content_sha256:
            raise AssetError(f"data set file {name.path} changed since the config was read (sha256 "
                             f"{data.info.content_sha256}, was {name.content_sha256}); run the sweep again")
        return data
    return _LOADERS[check_dataset(name).name](mnist_path)
