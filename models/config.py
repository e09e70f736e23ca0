"""Model configurations: what ``advsweep train`` builds, and the identifier of the trained result."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from advsweep.assets.validate import Invalid, flag, integer, number, one_of

MODEL_KINDS: tuple[str, ...] = ("vgg16", "small_cnn", "madry_cnn", "trades_cnn", "wong_cnn", "vgg16_scratch")
# the MNIST CNNs trained end to end on 28×28 images: the VGG16 options do not apply, shift augmentation does
CNN_KINDS: tuple[str, ...] = ("small_cnn", "madry_cnn", "trades_cnn", "wong_cnn")
VGG16_KINDS: tuple[str, ...] = ("vgg16", "vgg16_scratch")
ADVERSARIAL_METHODS: tuple[str, ...] = ("pgd", "fast", "trades")
SCHEDULES: tuple[str, ...] = ("constant", "decay", "onecycle")
CUTS: tuple[str, ...] = ("block3_pool", "block4_pool", "block5_pool")
RESIZES: tuple[str, ...] = ("pad", "bilinear")
HEADS: tuple[str, ...] = ("linear", "mlp")
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 224
# the faster of the two on this machine (measured: advsweep.attacks.engine.plan), custom backward passes through a frozen
# base, or the plain tape
GRADIENT_PATHS: tuple[str, ...] = ("auto", "fast", "plain")


def check_gradient_path(gradient: Any) -> str:
    """``gradient`` must be ``"auto"`` (the faster path on this machine, measured), ``"fast"`` (custom backward
    passes) or ``"plain"`` (``tf.GradientTape``)."""
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
class AdversarialConfig:
    """Adversarial training: how each training batch is replaced by (or joined with) adversarial inputs.

    Every method attacks the model in L∞ within ``eps`` of each training image and in [0, 1]; step sizes are in
    units of ``eps``. Options that belong to another method are refused; the ones left unset take the method's
    default, and the model id and ``metrics.json`` record the resolved values.

    Attributes:
        method: ``"pgd"``: Madry et al. (ICLR 2018), the cross-entropy's PGD from a uniform random start, the
            training step on its last iterate. ``"fast"``: Wong, Rice & Kolter (ICLR 2020), one FGSM step of
            ``step_size`` from a uniform start of radius ``noise`` (with ``clip_noise = false`` and ``noise = 2``,
            ``step_size = 1``: de Jorge et al.'s N-FGSM, NeurIPS 2022, which avoids fast training's collapse
            without extra cost). ``"trades"``: Zhang et al. (ICML 2019), cross-entropy on the clean input plus
            ``beta`` × KL(clean ‖ adversarial), the adversarial maximising that KL by PGD from a 0.001·N(0, 1) start.
        eps: training budget, L∞ in [0, 1] pixel units.
        steps: PGD/TRADES steps (default 10; Madry et al. used 40 and TRADES 40 on MNIST). Fast training: 1.
        step_size: step in units of ``eps``; default 2.5 / steps for PGD and TRADES, 1.25 for fast training.
        random_start: PGD only: start from a uniform point of the ε-ball (default true, as Madry et al.).
        noise: fast only: radius of the uniform start in units of ``eps`` (default 1).
        clip_noise: fast only: project the start and the step back onto the ε-ball (default true, as Wong et al.;
            N-FGSM does not).
        beta: TRADES only: weight of the robustness term (default 1, TRADES' MNIST setting; 6 on CIFAR-10).
        ramp_epochs: the training ε grows linearly from 0 over this many epochs (per batch), then stays; 0: none.
        schedule: learning rate per batch: ``"constant"``; ``"decay"`` (constant for the first half, then linear
            to 0); ``"onecycle"`` (linear from 0 to the peak at 2/5 of training, then to 0: Wong et al.'s cyclic
            rate). The peak is the model config's ``learning_rate``.
        eval_steps: steps of the held-out PGD (margin loss, random start, step 2.5 ε / steps) measured after each
            epoch on ``eval_examples`` validation images; the epoch with the highest held-out robust accuracy is
            kept (Wong et al.'s early stopping).
        eval_examples: validation images the held-out PGD runs on (at most the validation split).
        collapse_drop: catastrophic overfitting is declared when the held-out robust accuracy falls more than
            this below the best epoch so far, or, at the full training ε, more than ``collapse_gap`` below the
            accuracy on that epoch's own training adversarials. Training then stops and the run says so.
        collapse_gap: see ``collapse_drop``.
    """

    method: str = "pgd"
    eps: float = 0.3
    steps: int | None = None
    step_size: float | None = None
    random_start: bool | None = None
    noise: float | None = None
    clip_noise: bool | None = None
    beta: float | None = None
    ramp_epochs: float = 0.0
    schedule: str = "constant"
    eval_steps: int = 10
    eval_examples: int = 1000
    collapse_drop: float = 0.2
    collapse_gap: float = 0.4

    # the options of one method only; unset ones resolve to these defaults
    METHOD_OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "pgd": ("steps", "step_size", "random_start"),
        "fast": ("step_size", "noise", "clip_noise"),
        "trades": ("steps", "step_size", "beta"),
    }

    def __post_init__(self) -> None:
        method = one_of("adversarial.method", self.method, ADVERSARIAL_METHODS)
        own = self.METHOD_OPTIONS[method]
        for name in ("steps", "step_size", "random_start", "noise", "clip_noise", "beta"):
            if getattr(self, name) is not None and name not in own:
                owners = [m for m, names in self.METHOD_OPTIONS.items() if name in names]
                raise Invalid(f"adversarial.{name}", f"left out: it is an option of {' and '.join(owners)}, not of "
                              f"{method!r}", getattr(self, name))
        number("adversarial.eps", self.eps, above=0.0, maximum=1.0)
        steps = 1 if method == "fast" else integer("adversarial.steps", 10 if self.steps is None else self.steps,
                                                   minimum=1, maximum=1000)
        default_step = 1.25 if method == "fast" else 2.5 / steps
        step_size = number("adversarial.step_size", default_step if self.step_size is None else self.step_size,
                           above=0.0, maximum=10.0)
        resolved: dict[str, Any] = {"steps": steps, "step_size": step_size}
        if method == "pgd":
            resolved["random_start"] = flag("adversarial.random_start",
                                            True if self.random_start is None else self.random_start)
        if method == "fast":
            resolved["noise"] = number("adversarial.noise", 1.0 if self.noise is None else self.noise,
                                       minimum=0.0, maximum=10.0)
            resolved["clip_noise"] = flag("adversarial.clip_noise", True if self.clip_noise is None else self.clip_noise)
        if method == "trades":
            resolved["beta"] = number("adversarial.beta", 1.0 if self.beta is None else self.beta, above=0.0)
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        number("adversarial.ramp_epochs", self.ramp_epochs, minimum=0.0)
        one_of("adversarial.schedule", self.schedule, SCHEDULES)
        integer("adversarial.eval_steps", self.eval_steps, minimum=1, maximum=1000)
        integer("adversarial.eval_examples", self.eval_examples, minimum=1, maximum=30000)
        number("adversarial.collapse_drop", self.collapse_drop, above=0.0, maximum=1.0)
        number("adversarial.collapse_gap", self.collapse_gap, above=0.0, maximum=1.0)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AdversarialConfig:
        """Build from a TOML/JSON table, refusing unknown keys by name."""
        if not isinstance(values, Mapping):
            raise Invalid("adversarial", "a table such as {method = \"pgd\", eps = 0.3}", values)
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown adversarial option(s) {unknown}; allowed: {known}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """The resolved options of this method (another method's options left out)."""
        values = dataclasses.asdict(self)
        for name in ("steps", "step_size", "random_start", "noise", "clip_noise", "beta"):
            if name not in self.METHOD_OPTIONS[self.method]:
                values.pop(name)
        return values

    @property
    def label(self) -> str:
        """A short name for tables and figures, e.g. ``pgd-10 ε=0.3``."""
        if self.method == "pgd":
            name = f"PGD-{self.steps}"
        elif self.method == "fast":
            name = "FGSM-RS" if self.clip_noise else "N-FGSM"
        else:
            name = f"TRADES-{self.steps} β={self.beta:g}"
        return f"{name} ε={self.eps:g}"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that determines a trained model, so that equal configs give equal models.

    Attributes:
        kind: ``"vgg16"`` (frozen ImageNet base + trained head), ``"small_cnn"`` (the source tutorials' CNN, end to
            end), ``"madry_cnn"`` (Madry et al.'s MNIST CNN, end to end), ``"trades_cnn"`` (TRADES' SmallCNN, end to
            end), ``"wong_cnn"`` (Wong et al.'s fast-AT MNIST network, end to end) or ``"vgg16_scratch"`` (the same VGG16
            architecture from a random initialisation, every layer trained: source tutorial 004).
        input_size: VGG16 only: side of the square image fed to the base (32 to 224).
        resize: VGG16 only: ``"pad"`` or ``"bilinear"``.
        cut: VGG16 only: last base layer, ``"block3_pool"``, ``"block4_pool"`` or ``"block5_pool"``.
        head: VGG16 only: ``"linear"`` or ``"mlp"``.
        hidden_units: VGG16 MLP head widths.
        dropout: VGG16 MLP head dropout rate in [0, 1).
        feature_scaling: frozen VGG16 only: standardise base features before the head.
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
        adversarial: adversarial training (:class:`AdversarialConfig`), or ``None`` for natural training. For the
            frozen VGG16 the head trains on adversarial inputs crafted through the frozen base.
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
    adversarial: AdversarialConfig | None = None

    def __post_init__(self) -> None:
        one_of("kind", self.kind, MODEL_KINDS)
        object.__setattr__(self, "hidden_units", tuple(self.hidden_units))
        if self.adversarial is not None and not isinstance(self.adversarial, AdversarialConfig):
            object.__setattr__(self, "adversarial", AdversarialConfig.from_mapping(self.adversarial))
        if self.kind in VGG16_KINDS:
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
        # options that something else voids are refused rather than taken into the model id for nothing
        default = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
        if self.kind in VGG16_KINDS and self.head == "linear":
            voided = {name: getattr(self, name) for name in ("hidden_units", "dropout")
                      if getattr(self, name) != default[name]}
            if voided:
                raise ValueError(f"{' and '.join(voided)} shape the MLP head only: set head='mlp' or leave them out. "
                                 f"Received: head='linear', " + ", ".join(f"{k}={v!r}" for k, v in voided.items()))
        if self.adversarial is not None and self.temperature != default["temperature"]:
            raise ValueError("temperature is the natural training loss's; adversarial training uses the plain "
                             f"cross-entropy (as its papers do): leave temperature out. Received: "
                             f"temperature={self.temperature!r} with adversarial={self.adversarial.method!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Build from a TOML/JSON table, refusing unknown keys by name."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; allowed: {sorted(known)}")
        values = dict(values)
        if values.get("adversarial") is not None:
            values["adversarial"] = AdversarialConfig.from_mapping(values["adversarial"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists; ``adversarial`` its resolved options, or ``None``)."""
        values = dataclasses.asdict(self)
        values["hidden_units"] = list(self.hidden_units)
        values["adversarial"] = self.adversarial.to_dict() if self.adversarial else None
        return values

    def relevant(self) -> dict[str, Any]:
        """The options that matter for this kind (VGG16-only options dropped for the CNNs; ``adversarial`` only
        when set, so that naturally trained models keep the ids they had before adversarial training existed)."""
        values = self.to_dict()
        if values["adversarial"] is None:
            values.pop("adversarial")
        elif values["adversarial"]["schedule"] != "constant":
            # Before 2026-11-30 every schedule ran at its constant peak rate (Keras 3 copied the rate variable once):
            # the models trained then keep their ids, and a schedule that is now applied gets new ones.
            values["adversarial"]["schedule_applied"] = True
        if values.get("adversarial", {}).get("method") == "fast":
            # Before 2026-11-30 fast training clipped its random start to [0, 1] before the gradient; it no longer does
            values["adversarial"]["start_unclipped"] = True
        if self.kind == "vgg16":
            values.pop("augment_shift")
        if self.kind == "vgg16_scratch":
            values.pop("augment_shift")
            values.pop("feature_scaling")
        if self.kind in CNN_KINDS:
            for name in ("input_size", "resize", "cut", "head", "hidden_units", "dropout", "feature_scaling"):
                values.pop(name)
        return values

    @property
    def model_id(self) -> str:
        """``<kind>-<first 10 hex of sha256 of the relevant options>``: the trained model's folder name."""
        digest = hashlib.sha256(json.dumps(self.relevant(), sort_keys=True).encode()).hexdigest()
        return f"{self.kind}-{digest[:10]}"
