"""Model configurations: what ``advsweep train`` builds, and the identifier of the trained result."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from advsweep.assets.validate import Invalid, flag, integer, number, one_of

MODEL_KINDS: tuple[str, ...] = ("vgg16", "small_cnn")
CUTS: tuple[str, ...] = ("block3_pool", "block4_pool", "block5_pool")
RESIZES: tuple[str, ...] = ("pad", "bilinear")
HEADS: tuple[str, ...] = ("linear", "mlp")
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 224
GRADIENT_PATHS: tuple[str, ...] = ("fast", "plain")  # custom backward passes through a frozen base, or the plain tape


def check_gradient_path(gradient: Any) -> str:
    """``gradient`` must be ``"fast"`` (custom backward passes) or ``"plain"`` (``tf.GradientTape``)."""
    return one_of("gradient", gradient, GRADIENT_PATHS)


def check_vgg16_options(
    *,
    input_size: int,
    resize: str,
    cut: str,
    head: str,
    hidden_units: Sequence[int],
    dropout: float,
) -> None:
    """Raise :class:`~advsweep.assets.validate.Invalid` naming the first invalid option of
    :func:`build_vgg16_classifier`."""
    try:
        integer("input_size", input_size, minimum=MIN_INPUT_SIZE, maximum=MAX_INPUT_SIZE)
    except Invalid as error:
        raise Invalid("input_size", error.requirement, input_size, hint="Keras' minimum for VGG16 is 32") from None
    one_of("resize", resize, RESIZES)
    one_of("cut", cut, CUTS)
    one_of("head", head, HEADS)
    if head == "mlp":
        if isinstance(hidden_units, (str, bytes)) or len(hidden_units) == 0:
            raise Invalid("hidden_units", "a non-empty list of positive integers for head='mlp'", hidden_units)
        for units in hidden_units:
            integer("hidden_units", units, minimum=1)
    number("dropout", dropout, minimum=0.0, below=1.0)


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
        one_of("kind", self.kind, MODEL_KINDS)
        object.__setattr__(self, "hidden_units", tuple(self.hidden_units))
        if self.kind == "vgg16":
            check_vgg16_options(
                input_size=self.input_size, resize=self.resize, cut=self.cut, head=self.head,
                hidden_units=self.hidden_units, dropout=self.dropout,
            )  # fmt: skip
        for name in ("epochs", "batch_size", "patience"):
            integer(name, getattr(self, name), minimum=1)
        integer("validation_examples", self.validation_examples, minimum=1, maximum=30000)
        if self.train_examples is not None:
            integer("train_examples", self.train_examples, minimum=1, maximum=60000 - self.validation_examples)
        integer("augment_shift", self.augment_shift, minimum=0, maximum=6)
        integer("seed", self.seed, minimum=0)
        number("learning_rate", self.learning_rate, above=0.0)
        number("temperature", self.temperature, above=0.0)
        flag("feature_scaling", self.feature_scaling)

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
