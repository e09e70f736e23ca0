"""Train a model of the harness, seeded, and save it with its metrics, training curves and TensorBoard logs.

For the frozen VGG16 the base's features are computed once per (input size, resize, cut, assets)
and cached on disk; the head trains on the cache, so a second head reuses the first's features.
Adversarial training (``config.adversarial``) is :func:`advsweep.models.adversarial.train_adversarially`; for the
frozen VGG16 it trains the head on adversarial images crafted through the frozen base.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.assets import Resolved, cache_dir, load_mnist, load_vgg16_weights
from advsweep.assets.files import umask_mode, write_atomic
from advsweep.models.adversarial import AdversarialResult, train_adversarially
from advsweep.models.common import model_function
from advsweep.models.config import CNN_KINDS, ModelConfig
from advsweep.models.madry_cnn import build_madry_cnn
from advsweep.models.small_cnn import build_small_cnn
from advsweep.models.trades_cnn import build_trades_cnn
from advsweep.models.wong_cnn import build_wong_cnn
from advsweep.models.vgg16 import build_vgg16_classifier, feature_extractor

# (history with an `epoch` column, file stem without suffix, title) → the files written
DrawCurves = Callable[[Any, Path, str], Any]

logger = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 1
FEATURE_BATCH = 256
SPREAD_FLOOR = 0.1  # adversarial training of the frozen VGG16: no feature is divided by less than 10% of the median spread


@dataclasses.dataclass
class Split:
    """MNIST split for training: float32 images (N, 28, 28, 1) in [0, 1] and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    train_index: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_index: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def to_float_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) in [0, 255] → float32 (N, 28, 28, 1) in [0, 1]."""
    return (np.asarray(images, dtype=np.float32) / 255.0)[..., None]


def split_indices(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) indices into MNIST's 60000 training images."""
    order = np.random.default_rng(config.seed).permutation(60000)
    val_index = np.sort(order[: config.validation_examples])
    train_index = order[config.validation_examples:]
    if config.train_examples is not None:
        train_index = train_index[: config.train_examples]
    return np.sort(train_index), val_index


def make_split(config: ModelConfig, mnist: tuple[np.ndarray, ...]) -> Split:
    x_train, y_train, x_test, y_test = mnist
    train_index, val_index = split_indices(config)
    return Split(
        x_train=to_float_images(x_train[train_index]), y_train=y_train[train_index].astype(np.int64),
        train_index=train_index,
        x_val=to_float_images(x_train[val_index]), y_val=y_train[val_index].astype(np.int64), val_index=val_index,
        x_test=to_float_images(x_test), y_test=y_test.astype(np.int64),
    )  # fmt: skip


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras, and ask TensorFlow for deterministic kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------------------------
# the VGG16 feature cache


def feature_cache_key(config: ModelConfig, mnist: Resolved, weights: Resolved) -> str:
    """Features depend on the input pipeline, the cut and the two assets, nothing else."""
    identity = {
        "version": FEATURE_CACHE_VERSION,
        "input_size": config.input_size,
        "resize": config.resize,
        "cut": config.cut,
        "mnist": mnist.content_sha256,
        "vgg16": weights.content_sha256,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{config.input_size}{config.resize}-{config.cut}-{digest}"


def compute_features(extractor: keras.Model, images_uint8: np.ndarray, *, batch_size: int = FEATURE_BATCH,
                     description: str = "features") -> np.ndarray:
    """Run the frozen base over uint8 MNIST images (N, 28, 28) in batches; float32 (N, F)."""
    from tqdm.auto import tqdm

    forward = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    num_features = int(np.prod(extractor.output_shape[1:]))
    out = np.empty((len(images_uint8), num_features), dtype=np.float32)
    for start in tqdm(range(0, len(images_uint8), batch_size), desc=description, unit="batch",
                      disable=not logger.isEnabledFor(logging.INFO), leave=False):
        batch = to_float_images(images_uint8[start:start + batch_size])
        out[start:start + len(batch)] = forward(tf.constant(batch)).numpy()
    return out


def cached_features(model: keras.Model, config: ModelConfig, mnist_arrays: tuple[np.ndarray, ...],
                    mnist: Resolved, weights: Resolved, *, train_needed: np.ndarray | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Base features of the training images in ``train_needed`` (default: all 60000) and of all 10000 test
    images, from the cache or computed once.

    The training features live in one ``(60000, F)`` array on disk with a mask of the rows computed so
    far, so a model trained on part of the training set computes only that part, and a later one reuses
    it. Rows are flushed before the mask that vouches for them is (atomically) rewritten.

    Returns:
        ``(train_features (60000, F), test_features (10000, F), info)``: rows of ``train_features``
        outside ``train_needed`` may be unset. ``info`` says whether the cache was hit, where it is and
        how long computing took.
    """
    folder = cache_dir() / "features" / feature_cache_key(config, mnist, weights)
    folder.mkdir(parents=True, exist_ok=True)
    test_path = folder / "test.npy"
    partial_path, mask_path = folder / "train_partial.npy", folder / "train_mask.npy"
    x_train, _, x_test, _ = mnist_arrays
    needed = np.arange(len(x_train)) if train_needed is None else np.unique(np.asarray(train_needed))
    extractor = feature_extractor(model)
    num_features = int(np.prod(extractor.output_shape[1:]))
    started = time.perf_counter()
    computed = 0

    mask = np.zeros(len(x_train), dtype=bool)
    train: np.memmap | None = None
    if partial_path.exists() and mask_path.exists():
        try:
            train = np.lib.format.open_memmap(partial_path, mode="r+")
            mask = np.load(mask_path, allow_pickle=False)
            if train.shape != (len(x_train), num_features) or mask.shape != (len(x_train),):
                train = None
        except (ValueError, OSError) as error:
            logger.warning("features: the cache %s is unreadable (%s); computing it again", folder, error)
            train = None
    if train is None:
        mask = np.zeros(len(x_train), dtype=bool)
        train = np.lib.format.open_memmap(partial_path, mode="w+", dtype=np.float32,
                                          shape=(len(x_train), num_features))
        _save_atomic(mask_path, mask)
    missing = needed[~mask[needed]]
    if len(missing):
        logger.info("features: computing the frozen base's features of %d training images (cached in %s)",
                    len(missing), folder)
        train[missing] = compute_features(extractor, x_train[missing], description="features (train)")
        train.flush()
        mask[missing] = True
        _save_atomic(mask_path, mask)
        computed += len(missing)

    test = None
    if test_path.exists():
        try:
            test = np.load(test_path, allow_pickle=False)
            if test.shape != (len(x_test), num_features):
                test = None
        except (ValueError, OSError):
            test = None
    if test is None:
        test = compute_features(extractor, x_test, description="features (test)")
        _save_atomic(test_path, test)
        computed += len(x_test)
    seconds = time.perf_counter() - started if computed else 0.0
    info = {"cache": "hit" if computed == 0 else "miss", "path": str(folder), "seconds": seconds,
            "images_computed": computed}
    if computed == 0:
        logger.info("features: reusing the cache %s", folder)
    return train, test, info


def floor_feature_spread(scaling: keras.layers.Normalization, *, fraction: float) -> int:
    """Raise every feature's variance in an adapted ``Normalization`` layer to at least ``(fraction · median
    standard deviation)²``; returns how many were raised.

    On clean MNIST, 7.5% of the frozen VGG16's 2048 ``block4_pool`` features have a spread below 10⁻³ (most exactly
    0: they never fire on a clean digit), and Keras divides such a feature by its floor of 10⁻⁷. A perturbation that
    makes one fire reaches the head multiplied by 10⁷: adversarial training of the head started at a loss of 10⁸.
    The floor keeps those features' scale at that of the informative ones.
    """
    variance = np.asarray(scaling.adapt_variance)
    floor = (fraction * float(np.median(np.sqrt(variance)))) ** 2
    raised = int(np.sum(variance < floor))
    scaling.adapt_variance.assign(np.maximum(variance, floor).astype(variance.dtype))
    scaling.finalize_state()
    return raised


def _save_atomic(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda temporary: np.save(temporary, array))


# --------------------------------------------------------------------------------------------
# training


def tempered_cross_entropy(temperature: float) -> Any:
    """The training loss ``CE(softmax(logits / T), y)``: softmax cross-entropy at temperature ``T``.

    ``T < 1`` sharpens the softmax the loss sees (source tutorial 004 trains with ``T = 0.6``); ``T = 1``
    is the plain cross-entropy. The trained model still returns its raw logits ``z``, not ``z / T``: the
    attacks and the records see the network's own outputs, and :func:`advsweep.models.probability_model` gives the
    tempered probabilities.
    """
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if temperature == 1.0:
        return plain
    scale = 1.0 / float(temperature)

    def loss(labels: Any, logits: Any) -> Any:
        return plain(labels, logits * scale)

    loss.__name__ = f"cross_entropy_at_temperature_{temperature:g}"
    return loss


def _compile(model: keras.Model, config: ModelConfig) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=tempered_cross_entropy(config.temperature),
        metrics=["accuracy"],
    )


def shifted_batches(x: np.ndarray, y: np.ndarray, *, batch_size: int, shift: int, seed: int) -> tf.data.Dataset:
    """A shuffled, seeded dataset of images shifted by up to ``shift`` pixels (zero fill), new each epoch."""
    translate = keras.layers.RandomTranslation(shift / 28.0, shift / 28.0, fill_mode="constant", fill_value=0.0,
                                               interpolation="nearest", seed=seed)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(lambda images, labels: (translate(images, training=True), labels))


def _fit(model: keras.Model, config: ModelConfig, x: np.ndarray, y: np.ndarray,
         x_val: np.ndarray, y_val: np.ndarray, *, augment_shift: int = 0,
         log_dir: Path | None = None) -> dict[str, list[float]]:
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.patience,
                                         restore_best_weights=True, mode="max")
    progress = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logger.info(
        "epoch %d/%d: loss %.4f, accuracy %.4f, validation accuracy %.4f", epoch + 1, config.epochs,
        logs["loss"], logs["accuracy"], logs["val_accuracy"]))
    callbacks: list[keras.callbacks.Callback] = [stop, progress]
    if log_dir is not None:  # train/ and validation/ event files: loss and accuracy per epoch
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False,
                                                     update_freq="epoch"))
    if augment_shift:
        data = shifted_batches(x, y, batch_size=config.batch_size, shift=augment_shift, seed=config.seed)
        history = model.fit(data, validation_data=(x_val, y_val), epochs=config.epochs, shuffle=False,
                            callbacks=callbacks, verbose=0)
    else:
        history = model.fit(x, y, validation_data=(x_val, y_val), epochs=config.epochs,
                            batch_size=config.batch_size, shuffle=True, callbacks=callbacks, verbose=0)
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def evaluate_logits(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    predictions = np.argmax(logits, axis=1)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "per_class_accuracy": {str(c): float(per_class[c]) for c in range(10)},
        "confusion_matrix": confusion.tolist(),
        "examples": int(len(labels)),
    }


@dataclasses.dataclass
class TrainedModel:
    """A trained model and the folder it was saved in."""

    model: keras.Model
    folder: Path
    metrics: dict[str, Any]


def train_model(config: ModelConfig, output_root: Path, *, mnist_path: str | None = None,
                weights_path: str | None = None, draw_curves: DrawCurves | None = None,
                export_savedmodel: bool = False) -> TrainedModel:
    """Train ``config`` and save ``model.keras``, ``metrics.json``, ``history.csv``, the curves and TensorBoard logs.

    The folder ``output_root / config.model_id`` is written under a temporary name and renamed into
    place at the end, so an interrupted training leaves no half-written model. ``draw_curves(history,
    stem, title)`` draws the training curves into that folder; the experiments layer passes its plotting
    (:func:`advsweep.experiments.reporting.plots.plot_training_curves`), which the model layer does not import.
    ``export_savedmodel`` also writes ``savedmodel/``, a TensorFlow SavedModel for serving (:func:`export_savedmodel`).

    Returns:
        The trained model, its folder and its metrics (clean test accuracy on all 10000 test images; for adversarial
        training also the per-epoch held-out clean and PGD accuracy, the kept epoch and any collapse).
    """
    started = time.perf_counter()
    mnist_arrays, mnist = load_mnist(mnist_path)
    split = make_split(config, mnist_arrays)
    seed_everything(config.seed)
    assets: dict[str, Any] = {"mnist": mnist.to_dict()}
    output_root.mkdir(parents=True, exist_ok=True)
    for leftover in output_root.glob(f".{config.model_id}.*"):  # staging of a training killed before it finished
        shutil.rmtree(leftover, ignore_errors=True)
    log_dir = Path(tempfile.mkdtemp(dir=output_root, prefix=f".{config.model_id}.tensorboard."))
    try:
        fitted = (_fit_vgg16(config, split, mnist_arrays, mnist, weights_path, assets, log_dir)
                  if config.kind == "vgg16" else _fit_network(config, split, log_dir))
    except BaseException:
        shutil.rmtree(log_dir, ignore_errors=True)
        raise
    metrics = _training_metrics(config, split, fitted, assets, time.perf_counter() - started)
    folder = save_trained(fitted.model, config, metrics, fitted.history, output_root, draw_curves=draw_curves,
                          log_dir=log_dir, export=export_savedmodel)
    logger.info("%s: clean test accuracy %.4f; saved in %s", config.model_id, metrics["clean_test_accuracy"], folder)
    return TrainedModel(model=fitted.model, folder=folder, metrics=metrics)


@dataclasses.dataclass
class _Fitted:
    """A model just trained: its per-epoch history, the adversarial training's outcome (``None`` for natural
    training), its logits on the test images, the seconds its fit took and the feature cache's record (VGG16)."""

    model: keras.Model
    history: dict[str, list[float]]
    adversarial: AdversarialResult | None
    test_logits: np.ndarray
    fit_seconds: float
    feature_info: dict[str, Any] | None = None


def _fit_vgg16(config: ModelConfig, split: Split, mnist_arrays: Any, mnist: Any, weights_path: str | None,
               assets: dict[str, Any], log_dir: Path) -> _Fitted:
    """The VGG16's head trained on the frozen base's cached features (naturally), or on adversarial images
    crafted through the frozen base (its fast input gradient)."""
    weights, weights_resolved = load_vgg16_weights(weights_path)
    assets["vgg16_imagenet_notop"] = weights_resolved.to_dict()
    model = build_model(config, weights)
    train_all, test_features, feature_info = cached_features(
        model, config, mnist_arrays, mnist, weights_resolved,
        train_needed=np.concatenate([split.train_index, split.val_index]))
    head = model.get_layer("head")
    f_train, f_val = np.asarray(train_all[split.train_index]), np.asarray(train_all[split.val_index])
    head_started = time.perf_counter()
    seed_everything(config.seed)
    if config.feature_scaling:
        scaling = head.get_layer("feature_scaling")
        scaling.adapt(f_train)
        if config.adversarial is not None:
            floor_feature_spread(scaling, fraction=SPREAD_FLOOR)
    adversarial = None
    if config.adversarial is None:
        _compile(head, config)
        history = _fit(head, config, f_train, split.y_train, f_val, split.y_val, log_dir=log_dir)
    else:
        adversarial = _train_adversarially(model, config, split, log_dir, attack_forward=model_function(model, "fast"))
        history = adversarial.history
    fit_seconds = time.perf_counter() - head_started
    return _Fitted(model, history, adversarial, head.predict(test_features, batch_size=1024, verbose=0), fit_seconds,
                   feature_info)


def _fit_network(config: ModelConfig, split: Split, log_dir: Path) -> _Fitted:
    """A model trained end to end on the images, naturally (with the kind's augmentation) or adversarially."""
    model = build_model(config)
    started = time.perf_counter()
    adversarial = None
    if config.adversarial is None:
        _compile(model, config)
        history = _fit(model, config, split.x_train, split.y_train, split.x_val, split.y_val,
                       augment_shift=_augment_shift(config), log_dir=log_dir)
    else:
        adversarial = _train_adversarially(model, config, split, log_dir)
        history = adversarial.history
    fit_seconds = time.perf_counter() - started
    return _Fitted(model, history, adversarial, model.predict(split.x_test, batch_size=1024, verbose=0), fit_seconds)


def _training_metrics(config: ModelConfig, split: Split, fitted: _Fitted, assets: dict[str, Any],
                      seconds: float) -> dict[str, Any]:
    """``metrics.json`` of a training: clean test accuracy, the kept epoch, the data, seeds, assets, versions and
    machine, and for adversarial training its selection and any collapse; marks the kept (and collapsed) epoch in
    the history."""
    history, adversarial, feature_info = fitted.history, fitted.adversarial, fitted.feature_info
    test_metrics = evaluate_logits(fitted.test_logits, split.y_test)
    if adversarial is None:
        best_epoch = int(np.argmax(history["val_accuracy"]))
    else:
        best_epoch = adversarial.best_epoch - 1
        collapsed_at = adversarial.collapse.epoch - 1 if adversarial.collapse else -1
        history["collapsed"] = [float(epoch == collapsed_at) for epoch in range(len(history["loss"]))]
    history["kept"] = [float(epoch == best_epoch) for epoch in range(len(history["loss"]))]
    metrics: dict[str, Any] = {
        "model_id": config.model_id,
        "config": config.to_dict(),
        "clean_test_accuracy": test_metrics["accuracy"],
        "test": test_metrics,
        "validation_accuracy": history["val_accuracy"][best_epoch],
        "best_epoch": best_epoch + 1,
        "epochs_run": len(history["val_accuracy"]),
        "train_examples": int(len(split.train_index)),
        "validation_examples": int(len(split.val_index)),
        "seed": config.seed,
        "features": feature_info,
        "training_seconds": {"total": seconds, "fit": fitted.fit_seconds,
                             "features": feature_info["seconds"] if feature_info else 0.0},
        "assets": assets,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()},
    }
    if adversarial is not None and config.adversarial is not None:
        metrics["adversarial"] = {
            "method": config.adversarial.method,
            "label": config.adversarial.label,
            "options": config.adversarial.to_dict(),
            "selected_by": f"held-out PGD-{config.adversarial.eval_steps} (margin) accuracy at ε = "
                           f"{config.adversarial.eps:g} on {min(config.adversarial.eval_examples, len(split.val_index))}"
                           f" validation images, after each epoch",
            "held_out_robust_accuracy": history["val_robust_accuracy"][best_epoch],
            "collapse": adversarial.collapse.to_dict() if adversarial.collapse else None,
            "stopped_early": adversarial.stopped_early,
        }
    return metrics


def build_model(config: ModelConfig, weights: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> keras.Model:
    """The untrained model of ``config``'s kind; the frozen VGG16 takes the ImageNet conv ``weights``."""
    if config.kind == "small_cnn":
        return build_small_cnn()
    if config.kind == "madry_cnn":
        return build_madry_cnn()
    if config.kind == "trades_cnn":
        return build_trades_cnn()
    if config.kind == "wong_cnn":
        return build_wong_cnn()
    if config.kind == "vgg16" and weights is None:
        raise ValueError("the frozen VGG16 needs the ImageNet weights (advsweep.assets.load_vgg16_weights)")
    scratch = config.kind == "vgg16_scratch"
    model = build_vgg16_classifier(
        None if scratch else weights, input_size=config.input_size, resize=config.resize, cut=config.cut,
        head=config.head, hidden_units=config.hidden_units, dropout=config.dropout,
        feature_scaling=config.feature_scaling and not scratch,
    )  # fmt: skip
    if scratch:
        model.get_layer("vgg16_base").trainable = True  # random initialisation (Keras' VGG16's), every layer trains
    return model


def _augment_shift(config: ModelConfig) -> int:
    return config.augment_shift if config.kind in CNN_KINDS else 0


def _train_adversarially(model: keras.Model, config: ModelConfig, split: Split, log_dir: Path,
                         attack_forward: Any = None) -> AdversarialResult:
    assert config.adversarial is not None
    shift = _augment_shift(config)
    batches = None
    if shift:
        dataset = shifted_batches(split.x_train, split.y_train, batch_size=config.batch_size, shift=shift,
                                  seed=config.seed)
        batches = lambda epoch: ((images.numpy(), labels.numpy()) for images, labels in dataset)  # noqa: E731
    return train_adversarially(
        model, config.adversarial, x=split.x_train, y=split.y_train, x_val=split.x_val, y_val=split.y_val,
        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        patience=config.patience, seed=config.seed, attack_forward=attack_forward, batches=batches, log_dir=log_dir)


def export_savedmodel(model: keras.Model, folder: Path) -> Path:
    """Write ``model`` as a TensorFlow SavedModel in ``folder`` for serving (TF Serving, ``tf.saved_model.load``).

    The endpoint ``serve`` maps float32 ``(N, 28, 28, 1)`` images in [0, 1] to logits ``(N, 10)``, the harness'
    contract. Written under a temporary name and renamed into place.
    """
    folder = Path(folder)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        shutil.rmtree(staging)
        model.export(str(staging), format="tf_saved_model", verbose=False)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def save_trained(model: keras.Model, config: ModelConfig, metrics: dict[str, Any],
                 history: dict[str, list[float]], output_root: Path, *, draw_curves: DrawCurves | None = None,
                 log_dir: Path | None = None, export: bool = False) -> Path:
    """Write a trained model's folder atomically (temporary folder, then rename); ``log_dir`` (TensorBoard's event
    files) moves in as ``tensorboard/``, and ``export`` adds ``savedmodel/``."""
    output_root.mkdir(parents=True, exist_ok=True)
    final = output_root / config.model_id
    staging = Path(tempfile.mkdtemp(dir=output_root, prefix=f".{config.model_id}."))
    try:
        os.chmod(staging, umask_mode(0o777))  # mkdtemp makes it 0700
        model.save(staging / "model.keras")
        (staging / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        import pandas as pd

        frame = pd.DataFrame(history)
        frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
        frame.to_csv(staging / "history.csv", index=False)
        if draw_curves is not None:
            title = config.model_id + (f": {config.adversarial.label}" if config.adversarial else "")
            draw_curves(frame, staging / "training_curves", title)
        if log_dir is not None:
            os.replace(log_dir, staging / "tensorboard")
        if export:
            export_savedmodel(model, staging / "savedmodel")
        for written in staging.iterdir():
            if written.is_file():
                os.chmod(written, umask_mode())
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)
        raise
    return final


def load_trained(folder: Path) -> tuple[keras.Model, ModelConfig, dict[str, Any]]:
    """Load a folder written by :func:`train_model`."""
    folder = Path(folder)
    model_path = folder / "model.keras"
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path} does not exist; train it with `advsweep train` first")
    config = ModelConfig.from_mapping(json.loads((folder / "config.json").read_text()))
    metrics = json.loads((folder / "metrics.json").read_text())
    model = keras.saving.load_model(model_path, compile=False)
    return model, config, metrics
