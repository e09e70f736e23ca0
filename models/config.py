"""Model configurations: what ``advsweep train`` builds, and the identifier of the trained result."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

MODEL_KINDS: tuple[str, ...] = ("vgg16", "small_cnn")
CUTS: tuple[str, ...] = ("block3_pool", "block4_pool", "block5_pool")
RESIZES: tuple[str, ...] = ("pad", "bilinear")
HEADS: tuple[str, ...] = ("linear", "mlp")
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 224
GRADIENT_PATHS: tuple[str, ...] = ("fast", "plain")  # custom backward passes through a frozen base, or the plain tape


def check_gradient_path(gradient: Any) -> str:
    """``gradient`` must be ``"fast"`` (custom backward passes) or ``"plain"`` (``tf.GradientTape``)."""
    if gradient not in GRADIENT_PATHS:
        raise ValueError(f"`gradient` must be one of {list(GRADIENT_PATHS)}. Received: gradient={gradient!r}")
    return str(gradient)


def check_vgg16_options(
    *,
    input_size: int,
    resize: str,
    cut: str,
    head: str,
    hidden_units: Sequence[int],
    dropout: float,
) -> None:
    """Raise ``ValueError`` naming the first invalid option of :func:`build_vgg16_classifier`."""
    if isinstance(input_size, bool) or not isinstance(input_size, int) or not (
        MIN_INPUT_SIZE <= input_size <= MAX_INPUT_SIZE
    ):
        raise ValueError(
            f"`input_size` must be an integer from {MIN_INPUT_SIZE} (Keras' minimum for VGG16) to "
            f"{MAX_INPUT_SIZE}. Received: input_size={input_size!r}"
        )
    if resize not in RESIZES:
        raise ValueError(f"`resize` must be one of {list(RESIZES)}. Received: resize={resize!r}")
    if cut not in CUTS:
        raise ValueError(f"`cut` must be one of {list(CUTS)}. Received: cut={cut!r}")
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {list(HEADS)}. Received: head={head!r}")
    if head == "mlp" and (
        isinstance(hidden_units, (str, bytes))
        or len(hidden_units) == 0
        or not all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in hidden_units)
    ):
        raise ValueError(
            "`hidden_units` must be a non-empty list of positive integers for head='mlp'. "
            f"Received: hidden_units={hidden_units!r}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be a number in [0, 1). Received: dropout={dropout!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that determines a trained model, so that equal configs give equal models.

    Attributes:
        kind: ``"vgg16"`` (frozen ImageNet base + trained head) or ``"small_cnn"`` (end to end).
        input_size: VGG16 only: side of the square image fed to the base (32 to 224).
        resize: VGG16 only: ``"pad"`` or ``"bilinear"``.
        cut: VGG16 only: last base layer, ``"block3_pool"``, ``"block4_pool"`` or ``"block5_pool"``.
        head: VGG16 only: ``"linear"`` or ``"mlp"``.
        hidden_units: VGG16 MLP head widths.
        dropout: VGG16 MLP head dropout rate in [0, 1).
        feature_scaling: VGG16 only: standardise base features before the head.
        temperature: softmax temperature of the training loss, ``CE(softmax(logits / T), y)`` (source
            tutorial 004 uses 0.6); the trained model returns its raw logits, which the attacks use.
        epochs: maximum training epochs; the weights of the best validation epoch are kept.
        batch_size: training batch size.
        learning_rate: Adam learning rate.
        patience: epochs without validation improvement before training stops early.
        validation_examples: examples carved from the training set (seeded) for validation.
        train_examples: use only this many of the remaining training examples (``None``: all).
        augment_shift: small CNN only: each training image is shifted by up to this many pixels
            (uniform, zero fill) each epoch; 0 turns augmentation off. (The VGG16 head trains on
            cached features of the unshifted images.)
        seed: seeds the split, the initialisation and the batch order.
    """

    kind: str = "vgg16"
    input_size: int = 32
    resize: str = "pad"
    cut: str = "block4_pool"
    head: str = "linear"
    hidden_units: tuple[int, ...] = (512,)
    dropout: float = 0.0
    feature_scaling: bool = True
    temperature: float = 1.0
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    patience: int = 5
    validation_examples: int = 5000
    train_examples: int | None = None
    augment_shift: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"`kind` must be one of {list(MODEL_KINDS)}. Received: kind={self.kind!r}")
        object.__setattr__(self, "hidden_units", tuple(self.hidden_units))
        if self.kind == "vgg16":
            check_vgg16_options(
                input_size=self.input_size, resize=self.resize, cut=self.cut, head=self.head,
                hidden_units=self.hidden_units, dropout=self.dropout,
            )  # fmt: skip
        _check_positive_int("epochs", self.epochs)
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("patience", self.patience)
        _check_positive_int("validation_examples", self.validation_examples, maximum=30000)
        if self.train_examples is not None:
            _check_positive_int("train_examples", self.train_examples, maximum=60000 - self.validation_examples)
        if isinstance(self.augment_shift, bool) or not isinstance(self.augment_shift, int) or not (
            0 <= self.augment_shift <= 6
        ):
            raise ValueError(f"`augment_shift` must be an integer from 0 to 6. Received: {self.augment_shift!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer. Received: seed={self.seed!r}")
        for name in ("learning_rate", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
        if not isinstance(self.feature_scaling, bool):
            raise ValueError(f"`feature_scaling` must be true or false. Received: {self.feature_scaling!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Build from a TOML/JSON table, refusing unknown keys by name."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        values = dataclasses.asdict(self)
        values["hidden_units"] = list(self.hidden_units)
        return values

    def relevant(self) -> dict[str, Any]:
        """The options that matter for this kind (VGG16-only options dropped for the small CNN)."""
        values = self.to_dict()
        if self.kind == "vgg16":
            values.pop("augment_shift")
        if self.kind == "small_cnn":
            for name in ("input_size", "resize", "cut", "head", "hidden_units", "dropout", "feature_scaling"):
                values.pop(name)
        return values

    @property
    def model_id(self) -> str:
        """``<kind>-<first 10 hex of sha256 of the relevant options>``: the trained model's folder name."""
        digest = hashlib.sha256(json.dumps(self.relevant(), sort_keys=True).encode()).hexdigest()
        return f"{self.kind}-{digest[:10]}"


def _check_positive_int(name: str, value: Any, *, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (maximum is not None and value > maximum):
        allowed = f"an integer from 1 to {maximum}" if maximum is not None else "a positive integer"
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")
