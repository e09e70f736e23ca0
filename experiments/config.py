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

from attacks.spec import (
    ATTACK_SPECS,
    EPS_LIMITS,
    GRADIENT_PATHS,
    IMPLEMENTATIONS,
    LOSSES,
    NORMS,
    attack_parameters,
    check_epsilons,
    check_parameter,
)
from models.config import ModelConfig

SELECTIONS: tuple[str, ...] = ("balanced", "first")
TEST_SET_SIZE = 10000
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# parameters the runner sets itself, per attack and chunk
RUNNER_PARAMS = frozenset({"targets", "example_ids", "gradient", "norm"})


class ConfigError(ValueError):
    """A sweep config that cannot run: the message names the key, the value and what is allowed."""


class SweepError(RuntimeError):
    """A sweep cannot start (unloadable model, unusable asset); the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to attack: a trained folder (``path``) or a :class:`~models.config.ModelConfig` (``train``)."""

    name: str
    path: str | None = None
    train: ModelConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "train": self.train.to_dict() if self.train else None}


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of the sweep, run by each of ``implementations`` over the ε grid of ``norm``."""

    label: str
    name: str
    norm: str
    implementations: tuple[str, ...]
    params: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "norm": self.norm,
                "implementations": list(self.implementations), "params": dict(self.params)}


@dataclasses.dataclass(frozen=True)
class MinimalSpec:
    """The minimal-perturbation mode (bisection over ε with PGD) behind the robustness curve. Each example's
    search starts from the smallest grid ε at which any attack of the sweep fooled it."""

    enabled: bool = True
    norm: str = "linf"
    examples: int = 100
    steps: int = 20
    loss: str = "margin"
    tolerance: float | None = None
    eps_max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """The adversarial-example grid: which attack cell, which ε, how many examples."""

    grid_attack: str | None = None
    grid_implementation: str = "own"
    grid_eps: tuple[float, ...] = ()
    grid_examples: int = 6

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["grid_eps"] = list(self.grid_eps)
        return values


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A whole sweep, validated. ``identity()`` is what the run id is a hash of."""

    name: str
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "gradient": self.gradient,
            "examples": {"count": self.examples, "selection": self.selection, "seed": self.selection_seed},
            "models": [m.to_dict() for m in self.models],
            "attacks": [a.to_dict() for a in self.attacks],
            "epsilons": {norm: list(grid) for norm, grid in self.epsilons.items()},
            "minimal": self.minimal.to_dict(),
            "figures": self.figures.to_dict(),
        }

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
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
        raise _fail(key, f"must be an integer {bound}. Received: {value!r}")
    return int(value)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _fail(key, f"must be one of {', '.join(map(repr, allowed))}. Received: {value!r}")
    return str(value)


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise _fail(key, f"must be a name of letters, digits, '_', '-' or '.' (at most 64). Received: {value!r}")
    return value


def _grid(key: str, values: Any, norm: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not values:
        raise _fail(key, f"must be a non-empty list of numbers in [0, {EPS_LIMITS[norm]:g}]. Received: {values!r}")
    try:
        grid = check_epsilons(values, norm)
    except ValueError as error:
        raise _fail(key, str(error)) from None
    unique = sorted({0.0, *map(float, grid)})  # ε = 0 (clean accuracy) is always a column
    return tuple(unique)


def _model(index: int, table: Any, base: Path) -> ModelSpec:
    where = f"models[{index}]"
    values = _take(table, "", {"name": None, "path": None, "train": None}, where)
    name = _name(f"{where}.name", values["name"])
    if (values["path"] is None) == (values["train"] is None):
        raise _fail(where, "give exactly one of `path` (a trained model's folder) or `train` (a model config "
                           "such as {kind = \"vgg16\"}) ")
    if values["path"] is not None:
        if not isinstance(values["path"], str):
            raise _fail(f"{where}.path", f"must be a string. Received: {values['path']!r}")
        folder = Path(values["path"]).expanduser()
        folder = folder if folder.is_absolute() else (base / folder)
        if not (folder / "model.keras").is_file():
            raise _fail(f"{where}.path", f"{folder} has no model.keras; train one with `advsweep train` or give "
                                         f"`train = {{kind = \"vgg16\"}}` instead")
        return ModelSpec(name=name, path=str(folder.resolve()))
    if not isinstance(values["train"], Mapping):
        raise _fail(f"{where}.train", f"must be a table such as {{kind = \"vgg16\"}}. Received: {values['train']!r}")
    try:
        train = ModelConfig.from_mapping(values["train"])
    except (TypeError, ValueError) as error:
        raise _fail(f"{where}.train", str(error)) from None
    return ModelSpec(name=name, train=train)


def _attack(index: int, table: Any, epsilons: Mapping[str, Any]) -> AttackSpec:
    where = f"attacks[{index}]"
    if not isinstance(table, Mapping):
        raise _fail(where, f"must be a table. Received: {table!r}")
    name = table.get("name")
    if name not in ATTACK_SPECS:
        raise _fail(f"{where}.name", f"unknown attack {name!r}; known attacks: {', '.join(sorted(ATTACK_SPECS))}")
    tunable = [p for p in attack_parameters(name) if p not in RUNNER_PARAMS]
    values = _take(table, "", {"name": name, "label": None, "norm": None, "implementations": ["own", "foolbox"],
                                **{p: None for p in tunable}}, where)
    fixed = ATTACK_SPECS[name][1]
    norm = values["norm"] if values["norm"] is not None else (fixed or "linf")
    norm = _choice(f"{where}.norm", norm, NORMS)
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
    label = values["label"] if values["label"] is not None else (name if name == "fgsm" else f"{name}-{norm}")
    label = _name(f"{where}.label", label)
    params = {p: values[p] for p in tunable if values[p] is not None}
    for key, value in params.items():  # the attacks' own checks, so that no unit fails on a value later
        try:
            check_parameter(name, key, value)
        except ValueError as error:
            raise _fail(f"{where}.{key}", str(error)) from None
    return AttackSpec(label=label, name=name, norm=norm, implementations=tuple(dict.fromkeys(implementations)),
                      params=params)


def parse_config(raw: Mapping[str, Any], *, base: Path) -> SweepConfig:
    """Check a parsed TOML document and return the resolved :class:`SweepConfig`.

    Args:
        raw: the TOML document as a mapping.
        base: the folder that relative model paths are resolved against (the current directory).

    Raises:
        ConfigError: the first problem found, naming its key.
    """
    if "batch_size" in raw:
        raise _fail("batch_size", "is gone: every model call of an attack has a fixed shape of 32 rows, so that "
                                  "results do not depend on how examples are batched; delete the key")
    top = _take(raw, "", {"name": None, "description": "", "seed": 0, "chunk_size": 1000,
                          "gradient": "fast", "examples": {}, "models": None, "attacks": None, "epsilons": None,
                          "minimal": {}, "figures": {}}, "")
    name = _name("name", top["name"])
    for required in ("models", "attacks", "epsilons"):
        if top[required] is None:
            raise _fail(required, "is required (see experiments/configs/quick.toml)")
    examples = _take(top["examples"], "examples", {"count": 300, "selection": "balanced", "seed": 0}, "examples")
    count = _int("examples.count", examples["count"], minimum=1, maximum=TEST_SET_SIZE)
    selection = _choice("examples.selection", examples["selection"], SELECTIONS)
    if selection == "balanced" and count % 10:
        raise _fail("examples.count", f"must be a multiple of 10 for a class-balanced selection. Received: {count}")
    epsilons_raw = _take(top["epsilons"], "epsilons", {norm: None for norm in NORMS}, "epsilons")
    epsilons = {norm: _grid(f"epsilons.{norm}", grid, norm) for norm, grid in epsilons_raw.items() if grid is not None}
    if not epsilons:
        raise _fail("epsilons", "give at least one grid, e.g. linf = [0.0, 0.1, 0.2, 0.3]")

    if not isinstance(top["models"], list) or not top["models"]:
        raise _fail("models", "must be a non-empty array of tables ([[models]])")
    models = tuple(_model(i, table, base) for i, table in enumerate(top["models"]))
    _unique("models", [m.name for m in models])
    if not isinstance(top["attacks"], list) or not top["attacks"]:
        raise _fail("attacks", "must be a non-empty array of tables ([[attacks]])")
    attacks = tuple(_attack(i, table, epsilons) for i, table in enumerate(top["attacks"]))
    _unique("attacks", [a.label for a in attacks])

    minimal_raw = _take(top["minimal"], "minimal", {"enabled": True, "norm": "linf", "examples": 100, "steps": 20,
                                                     "loss": "margin", "tolerance": None, "eps_max": None}, "minimal")
    if not isinstance(minimal_raw["enabled"], bool):
        raise _fail("minimal.enabled", f"must be true or false. Received: {minimal_raw['enabled']!r}")
    minimal_norm = _choice("minimal.norm", minimal_raw["norm"], NORMS)
    for key in ("tolerance", "eps_max"):
        value = minimal_raw[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value <= EPS_LIMITS[minimal_norm]):
            raise _fail(f"minimal.{key}", f"must be a number in (0, {EPS_LIMITS[minimal_norm]:g}]. Received: {value!r}")
    minimal = MinimalSpec(
        enabled=minimal_raw["enabled"], norm=minimal_norm,
        examples=min(_int("minimal.examples", minimal_raw["examples"], minimum=1, maximum=TEST_SET_SIZE), count),
        steps=_int("minimal.steps", minimal_raw["steps"], minimum=1, maximum=10000),
        loss=_choice("minimal.loss", minimal_raw["loss"], LOSSES),
        tolerance=None if minimal_raw["tolerance"] is None else float(minimal_raw["tolerance"]),
        eps_max=None if minimal_raw["eps_max"] is None else float(minimal_raw["eps_max"]),
    )  # fmt: skip

    figures_raw = _take(top["figures"], "figures", {"grid_attack": None, "grid_implementation": None,
                                                     "grid_eps": None, "grid_examples": 6}, "figures")
    grid_label = figures_raw["grid_attack"] if figures_raw["grid_attack"] is not None else attacks[-1].label
    grid_spec = next((a for a in attacks if a.label == grid_label), None)
    if grid_spec is None:
        raise _fail("figures.grid_attack", f"names no attack of this sweep. Received: {grid_label!r}; "
                                           f"attacks: {', '.join(a.label for a in attacks)}")
    grid_implementation = figures_raw["grid_implementation"] or grid_spec.implementations[0]
    if grid_implementation not in grid_spec.implementations:
        raise _fail("figures.grid_implementation", f"{grid_label!r} runs {list(grid_spec.implementations)}. "
                                                   f"Received: {grid_implementation!r}")
    grid_eps_raw = figures_raw["grid_eps"]
    norm_grid = epsilons[grid_spec.norm]
    if grid_eps_raw is None:
        grid_eps: tuple[float, ...] = tuple(e for e in (norm_grid[len(norm_grid) // 2], norm_grid[-1]) if e > 0)
    else:
        if not isinstance(grid_eps_raw, list) or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) and float(e) in norm_grid for e in grid_eps_raw):
            raise _fail("figures.grid_eps", f"must list ε values of the {grid_spec.norm} grid {list(norm_grid)}. "
                                            f"Received: {grid_eps_raw!r}")
        grid_eps = tuple(float(e) for e in grid_eps_raw)
    figures = FigureSpec(grid_attack=grid_label, grid_implementation=grid_implementation, grid_eps=grid_eps,
                         grid_examples=_int("figures.grid_examples", figures_raw["grid_examples"], minimum=1,
                                            maximum=min(count, 32)))
    chunk_size = _int("chunk_size", top["chunk_size"], minimum=1, maximum=TEST_SET_SIZE)
    if figures.grid_examples > chunk_size:
        raise _fail("figures.grid_examples", f"must be at most chunk_size ({chunk_size}). "
                                             f"Received: {figures.grid_examples}")
    return SweepConfig(
        name=name,
        description=str(top["description"]),
        models=models,
        attacks=attacks,
        epsilons=epsilons,
        examples=count,
        selection=selection,
        selection_seed=_int("examples.seed", examples["seed"]),
        seed=_int("seed", top["seed"]),
        chunk_size=chunk_size,
        gradient=_choice("gradient", top["gradient"], GRADIENT_PATHS),
        minimal=minimal,
        figures=figures,
    )


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


def select_examples(labels: np.ndarray, *, count: int, selection: str, seed: int) -> np.ndarray:
    """Test-set indices (sorted): the first ``count``, or ``count / 10`` per class drawn with ``seed``."""
    if selection == "first":
        return np.arange(count)
    rng = np.random.default_rng(seed)
    per_class = count // 10
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)]
    return np.sort(np.concatenate(chosen))


def digest(value: Any) -> str:
    """sha256 of a JSON-ready value in canonical form."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
