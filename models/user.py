"""The models researchers bring: their own layer classes, Keras' legacy HDF5 files and TensorFlow SavedModels.

A model file of any of three formats (:func:`model_format`) loads through Keras' own loaders:

* ``.keras`` (Keras 3's format) and ``.h5``/``.hdf5`` (the legacy HDF5 format, what most older code saved):
  :func:`keras.saving.load_model`;
* a SavedModel folder (``saved_model.pb`` inside, what ``model.export(folder)`` or ``tf.saved_model.save`` writes):
  wrapped as a layer (:class:`keras.layers.TFSMLayer`, its ``serve`` endpoint, else ``serving_default``) in a model
  of the data set's input shape. Its input gradient is checked against central finite differences before it is
  used (:func:`check_gradient`): a SavedModel keeps the gradient of every op, but a graph whose gradient is
  missing or wrong would give every gradient attack a wrong direction.

Keras loads a user's layer only when its class is registered (``@keras.saving.register_keras_serializable()``) in
an imported module; it never imports code named in a model file. The code that defines a model's own classes is
named beside it (a ``.py`` file or an importable module, :func:`import_user_code`) and imported before the model
loads; its sources' sha256 go into the model's digest, so that an edited layer gives another run id. A class that
no imported code registers is refused in one line that names it (:func:`unregistered_classes`).

Randomness in a user's layer (``tf.random.normal`` without a seed) needs a global seed where TensorFlow's
deterministic kernels are on: the caller sets one (:func:`ensure_global_seed`) and the model loads; it is then a
randomized model, which the attack layer detects and judges by its written rule, not refused.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODEL_SUFFIXES: dict[str, str] = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}
SAVED_MODEL_FILE = "saved_model.pb"
# central differences of a float32 model: steps of 1e-3 in the input keep rounding below 1e-3 of the slope
GRADIENT_STEP = 1e-3
GRADIENT_TOLERANCE = 0.05  # relative error of the directional derivative the SavedModel's gradient may have
_MISSING_CLASS = re.compile(r"(?:Could not locate (?:class|function)|Unknown (?:layer|object|class)(?::| name:)?)\s*"
                            r"'?([A-Za-z_][\w.>]*)'?")


class UserModelError(ValueError):
    """A model or its code that cannot be loaded; the message names the problem and the fix in one line."""


def model_format(path: str | Path) -> str | None:
    """``"keras"``, ``"h5"`` or ``"savedmodel"`` for a model file or folder (a folder holding ``model.keras``, as
    ``advsweep train`` writes, is ``"keras"``); ``None`` for anything else."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.keras").is_file():
            return "keras"
        return "savedmodel" if (path / SAVED_MODEL_FILE).is_file() else None
    return MODEL_SUFFIXES.get(path.suffix.lower()) if path.is_file() else None


def model_file(path: str | Path) -> Path:
    """The file (or SavedModel folder) a model path names: ``model.keras`` inside a trained folder, else the path."""
    path = Path(path)
    return path / "model.keras" if path.is_dir() and (path / "model.keras").is_file() else path


def user_code_files(sources: Sequence[str], base: Path | None = None) -> list[Path]:
    """The source files of ``sources`` (``.py`` paths, relative to ``base``, or importable module names), without
    importing them.

    Raises:
        UserModelError: a file that does not exist, or a module that cannot be found.
    """
    files = []
    for source in sources:
        if source.endswith(".py"):
            path = Path(source).expanduser()
            path = path if path.is_absolute() or base is None else base / path
            if not path.is_file():
                raise UserModelError(f"custom_objects: {path} does not exist; give the .py file that defines and "
                                     "registers the model's layers, or an importable module name")
            files.append(path.resolve())
            continue
        try:
            spec = importlib.util.find_spec(source)
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None or not Path(spec.origin).is_file():
            raise UserModelError(f"custom_objects: no module {source!r} can be imported here; give the path of its .py "
                                 "file instead (e.g. custom_objects = \"my_defense.py\"), or install it")
        files.append(Path(spec.origin).resolve())
    return files


def import_user_code(sources: Sequence[str], base: Path | None = None) -> list[Any]:
    """Import the code that defines and registers a model's own classes: each source a ``.py`` file (imported under
    a name derived from its content, so that two files of one name do not collide, its folder on ``sys.path`` for
    its own imports) or a module name. Importing the same source twice runs it once.

    Raises:
        UserModelError: the code is missing or raises while it is imported (the message gives the error).
    """
    modules = []
    for source, path in zip(sources, user_code_files(sources, base), strict=True):
        try:
            if not source.endswith(".py"):
                modules.append(importlib.import_module(source))
                continue
            name = f"advsweep_user_{path.stem}_{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
            if name in sys.modules:
                modules.append(sys.modules[name])
                continue
            if str(path.parent) not in sys.path:
                sys.path.append(str(path.parent))
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            modules.append(module)
        except Exception as error:  # the user's code: any error it raises
            raise UserModelError(f"custom_objects: importing {source} failed ({type(error).__name__}: {error}); "
                                 "fix the code, or run it alone with `python " + str(path) + "`") from None
    return modules


def code_digest(files: Sequence[Path]) -> str:
    """sha256 over the user code's files (name and content), in the order given."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def content_sha256(path: str | Path) -> str:
    """sha256 of a model file, or of a SavedModel folder (each file's relative path and content, sorted)."""
    path = Path(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def _classes(config: Any) -> Iterator[tuple[str, str | None, str | None]]:
    """Every ``(class_name, module, registered_name)`` of a serialized Keras config."""
    if isinstance(config, dict):
        if isinstance(config.get("class_name"), str):
            yield config["class_name"], config.get("module"), config.get("registered_name")
        for value in config.values():
            yield from _classes(value)
    elif isinstance(config, list):
        for value in config:
            yield from _classes(value)


def unregistered_classes(path: str | Path) -> list[tuple[str, str | None]]:
    """The classes a ``.keras`` file's config names that neither Keras nor any imported code provides:
    ``(registered name, module the config says defined it)``, in order of appearance."""
    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    missing: dict[str, str | None] = {}
    for class_name, module, registered in _classes(config):
        if module is None or module.startswith("keras") or module in ("builtins", "numpy"):
            continue
        name = registered or class_name
        if keras.saving.get_registered_object(name) is None and name not in missing:
            missing[name] = module
    return list(missing.items())


def _refusal(path: Path, missing: list[tuple[str, str | None]]) -> UserModelError:
    names = ", ".join(repr(name) for name, _ in missing)
    module = next((m for _, m in missing if m), None)
    if module:  # a file this harness imported is named after its content: the user knows it by its own name
        module = re.sub(r"^advsweep_user_(.+)_[0-9a-f]{12}$", r"\1", module)
    hint = f"custom_objects = \"{module.replace('.', '/')}.py\"" if module else "custom_objects = \"my_layers.py\""
    return UserModelError(
        f"{path} uses the class(es) {names}, which no imported code registers; add `{hint}` to the model's table "
        f"(a .py file or module that defines the class with @keras.saving.register_keras_serializable())")


def load_model_file(path: str | Path, *, input_shape: tuple[int, ...]) -> Any:
    """Load a ``.keras``, ``.h5`` or SavedModel model (the user's code imported before, by the caller).

    Args:
        path: the file or folder (:func:`model_format`).
        input_shape: the data set's image shape: a SavedModel's input, whose shape Keras cannot read from it.

    Raises:
        UserModelError: the format is unknown, a class is unregistered, Keras cannot load the file, or a
            SavedModel's serving function or gradient is unusable.
    """
    import keras

    path = model_file(path)
    kind = model_format(path)
    if kind is None:
        raise UserModelError(f"{path} is not a model this harness loads: give a .keras file, a folder with "
                             f"model.keras, a legacy .h5 file or a SavedModel folder (with {SAVED_MODEL_FILE})")
    if kind == "savedmodel":
        return savedmodel_classifier(path, input_shape=input_shape)
    if kind == "keras":
        missing = unregistered_classes(path)
        if missing:
            raise _refusal(path, missing)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # a corrupt or foreign file, an .h5 with an unknown layer: Keras raises many kinds
        text = str(error)
        found = _MISSING_CLASS.search(text)
        if found:
            raise _refusal(path, [(found.group(1), None)]) from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise UserModelError(f"{path} cannot be loaded by Keras ({type(error).__name__}: {first[:300]})") from error


def savedmodel_classifier(folder: Path, *, input_shape: tuple[int, ...]) -> Any:
    """A SavedModel folder as a Keras model of ``input_shape`` images (its ``serve`` or ``serving_default``
    endpoint through :class:`keras.layers.TFSMLayer`), its input gradient checked (:func:`check_gradient`)."""
    import keras

    layer = None
    errors = []
    for endpoint in ("serve", "serving_default"):
        try:
            layer = keras.layers.TFSMLayer(str(folder), call_endpoint=endpoint, name="savedmodel")
            break
        except Exception as error:  # no such endpoint, an unreadable graph
            errors.append(f"{endpoint}: {type(error).__name__}")
    convert = (f"it has no usable serving function ({'; '.join(errors)}); re-save it from the code that built it as "
               "a Keras file (`model.save(\"model.keras\")`) or with `model.export(folder)`")
    if layer is None:
        raise UserModelError(f"{folder} is a SavedModel, but {convert}")
    inputs = keras.Input(shape=input_shape, name="image")
    try:
        outputs = layer(inputs)
    except Exception as error:
        raise UserModelError(f"{folder}: its serving function does not take (N, {', '.join(map(str, input_shape))}) "
                             f"float32 images ({type(error).__name__}); {convert.split('; ', 1)[-1]}") from None
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise UserModelError(f"{folder}: its serving function returns several outputs {sorted(outputs)}; export "
                                 "a classifier of one logits output")
        outputs = next(iter(outputs.values()))
    model = keras.Model(inputs, outputs, name=folder.name.replace(" ", "_") or "savedmodel")
    check_gradient(model, input_shape, where=str(folder))
    return model


def check_gradient(model: Any, input_shape: tuple[int, ...], *, where: str, probes: int = 3, seed: int = 0) -> float:
    """The input gradient of a random direction of the logits, ``∇(w · f(x))``, against central finite differences
    along random directions ``d`` in the input, at ``probes`` random inputs in [0.25, 0.75]: a directional derivative
    ``(w·f(x + hd) − w·f(x − hd)) / 2h`` against ``∇ · d``. Returns the largest relative error.

    Raises:
        UserModelError: the gradient is missing or off by more than :data:`GRADIENT_TOLERANCE` (relative).
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = rng.uniform(0.25, 0.75, size=(probes, *input_shape)).astype(np.float32)
    outputs = np.asarray(model(x, training=False))
    w = rng.standard_normal(outputs.shape[1:]).astype(np.float32)
    d = rng.choice([-1.0, 1.0], size=x.shape).astype(np.float32)
    x_t = tf.constant(x)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x_t)
        value = tf.reduce_sum(tf.cast(model(x_t, training=False), tf.float32) * w)
    gradient = tape.gradient(value, x_t)
    if gradient is None:
        raise UserModelError(f"{where}: the model's output has no gradient with respect to its input (a graph "
                             "without gradients); re-save it from the code that built it as a Keras file "
                             "(`model.save(\"model.keras\")`)")
    analytic = np.sum(np.asarray(gradient, dtype=np.float64) * d, axis=tuple(range(1, x.ndim)))

    def along(sign: float) -> np.ndarray:
        moved = (x.astype(np.float64) + sign * GRADIENT_STEP * d).astype(np.float32)
        return np.asarray(model(moved, training=False), dtype=np.float64) @ w.astype(np.float64)

    numeric = (along(1.0) - along(-1.0)) / (2 * GRADIENT_STEP)
    error = float(np.max(np.abs(analytic - numeric) / np.maximum(np.abs(numeric), 1e-3)))
    if not np.isfinite(error) or error > GRADIENT_TOLERANCE:
        raise UserModelError(f"{where}: the model's input gradient disagrees with finite differences (largest "
                             f"relative error {error:.3g} > {GRADIENT_TOLERANCE:g}); gradient attacks would follow a "
                             "wrong direction: re-save it from the code that built it as a Keras file")
    return error


def ensure_global_seed() -> None:
    """A global TensorFlow seed, where none is set: with deterministic kernels on, a random op without a seed of its
    own (``tf.random.normal`` in a user's layer) is refused unless one is; with it, such an op loads and runs (a
    different draw each call). The seed set is TensorFlow's own default graph seed, the one an op with a seed of its
    own is paired with when no global seed is set: such ops draw what they drew before."""
    import tensorflow as tf
    from tensorflow.python.eager import context
    from tensorflow.python.framework import random_seed

    if context.global_seed() is None:
        tf.random.set_seed(random_seed.DEFAULT_GRAPH_SEED)


def pack_model(path: Path) -> tuple[str, bytes]:
    """A model file's (or SavedModel folder's) name and bytes, to send to another process: a folder as a zip of its
    files. :func:`unpack_model` writes it back."""
    import io

    if path.is_file():
        return path.name, path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(path).as_posix())
    return path.name + "/", buffer.getvalue()


def unpack_model(name: str, content: bytes, folder: Path) -> Path:
    """Write what :func:`pack_model` packed into ``folder``; returns the model file's (or folder's) path there."""
    import io

    if not name.endswith("/"):
        (folder / name).write_bytes(content)
        return folder / name
    target = folder / name.rstrip("/")
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        archive.extractall(target)
    return target
