"""Sweep configuration: a TOML file, checked completely before any work starts.

A sweep config names the models (a trained model's folder, or a model config that ``advsweep train``
would build), the test examples, the attacks with their hyper-parameters and implementations, one ε
grid per norm, the minimal-perturbation curve and the figures. Every error names the key, the value
and what is allowed (:class:`ConfigError`); ``experiments/configs/quick.toml`` is the annotated example.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from advsweep.assets.datasets import DATASETS, DatasetInfo
from advsweep.assets.validate import Invalid, flag, integer, number, one_of
from advsweep.attacks.engine.spec import (
    ATTACK_SPECS,
    GRADIENT_PATHS,
    IMPLEMENTATIONS,
    L1_ATTACKS,
    L1_NORMS,
    LOSSES,
    attack_parameters,
    check_epsilons,
    check_combination,
    check_parameter,
    implementations_of,
    norms_of,
)
from advsweep.defaults import ATTACK, ESCALATION, MINIMAL, RANDOMIZED, RUN, SWEEP
from advsweep.models.config import ModelConfig

SELECTIONS: tuple[str, ...] = ("balanced", "first")
EXECUTORS: tuple[str, ...] = ("local", "ray")
MAX_CHUNK = 10000
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# parameters the runner sets itself, per attack and chunk
RUNNER_PARAMS = frozenset({"targets", "example_ids", "gradient", "norm"})


class ConfigError(ValueError):
    """A sweep config that cannot run: the message names the key, the value and what is allowed."""


class SweepError(RuntimeError):
    """A sweep cannot start (unloadable model, unusable asset); the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to attack: a trained folder or any ``.keras`` classifier (``path``), or a
    :class:`~advsweep.models.config.ModelConfig` (``train``). ``dataset`` and ``input_range`` are the model's
    metadata: what it was trained on, and the pixel range it expects (the harness feeds it [0, 1] rescaled)."""

    name: str
    path: str | None = None
    train: ModelConfig | None = None
    dataset: str = "mnist"
    input_range: tuple[float, float] = (0.0, 1.0)
    # the code that defines and registers the model's own classes: .py files (absolute paths) or module names
    custom_objects: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"name": self.name, "path": self.path,
                                  "train": self.train.to_dict() if self.train else None, "dataset": self.dataset,
                                  "input_range": list(self.input_range)}
        if self.custom_objects:  # left out when unset, so that the run ids of sweeps without it stay as they were
            values["custom_objects"] = list(self.custom_objects)
        return values


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of the sweep, run by each of ``implementations`` over the ε grid of ``norm``. With a
    ``surrogate`` (a model of the sweep) it is a transfer attack: its adversarials are found on the surrogate and
    evaluated on every other model."""

    label: str
    name: str
    norm: str
    implementations: tuple[str, ...]
    params: Mapping[str, Any]
    surrogate: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "norm": self.norm,
                "implementations": list(self.implementations), "params": dict(self.params),
                **({"surrogate": self.surrogate} if self.surrogate is not None else {})}


@dataclasses.dataclass(frozen=True)
class MinimalSpec:
    """The minimal-perturbation mode (bisection over ε with PGD; l1-APGD in L1) behind the robustness curve. Each
    example's search starts from the smallest grid ε at which any attack of the sweep fooled it."""

    enabled: bool = MINIMAL["enabled"]
    norm: str = MINIMAL["norm"]
    examples: int = MINIMAL["examples"]
    steps: int = MINIMAL["steps"]
    loss: str = MINIMAL["loss"]
    tolerance: float | None = None
    eps_max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EscalationSpec:
    """``[escalation]``: the adaptive attacks a sweep runs on its own where the checks say the gradients lie (EOT for
    a randomized model; BPDA through ``layers``, or the layers found, and Square with ``square_queries`` queries for
    a model whose gradients are zero, NaN or stepped, or that Square breaks where the gradient attacks did not)."""

    enabled: bool = ESCALATION["enabled"]
    layers: tuple[str, ...] = ()
    square_queries: int = ESCALATION["square_queries"]

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "layers": list(self.layers), "square_queries": self.square_queries}


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """The adversarial-example grid: which attack cell, which ε, how many examples."""

    grid_attack: str | None = None
    grid_implementation: str = "own"
    grid_eps: tuple[float, ...] = ()
    grid_examples: int = SWEEP["grid_examples"]

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["grid_eps"] = list(self.grid_eps)
        return values


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """``[run]``: how the units are run, which never changes a record (so it is not part of the run id): in this
    process (``local``), or as Ray tasks on the cluster at ``address`` (``None``: a Ray started for the sweep on this
    machine), each of ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs, retried ``max_retries`` times if its worker
    process dies."""

    executor: str = RUN["executor"]
    address: str | None = None
    cpus_per_task: int = RUN["cpus_per_task"]
    gpus_per_task: float = RUN["gpus_per_task"]
    max_retries: int = RUN["max_retries"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A whole sweep, validated. ``identity()`` is what the run id is a hash of."""

    name: str
    dataset: str
    models: tuple[ModelSpec, ...]
    attacks: tuple[AttackSpec, ...]
    epsilons: Mapping[str, tuple[float, ...]]
    examples: int
    selection: str
    selection_seed: int
    seed: int
    chunk_size: int
    gradient: str
    minimal: MinimalSpec
    figures: FigureSpec
    description: str = ""
    run: RunSpec = RunSpec()  # how, not what: left out of to_dict() and hence of the run id
    dataset_file: DatasetInfo | None = None  # `dataset = { path = … }`: a researcher's own data set file
    # a randomized model's points are judged by the mean of this many draws' probabilities ([randomized] draws)
    draws: int = RANDOMIZED["draws"]
    escalation: EscalationSpec = EscalationSpec()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "dataset": self.dataset if self.dataset_file is None else {
                "path": self.dataset_file.path, "range": list(self.dataset_file.value_range or (0.0, 1.0)),
                "classes": self.dataset_file.classes, "sha256": self.dataset_file.content_sha256},
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "gradient": self.gradient,
            "examples": {"count": self.examples, "selection": self.selection, "seed": self.selection_seed},
            "models": [m.to_dict() for m in self.models],
            "attacks": [a.to_dict() for a in self.attacks],
            "epsilons": {norm: list(grid) for norm, grid in self.epsilons.items()},
            "minimal": self.minimal.to_dict(),
            "figures": self.figures.to_dict(),
            "randomized": {"draws": self.draws},
            "escalation": self.escalation.to_dict(),
        }

    @property
    def data(self) -> DatasetInfo:
        """What the sweep's data set is (shape, classes, test size), without loading it."""
        return self.dataset_file if self.dataset_file is not None else DATASETS[self.dataset]

    def cells(self) -> list[tuple[ModelSpec, AttackSpec, str]]:
        """Every (model, attack, implementation) of the grid, in run order."""
        return [(m, a, i) for m in self.models for a in self.attacks for i in a.implementations]


# --------------------------------------------------------------------------------------------
# reading and checking

def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"config key `{key}`: {message}")


def _take(table: Mapping[str, Any], key: str, allowed: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``table`` with its defaults filled in; unknown keys are refused, naming the allowed ones."""
    if not isinstance(table, Mapping):
        raise _fail(where or key, f"must be a table. Received: {table!r}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s) {', '.join(f'`{prefix}{u}`' for u in unknown)}; "
                          f"allowed{f' in `{where}`' if where else ''}: {', '.join(sorted(allowed))}")
    return {**allowed, **table}


def _int(key: str, value: Any, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        return integer(key, value, minimum=minimum, maximum=maximum)
    except Invalid as error:
        raise ConfigError(error.under(key)) from None


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    try:
        return one_of(key, value, allowed)
    except Invalid as error:
        raise ConfigError(error.under(key)) from None


def _flag(key: str, value: Any) -> bool:
    try:
        return flag(key, value)
    except Invalid as error:
        raise ConfigError(error.under(key)) from None


def plain_name(what: str, value: Any) -> str:
    """``value`` if it is a plain name: letters, digits, ``_``, ``-`` and ``.``, at most 64, starting with a letter or
    digit (so never ``.``, ``..``, a path or a hidden file). Every value that becomes a file or folder name of a run,
    from a config (sweep, model and attack names) or the command line (``--run-id``), is held to this rule, so that a
    run writes nothing outside the results root it was given.

    Raises:
        ConfigError: naming ``what`` (a config key or an option), the value and the rule.
    """
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ConfigError(f"{what}: must be a name of letters, digits, '_', '-' or '.' (at most 64, starting with a "
                          f"letter or digit). Received: {value!r}")
    return value


def _name(key: str, value: Any) -> str:
    return plain_name(f"config key `{key}`", value)


def _grid(key: str, values: Any, norm: str, data: DatasetInfo) -> tuple[float, ...]:
    if not isinstance(values, list) or not values:
        raise _fail(key, f"must be a non-empty list of numbers in [0, {data.eps_limit(norm):g}]. Received: {values!r}")
    try:
        grid = check_epsilons(values, norm, data.input_shape)
    except Invalid as error:
        raise ConfigError(error.under(key)) from None
    unique = sorted({0.0, *map(float, grid)})  # ε = 0 (clean accuracy) is always a column
    return tuple(unique)


def _dataset(value: Any, base: Path) -> DatasetInfo:
    """``dataset``: a data set's name, or a table ``{path = "my_data.npz", range = [0, 255], classes = 10}`` naming a
    researcher's own file (read and checked completely here, before any work)."""
    from advsweep.assets.datasets import DatasetFileError, read_dataset_file

    if not isinstance(value, Mapping):
        try:
            return DATASETS[one_of("dataset", value, tuple(DATASETS))]
        except Invalid as error:
            raise ConfigError(error.under("dataset") + "; or a table {path = \"my_data.npz\"} for your own "
                                                       "data") from None
    values = _take(value, "dataset", {"path": None, "range": None, "classes": None}, "dataset")
    if not isinstance(values["path"], str) or not values["path"]:
        raise _fail("dataset.path", f"must be the path of a .npz with x_test and y_test. Received: {values['path']!r}")
    path = Path(values["path"]).expanduser()
    path = path if path.is_absolute() else base / path
    value_range = values["range"]
    if value_range is not None and (
            not isinstance(value_range, list) or len(value_range) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)
            or not float(value_range[0]) < float(value_range[1])):
        raise _fail("dataset.range", f"must be [low, high] with low < high, the range the file's pixel values are "
                                     f"stored in (e.g. [0, 255]). Received: {value_range!r}")
    classes = None if values["classes"] is None else _int("dataset.classes", values["classes"], minimum=2)
    try:
        data = read_dataset_file(path, classes=classes, value_range=None if value_range is None else
                                 (float(value_range[0]), float(value_range[1])))
    except DatasetFileError as error:
        raise _fail("dataset.path", str(error)) from None
    return data.info


def _model(index: int, table: Any, base: Path, dataset: str) -> ModelSpec:
    where = f"models[{index}]"
    values = _take(table, "", {"name": None, "path": None, "train": None, "dataset": dataset,
                               "input_range": [0.0, 1.0], "custom_objects": None}, where)
    name = _name(f"{where}.name", values["name"])
    trained_on = _choice(f"{where}.dataset", values["dataset"], tuple(dict.fromkeys((*DATASETS, dataset))))
    if trained_on != dataset:
        raise _fail(f"{where}.dataset", f"the model was trained on {trained_on!r} but the sweep is about {dataset!r}; "
                                        f"set the top-level `dataset = \"{trained_on}\"` or attack a {dataset} model")
    input_range = values["input_range"]
    if (not isinstance(input_range, list) or len(input_range) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in input_range)
            or not float(input_range[0]) < float(input_range[1])):
        raise _fail(f"{where}.input_range", f"must be [low, high] with low < high, the pixel range the model was "
                                            f"trained on (e.g. [0, 255]). Received: {input_range!r}")
    if (values["path"] is None) == (values["train"] is None):
        raise _fail(where, "give exactly one of `path` (a trained model's folder or a .keras classifier) or `train` "
                           "(a model config such as {kind = \"vgg16\"}) ")
    metadata = {"dataset": trained_on, "input_range": (float(input_range[0]), float(input_range[1]))}
    if values["path"] is not None:
        from advsweep.models.user import UserModelError, model_format, user_code_files

        if not isinstance(values["path"], str):
            raise _fail(f"{where}.path", f"must be a string. Received: {values['path']!r}")
        path = Path(values["path"]).expanduser()
        path = path if path.is_absolute() else (base / path)
        if model_format(path) is None:
            raise _fail(f"{where}.path", f"{path} is not a model file: give a .keras file, a folder with model.keras "
                                         f"(`advsweep train` writes one), a legacy .h5 file or a SavedModel folder "
                                         f"(with saved_model.pb); or give `train = {{kind = \"vgg16\"}}` instead")
        sources = values["custom_objects"]
        sources = [sources] if isinstance(sources, str) else sources
        if sources is not None and (not isinstance(sources, list) or not sources
                                    or not all(isinstance(v, str) and v for v in sources)):
            raise _fail(f"{where}.custom_objects", "must be a .py file or module name (or a list of them) that defines "
                                                   f"and registers the model's own layers. Received: {sources!r}")
        try:
            files = user_code_files(sources or [], base)
        except UserModelError as error:
            raise _fail(f"{where}.custom_objects", str(error).split(": ", 1)[1]) from None
        custom = tuple(str(f) if s.endswith(".py") else s for s, f in zip(sources or [], files, strict=True))
        return ModelSpec(name=name, path=str(path.resolve()), custom_objects=custom,
                         **metadata)  # type: ignore[arg-type]
    if values["custom_objects"] is not None:
        raise _fail(f"{where}.custom_objects", "is the code a `path` model's own layers need; models built by "
                                               "`advsweep train` have none: delete the key")
    if dataset != "mnist":
        raise _fail(f"{where}.train", f"`advsweep train` builds MNIST models; for {dataset!r} give `path` to a .keras "
                                      "classifier that returns logits")
    if input_range != [0.0, 1.0] and input_range != [0, 1]:
        raise _fail(f"{where}.input_range", "models built by `advsweep train` take [0, 1]; the key is for `path` models")
    if not isinstance(values["train"], Mapping):
        raise _fail(f"{where}.train", f"must be a table such as {{kind = \"vgg16\"}}. Received: {values['train']!r}")
    try:
        train = ModelConfig.from_mapping(values["train"])
    except Invalid as error:
        raise ConfigError(error.under(f"{where}.train.{error.name}")) from None
    except (TypeError, ValueError) as error:
        raise _fail(f"{where}.train", str(error)) from None
    return ModelSpec(name=name, train=train, **metadata)  # type: ignore[arg-type]


def _attack(index: int, table: Any, epsilons: Mapping[str, Any]) -> AttackSpec:
    where = f"attacks[{index}]"
    if not isinstance(table, Mapping):
        raise _fail(where, f"must be a table. Received: {table!r}")
    name = table.get("name")
    if name not in ATTACK_SPECS:
        raise _fail(f"{where}.name", f"unknown attack {name!r}; known attacks: {', '.join(sorted(ATTACK_SPECS))}")
    tunable = [p for p in attack_parameters(name) if p not in RUNNER_PARAMS]
    supported = implementations_of(name)
    default_implementations = [i for i in ATTACK["implementations"] if i in supported]
    values = _take(table, "", {"name": name, "label": None, "norm": None, "implementations": default_implementations,
                                "surrogate": None, **{p: None for p in tunable}}, where)
    fixed = ATTACK_SPECS[name].norm
    norm = values["norm"] if values["norm"] is not None else (fixed or "linf")
    norm = _choice(f"{where}.norm", norm, L1_NORMS)
    if norm not in norms_of(name):
        raise _fail(f"{where}.norm", f"attack {name!r} takes {' and '.join(norms_of(name))}; the L1 threat model is "
                                     f"taken by {', '.join(L1_ATTACKS)} (with the L1-ball ∩ box projection)")
    if fixed is not None and norm != fixed:
        raise _fail(f"{where}.norm", f"attack {name!r} is {fixed} only; use 'fgm' with norm = \"{norm}\"")
    if norm not in epsilons:
        raise _fail(f"{where}.norm", f"no ε grid for {norm}: add `epsilons.{norm} = [...]`")
    implementations = values["implementations"]
    if not isinstance(implementations, list) or not implementations:
        raise _fail(f"{where}.implementations", f"must be a non-empty list from {list(IMPLEMENTATIONS)}. "
                                                f"Received: {implementations!r}")
    for implementation in implementations:
        _choice(f"{where}.implementations", implementation, IMPLEMENTATIONS)
        if implementation not in supported:
            raise _fail(f"{where}.implementations", f"attack {name!r} has only the own implementation (foolbox has "
                                                    f"none); use implementations = [\"own\"]")
    version = values.get("version")
    default_label = name if name == "fgsm" else f"{name}-{version}-{norm}" if version not in (None, "standard") \
        else f"{name}-{norm}"
    surrogate = None if values["surrogate"] is None else _name(f"{where}.surrogate", values["surrogate"])
    if surrogate is not None:
        default_label += f"-from-{surrogate}"
    label = values["label"] if values["label"] is not None else default_label
    label = _name(f"{where}.label", label)
    params = {p: values[p] for p in tunable if values[p] is not None}
    for key, value in params.items():  # the attacks' own checks, so that no unit fails on a value later
        try:
            check_parameter(name, key, value)
        except Invalid as error:  # a nested setting names itself (`settings.square.queries`)
            raise ConfigError(error.under(f"{where}.{error.name if error.name.startswith(key) else key}")) from None
    try:  # the rules that join a parameter to another or to the norm: the attacks' own, before any model loads
        check_combination(name, params, norm)
    except Invalid as error:
        raise ConfigError(error.under(f"{where}.{error.name}")) from None
    return AttackSpec(label=label, name=name, norm=norm, implementations=tuple(dict.fromkeys(implementations)),
                      params=params, surrogate=surrogate)


def parse_config(raw: Mapping[str, Any], *, base: Path) -> SweepConfig:
    """Check a parsed TOML document and return the resolved :class:`SweepConfig`. Keys left out take
    :mod:`advsweep.defaults`.

    Args:
        raw: the TOML document as a mapping.
        base: the folder that relative model paths are resolved against (the current directory).

    Raises:
        ConfigError: the first problem found, naming its key.
    """
    if "batch_size" in raw:
        raise _fail("batch_size", "is gone: every model call of an attack has a fixed shape of 32 rows, so that "
                                  "results do not depend on how examples are batched; delete the key")
    top = _take(raw, "", {"name": None, "description": "", "dataset": SWEEP["dataset"], "seed": SWEEP["seed"],
                          "chunk_size": SWEEP["chunk_size"],
                          "gradient": SWEEP["gradient"], "examples": {}, "models": None, "attacks": None,
                          "epsilons": None, "minimal": {}, "figures": {}, "run": {}, "randomized": {},
                          "escalation": {}}, "")
    name = _name("name", top["name"])
    for required in ("models", "attacks", "epsilons"):
        if top[required] is None:
            raise _fail(required, "is required (see experiments/configs/quick.toml)")
    data = _dataset(top["dataset"], base)
    count, selection, selection_seed = _examples(top["examples"], data)
    epsilons_raw = _take(top["epsilons"], "epsilons", {norm: None for norm in L1_NORMS}, "epsilons")
    epsilons = {norm: _grid(f"epsilons.{norm}", grid, norm, data) for norm, grid in epsilons_raw.items()
                if grid is not None}
    if not epsilons:
        raise _fail("epsilons", "give at least one grid, e.g. linf = [0.0, 0.1, 0.2, 0.3]")
    if not isinstance(top["models"], list) or not top["models"]:
        raise _fail("models", "must be a non-empty array of tables ([[models]])")
    models = tuple(_model(i, table, base, data.name) for i, table in enumerate(top["models"]))
    _unique("models", [m.name for m in models])
    if not isinstance(top["attacks"], list) or not top["attacks"]:
        raise _fail("attacks", "must be a non-empty array of tables ([[attacks]])")
    attacks = tuple(_attack(i, table, epsilons) for i, table in enumerate(top["attacks"]))
    _unique("attacks", [a.label for a in attacks])
    names = [m.name for m in models]
    for i, attack in enumerate(attacks):
        if attack.surrogate is not None and attack.surrogate not in names:
            raise _fail(f"attacks[{i}].surrogate", f"names no model of this sweep. Received: {attack.surrogate!r}; "
                                                   f"models: {', '.join(names)}")
        if attack.surrogate is not None and len(names) < 2:
            raise _fail(f"attacks[{i}].surrogate", "a transfer attack evaluates the surrogate's adversarials on the "
                                                   "sweep's other models, and this sweep has no other: add the model "
                                                   "to attack ([[models]]) or delete the key")
    chunk_size = _int("chunk_size", top["chunk_size"], minimum=1, maximum=MAX_CHUNK)
    return SweepConfig(
        name=name,
        dataset=data.name,
        description=str(top["description"]),
        models=models,
        attacks=attacks,
        epsilons=epsilons,
        examples=count,
        selection=selection,
        selection_seed=selection_seed,
        seed=_int("seed", top["seed"]),
        chunk_size=chunk_size,
        gradient=_choice("gradient", top["gradient"], GRADIENT_PATHS),
        minimal=_minimal(top["minimal"], count, data),
        figures=_figures(top["figures"], attacks, epsilons, count, chunk_size),
        run=parse_run(top["run"]),
        dataset_file=data if data.path is not None else None,
        escalation=_escalation(top["escalation"]),
        draws=_int("randomized.draws", _take(top["randomized"], "randomized", RANDOMIZED, "randomized")["draws"],
                   minimum=1, maximum=1000),
    )


def parse_run(table: Any, *, executor: str | None = None, address: str | None = None) -> RunSpec:
    """``[run]``, with the command line's ``--executor`` and ``--address`` over the file's values."""
    values = _take(table, "run", {**RUN, "address": None}, "run")
    if executor is not None:
        values["executor"] = executor
    if address is not None:
        values["address"] = address
    chosen = _choice("run.executor", values["executor"], EXECUTORS)
    where = values["address"]
    if where is not None:
        if not isinstance(where, str) or not where.strip():
            raise _fail("run.address", f"must be a Ray address such as \"10.0.0.5:6379\" or \"auto\". "
                                       f"Received: {where!r}")
        if chosen != "ray":
            raise _fail("run.address", "is the Ray cluster to run on; it needs executor = \"ray\" (--executor ray)")
    gpus = values["gpus_per_task"]
    try:
        gpus = number("gpus_per_task", gpus, minimum=0.0, maximum=64.0)
    except Invalid as error:
        raise ConfigError(error.under("run.gpus_per_task")) from None
    return RunSpec(executor=chosen, address=where.strip() if isinstance(where, str) else None,
                   cpus_per_task=_int("run.cpus_per_task", values["cpus_per_task"], minimum=1, maximum=256),
                   gpus_per_task=float(gpus),
                   max_retries=_int("run.max_retries", values["max_retries"], minimum=0, maximum=100))


def _examples(table: Any, data: DatasetInfo) -> tuple[int, str, int]:
    """``[examples]``: (count, selection, seed), at most the data set's test images."""
    values = _take(table, "examples", SWEEP["examples"], "examples")
    count = _int("examples.count", values["count"], minimum=1, maximum=data.test_size)
    selection = _choice("examples.selection", values["selection"], SELECTIONS)
    if selection == "balanced" and count % data.classes:
        raise _fail("examples.count", f"must be a multiple of {data.classes} (the classes of {data.name}) for a "
                                      f"class-balanced selection. Received: {count}")
    return count, selection, _int("examples.seed", values["seed"])


def _minimal(table: Any, count: int, data: DatasetInfo) -> MinimalSpec:
    """``[minimal]``: the bisection behind the robustness curve, on at most ``count`` examples."""
    values = _take(table, "minimal", {**{k: v for k, v in MINIMAL.items() if not isinstance(v, dict)},
                                      "tolerance": None, "eps_max": None}, "minimal")
    _flag("minimal.enabled", values["enabled"])
    norm = _choice("minimal.norm", values["norm"], L1_NORMS)
    for key in ("tolerance", "eps_max"):
        if values[key] is not None:
            try:
                number(key, values[key], above=0.0, maximum=data.eps_limit(norm))
            except Invalid as error:
                raise ConfigError(error.under(f"minimal.{key}")) from None
    return MinimalSpec(
        enabled=values["enabled"], norm=norm,
        examples=min(_int("minimal.examples", values["examples"], minimum=1, maximum=data.test_size), count),
        steps=_int("minimal.steps", values["steps"], minimum=1, maximum=10000),
        loss=_choice("minimal.loss", values["loss"], LOSSES),
        tolerance=None if values["tolerance"] is None else float(values["tolerance"]),
        eps_max=None if values["eps_max"] is None else float(values["eps_max"]),
    )  # fmt: skip


def _figures(table: Any, attacks: tuple[AttackSpec, ...], epsilons: Mapping[str, tuple[float, ...]], count: int,
             chunk_size: int) -> FigureSpec:
    """``[figures]``: which attack cell, which ε and how many examples the adversarial-example grid shows."""
    values = _take(table, "figures", {"grid_attack": None, "grid_implementation": None, "grid_eps": None,
                                      "grid_examples": SWEEP["grid_examples"]}, "figures")
    grid_label = values["grid_attack"] if values["grid_attack"] is not None else attacks[-1].label
    grid_spec = next((a for a in attacks if a.label == grid_label), None)
    if grid_spec is None:
        raise _fail("figures.grid_attack", f"names no attack of this sweep. Received: {grid_label!r}; "
                                           f"attacks: {', '.join(a.label for a in attacks)}")
    grid_implementation = values["grid_implementation"] or grid_spec.implementations[0]
    if grid_implementation not in grid_spec.implementations:
        raise _fail("figures.grid_implementation", f"{grid_label!r} runs {list(grid_spec.implementations)}. "
                                                   f"Received: {grid_implementation!r}")
    grid_eps_raw = values["grid_eps"]
    norm_grid = epsilons[grid_spec.norm]
    if grid_eps_raw is None:
        grid_eps: tuple[float, ...] = tuple(e for e in (norm_grid[len(norm_grid) // 2], norm_grid[-1]) if e > 0)
    else:
        if not isinstance(grid_eps_raw, list) or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) and float(e) in norm_grid for e in grid_eps_raw):
            raise _fail("figures.grid_eps", f"must list ε values of the {grid_spec.norm} grid {list(norm_grid)}. "
                                            f"Received: {grid_eps_raw!r}")
        grid_eps = tuple(float(e) for e in grid_eps_raw)
    grid_examples = _int("figures.grid_examples", values["grid_examples"], minimum=1, maximum=min(count, 32))
    if grid_examples > chunk_size:
        raise _fail("figures.grid_examples", f"must be at most chunk_size ({chunk_size}). Received: {grid_examples}")
    return FigureSpec(grid_attack=grid_label, grid_implementation=grid_implementation, grid_eps=grid_eps,
                      grid_examples=grid_examples)


def _escalation(table: Any) -> EscalationSpec:
    """``[escalation]``: enabled, the layers BPDA replaces by the identity, Square's queries."""
    values = _take(table, "escalation", ESCALATION, "escalation")
    layers = values["layers"]
    if not isinstance(layers, list) or not all(isinstance(v, str) and v for v in layers):
        raise _fail("escalation.layers", f"must be a list of layer names (BPDA replaces their backward pass by the "
                                         f"identity; [] finds them). Received: {layers!r}")
    return EscalationSpec(enabled=_flag("escalation.enabled", values["enabled"]), layers=tuple(layers),
                          square_queries=_int("escalation.square_queries", values["square_queries"], minimum=1,
                                              maximum=1000000))


def _unique(key: str, names: list[str]) -> None:
    seen = sorted({n for n in names if names.count(n) > 1})
    if seen:
        raise _fail(key, f"names must be unique; repeated: {seen} (set `label` to tell two attacks apart)")


def load_config(path: str | Path, *, base: Path | None = None) -> SweepConfig:
    """Read and check a sweep config file.

    Raises:
        ConfigError: the file is missing, is not valid TOML, or a key is wrong; the message says which.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the shipped ones are in experiments/configs/")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    return parse_config(raw, base=base if base is not None else Path.cwd())


def select_examples(labels: np.ndarray, *, count: int, selection: str, seed: int, classes: int = 10) -> np.ndarray:
    """Test-set indices (sorted): the first ``count``, or ``count / classes`` per class drawn with ``seed``."""
    if selection == "first":
        return np.arange(count)
    rng = np.random.default_rng(seed)
    per_class = count // classes
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(classes)]
    short = [(c, len(part)) for c, part in enumerate(chosen) if len(part) < per_class]
    if short:
        raise SweepError(f"`examples.count` = {count} asks for {per_class} test images per class, but the test set has "
                         f"only {', '.join(f'{n} of class {c}' for c, n in short)}; lower the count or set "
                         f"selection = \"first\"")
    return np.sort(np.concatenate(chosen))


def digest(value: Any) -> str:
    """sha256 of a JSON-ready value in canonical form."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
