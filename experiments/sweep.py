"""The sweep runner: a config file in, a run folder of per-example records, tables, figures and checks out.

Work is split into units (the clean pass per model; each attack × implementation per model and chunk
of examples; the minimal-perturbation bisection; the model's checks). A unit's files are written
atomically and then a ``done/<unit>.json`` names them with their sha256; a unit counts as finished
only if that file exists and every file it names is intact. Run the same command after a Ctrl-C or a
killed process and the sweep continues from the finished units. Each unit's result depends only on
the model, its examples and the seeds, never on what ran before it in the same process, so a resumed
sweep ends with the same records as an uninterrupted one.

The run folder ``results/<sweep name>/<run id>/`` is named by a hash of the resolved config, the
models' content hashes and a digest of the harness' sources as they ran (committed or not): the same
sweep of the same code always lands in the same folder, and a changed config or code starts a new one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from advsweep.assets.files import sha256_file as file_sha256
from advsweep.assets.files import write_atomic
from advsweep.experiments.config import AttackSpec, ModelSpec, SweepConfig, SweepError, digest, select_examples  # noqa: F401
from advsweep.experiments.records import attack_records, clean_records, write_records
from advsweep.defaults import ATTACK, AUTOATTACK, ITERATIVE

logger = logging.getLogger(__name__)

CHECK_EXAMPLES = 100  # examples of the per-model checks (the unbounded-attack check runs PGD-40 twice on them)


@dataclasses.dataclass
class LoadedModel:
    spec: ModelSpec
    model: keras.Model
    folder: Path
    sha256: str
    metrics: dict[str, Any]
    file: Path  # the .keras file the model was loaded from (what a Ray worker is sent)
    written_by_train: bool


class UnloadableModel(Exception):
    """Keras could not load a model file."""


def classifier_from_file(file: Path, spec: ModelSpec, data: Any, *, written_by_train: bool) -> keras.Model:
    """The classifier the attacks see, from a ``.keras`` file: a model ``advsweep train`` wrote is checked against
    the data set; any other is checked and rescaled to [0, 1] inputs. The driver and every Ray worker load a model
    by this one function, so both attack the same function.

    Raises:
        UnloadableModel: Keras cannot load the file (corrupt, or not a Keras model).
        ValueError: the model breaks the contract (the message says how).
    """
    from advsweep.models.common import as_classifier, check_contract

    try:
        model = keras.saving.load_model(file, compile=False)
    except Exception as error:  # a corrupt or foreign file: Keras raises many kinds of error
        raise UnloadableModel(f"{type(error).__name__}: {error}") from error
    if written_by_train:
        check_contract(model, data.input_shape, data.classes)
        return model
    return as_classifier(model, input_shape=data.input_shape, classes=data.classes, input_range=spec.input_range)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One resumable piece of work."""

    key: str  # e.g. "vgg16/pgd-linf/own/chunk-0001"
    kind: str  # "clean", "attack", "minimal" or "checks"
    model: str
    cost: float  # estimated gradient evaluations, for the progress bar's time left
    attack: AttackSpec | None = None
    implementation: str | None = None
    start: int = 0
    stop: int = 0

    @property
    def done_path(self) -> str:
        return f"done/{self.key.replace('/', '__')}.json"


# --------------------------------------------------------------------------------------------
# models


def prepare_models(config: SweepConfig, models_root: Path) -> list[LoadedModel]:
    """Load every model of the sweep, training those given as a model config that are not trained yet.

    Every model given by ``path``, and every already trained one, is loaded before any model is trained,
    so that a corrupt file stops the sweep before an hour of training; the error names the config key.
    """
    from advsweep.experiments.plots import training_curves
    from advsweep.models.config import ModelConfig
    from advsweep.models.training import train_model

    data = config.data

    def file_of(spec: ModelSpec) -> Path:
        if spec.path is not None:
            path = Path(spec.path)
            return path if path.suffix == ".keras" and path.is_file() else path / "model.keras"
        assert spec.train is not None
        return models_root / spec.train.model_id / "model.keras"

    def load(index: int, spec: ModelSpec) -> LoadedModel:
        file = file_of(spec)
        key = f"models[{index}].{'path' if spec.path is not None else 'train'}"
        written_by_train = (file.parent / "config.json").is_file() and file.name == "model.keras"
        fix = ("point `path` at a .keras classifier or a folder written by `advsweep train`" if spec.path is not None
               else f"delete {file.parent} so that the sweep trains it again")

        def unloadable(detail: str) -> SweepError:
            return SweepError(f"config key `{key}` (model {spec.name!r}): {file} cannot be loaded ({detail}); {fix}")

        metrics: dict[str, Any] = {}
        try:  # a trained folder's own files: its config must parse, its metrics go into the manifest
            if written_by_train:
                ModelConfig.from_mapping(json.loads((file.parent / "config.json").read_text()))
                metrics = json.loads((file.parent / "metrics.json").read_text())
        except Exception as error:  # corrupt JSON, a foreign config: many kinds of error
            raise unloadable(f"{type(error).__name__}: {error}") from None
        try:
            model = classifier_from_file(file, spec, data, written_by_train=written_by_train)
        except UnloadableModel as error:
            raise unloadable(str(error)) from None
        except ValueError as error:  # the contract, against the data set: shape, one logit per class, no softmax
            raise SweepError(f"config key `{key}` (model {spec.name!r}): {error}") from None
        return LoadedModel(spec=spec, model=model, folder=file.parent, sha256=file_sha256(file), metrics=metrics,
                           file=file, written_by_train=written_by_train)

    loaded: dict[int, LoadedModel] = {}
    for index, spec in enumerate(config.models):
        if file_of(spec).is_file():
            loaded[index] = load(index, spec)
    for index, spec in enumerate(config.models):
        if index in loaded:
            continue
        assert spec.train is not None  # a missing `path` folder is refused when the config is read
        subset = spec.train.train_examples
        logger.info("model %r: training %s%s", spec.name, spec.train.model_id,
                    f" on {subset} of the 55000 training images (to fit the sweep's time budget)" if subset else "")
        train_model(spec.train, models_root, draw_curves=training_curves)
        loaded[index] = load(index, spec)
    return [loaded[index] for index in range(len(config.models))]


# --------------------------------------------------------------------------------------------
# identity and manifest


PACKAGES = ("assets", "models", "attacks", "experiments")


def source_digest(root: Path | None = None) -> str:
    """sha256 over the harness' own Python sources as they are on disk (path and content of each file).

    This is what ran, committed or not: an edited attack gives a new digest, hence a new run id, so a
    resumed run never mixes records of two code versions.
    """
    if root is None:  # the namespace: its own modules (the defaults) and the four layers
        import advsweep

        root = Path(advsweep.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_version() -> dict[str, Any]:
    """The sources' digest, the package version, and the git commit with whether the tree had uncommitted
    changes (for the manifest: the digest alone decides the run id)."""
    root = Path(__file__).resolve().parents[1]
    version: dict[str, Any] = {"source_sha256": source_digest(), "advsweep": _package_version("advsweep")}
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    check=True, timeout=30).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, check=True, timeout=30).stdout.strip()
            version.update({"git_commit": commit, "git_dirty": bool(dirty)})
        except (OSError, subprocess.SubprocessError):
            pass
    return version


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def run_identity(config: SweepConfig, models: list[LoadedModel], code: dict[str, Any]) -> str:
    """12 hex digits of a hash of what determines the results: config, model contents, the code's sources."""
    resolved = config.to_dict()
    resolved.pop("description")
    for entry in resolved["models"]:
        entry.pop("path")  # the model's content hash stands for it, wherever it lies
    return digest({"config": resolved, "models": {m.spec.name: m.sha256 for m in models},
                   "code": code["source_sha256"]})[:12]


def manifest(config: SweepConfig, models: list[LoadedModel], code: dict[str, Any], assets: list[dict[str, Any]],
             examples: np.ndarray) -> dict[str, Any]:
    import tensorflow as tf

    return {
        "sweep": config.name,
        "code": code,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
                     **{name: _package_version(name)
                        for name in ("numpy", "foolbox", "pandas", "pyarrow", "matplotlib", "scikit-learn")}},
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()},
        "dataset": config.data.to_dict(),
        "assets": assets,
        "models": [{"name": m.spec.name, "folder": str(m.folder), "model_keras_sha256": m.sha256,
                    "model_id": m.metrics.get("model_id"), "clean_test_accuracy": m.metrics.get("clean_test_accuracy"),
                    "train_examples": m.metrics.get("train_examples"), "training": training_of(m.metrics)}
                   for m in models],
        "seeds": {"attacks": config.seed, "example_selection": config.selection_seed},
        "examples": {"count": len(examples), "selection": config.selection,
                     "test_indices_sha256": hashlib.sha256(examples.astype(np.int64).tobytes()).hexdigest()},
    }


def training_of(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """How a model was trained, from its ``metrics.json``: kind, natural or adversarial, the training ε (0 for
    natural training), and any collapse; ``None`` for a classifier the harness did not train. The ε-budget figures
    read this from the manifest."""
    config = metrics.get("config")
    if not config:
        return None
    adversarial = metrics.get("adversarial")
    return {"kind": config.get("kind"), "method": adversarial["method"] if adversarial else "natural",
            "label": adversarial["label"] if adversarial else "natural",
            "eps": float(adversarial["options"]["eps"]) if adversarial else 0.0,
            "collapse": adversarial.get("collapse") if adversarial else None}


def write_json(path: Path, value: Any) -> Path:
    return write_atomic(path, lambda p: p.write_text(json.dumps(value, indent=2, default=_json_default) + "\n"))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# units


def attack_cost(name: str, norm: str, params: Mapping[str, Any]) -> float:
    """A guess of an attack's gradient evaluations per example and ε, for the progress bar: its budget, or for
    AutoAttack's attacks, which stop at the first adversarial, the first attack's budget (a robust model costs
    more, a broken one less)."""
    if (name, norm) in ITERATIVE:
        steps = params.get("steps", ITERATIVE[(name, norm)]["steps"])
        return float(steps * params.get("restarts", ATTACK["restarts"]))
    if name in AUTOATTACK:
        settings = {**AUTOATTACK[name], **params}
        return float(settings.get("steps", 0) or settings.get("queries", 0) / 4)
    if name == "autoattack":
        return float(AUTOATTACK["apgd-ce"]["steps"])
    return 1.0


def plan(config: SweepConfig) -> list[Unit]:
    """Every unit of the sweep, in run order: per model the clean pass, the attacks (ascending chunks),
    the minimal-perturbation bisection and the checks."""
    units: list[Unit] = []
    chunks = [(start, min(start + config.chunk_size, config.examples))
              for start in range(0, config.examples, config.chunk_size)]
    for spec in config.models:
        for start, stop in chunks:
            units.append(Unit(key=f"{spec.name}/clean/chunk-{start // config.chunk_size:04d}", kind="clean",
                              model=spec.name, cost=(stop - start) * 0.5, start=start, stop=stop))
        for attack in config.attacks:
            grid = config.epsilons[attack.norm]
            per_eps = attack_cost(attack.name, attack.norm, attack.params)
            for implementation in attack.implementations:
                for start, stop in chunks:
                    cost = (stop - start) * (per_eps * (len(grid) - 1) + 0.5 * len(grid))
                    units.append(Unit(key=f"{spec.name}/{attack.label}/{implementation}/chunk-{start // config.chunk_size:04d}",
                                      kind="attack", model=spec.name, cost=cost, attack=attack,
                                      implementation=implementation, start=start, stop=stop))
        if config.minimal.enabled:
            n = config.minimal.examples
            units.append(Unit(key=f"{spec.name}/minimal", kind="minimal", model=spec.name,
                              cost=n * config.minimal.steps * 8, start=0, stop=n))
        n_checks = min(config.examples, CHECK_EXAMPLES)
        units.append(Unit(key=f"{spec.name}/checks", kind="checks", model=spec.name, cost=n_checks * 40, start=0,
                          stop=n_checks))
    return units


def unit_is_done(run_dir: Path, unit: Unit) -> bool:
    """The unit's done file exists and every file it names is present with its recorded sha256."""
    done = run_dir / unit.done_path
    if not done.is_file():
        return False
    try:
        record = json.loads(done.read_text())
        return all((run_dir / name).is_file() and file_sha256(run_dir / name) == sha for name, sha in record["files"].items())
    except (ValueError, KeyError, OSError):
        return False


def _attack_params(config: SweepConfig, unit: Unit) -> dict[str, Any]:
    from advsweep.attacks.spec import attack_parameters

    assert unit.attack is not None
    params = dict(unit.attack.params)
    allowed = attack_parameters(unit.attack.name)
    if "gradient" in allowed:
        params["gradient"] = config.gradient
    if "norm" in allowed:
        params["norm"] = unit.attack.norm
    if "seed" in allowed:
        params.setdefault("seed", config.seed)
    return params


SINGLE_STEP = frozenset({"fgsm", "fgm"})


def grid_upper_bounds(run_dir: Path, model: str, norm: str, examples: np.ndarray) -> np.ndarray:
    """Per example, the smallest grid ε (> 0) of ``norm`` at which any attack of the run fooled it, from the
    finished attack records of ``model``; ``inf`` where none did. The minimal-ε search starts from these."""
    files = []  # only what finished attack units vouch for, never a half-written file
    for done in sorted((run_dir / "done").glob(f"{model}__*.json")):
        record = json.loads(done.read_text())
        if record.get("kind") == "attack":
            files += [run_dir / name for name in record["files"] if name.endswith(".parquet")]
    bounds = pd.Series(np.inf, index=pd.Index(examples, name="example"))
    if files:
        records = pd.concat([pd.read_parquet(p, columns=["example", "norm", "eps", "correct"]) for p in files])
        fooled = records[(records["norm"] == norm) & (records["eps"] > 0) & ~records["correct"]]
        smallest = fooled.groupby("example")["eps"].min()
        bounds.update(smallest[smallest.index.isin(examples)])
    return bounds.to_numpy(dtype=np.float64)


@dataclasses.dataclass
class UnitOutput:
    """What a unit computed, in memory: its files (path in the run folder → content) and its checks. A worker
    returns this and the driver writes it (:func:`write_unit`), so the run folder is only ever written by the
    driver, by the same code whichever executor ran the unit."""

    key: str
    kind: str
    records: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # typed per-example records
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # other Parquet tables
    arrays: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)  # .npz files
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def compute_unit(config: SweepConfig, unit: Unit, model: keras.Model, x: np.ndarray, labels: np.ndarray,
                 examples: np.ndarray, bounds: np.ndarray | None = None) -> UnitOutput:
    """Compute one unit from its inputs alone (the model, the sweep's examples, and for the minimal-ε unit the grid
    bounds of :func:`grid_upper_bounds`); nothing is read or written on disk."""
    from advsweep.attacks import minimal_perturbation, predict_logits, run_attack
    from advsweep.attacks.checks import (
        check_ensemble,
        check_gradients,
        check_logits,
        check_result_validity,
        check_unbounded,
    )

    part = slice(unit.start, unit.stop)
    output = UnitOutput(key=unit.key, kind=unit.kind)
    name = unit.key.split("/", 1)[1]
    records_path = f"records/{unit.model}/{name.replace('/', '--')}.parquet"

    if unit.kind == "clean":
        logits = predict_logits(model, x[part], example_ids=examples[part])
        output.records[records_path] = clean_records(model=unit.model, examples=examples[part], labels=labels[part],
                                                     logits=logits)
    elif unit.kind == "attack":
        assert unit.attack is not None and unit.implementation is not None
        result = run_attack(unit.attack.name, model, x[part], labels[part], list(config.epsilons[unit.attack.norm]),
                            implementation=unit.implementation, example_ids=examples[part], **_attack_params(config, unit))
        views = [("single" if unit.attack.name in SINGLE_STEP else "any", result)]
        if result.last is not None:
            views.append(("last", result.last))
        output.records[records_path] = pd.concat(
            [attack_records(model=unit.model, attack=unit.attack.label, implementation=unit.implementation,
                            iterate=iterate, norm=unit.attack.norm, epsilons=view.epsilons, examples=examples[part],
                            labels=labels[part], x=x[part], x_adv=view.x_adv, logits=view.logits,
                            found_by=view.found_by) for iterate, view in views], ignore_index=True)
        checks = [check_result_validity(result, x[part], label=f"{unit.attack.label}/{unit.implementation}")]
        checks += check_ensemble(result, label=f"{unit.attack.label}/{unit.implementation}")
        output.extra["checks"] = [c.to_dict() for c in checks]
        figure = config.figures
        in_grid = np.flatnonzero(np.arange(unit.start, unit.stop) < figure.grid_examples)
        if (unit.attack.label, unit.implementation) == (figure.grid_attack, figure.grid_implementation) and len(in_grid):
            columns = [list(result.epsilons).index(e) for e in figure.grid_eps]
            output.arrays[f"adversarials/{unit.model}/{name.replace('/', '--')}.npz"] = {
                "x": x[part][in_grid], "x_adv": result.x_adv[columns][:, in_grid], "labels": labels[part][in_grid],
                "predictions": result.logits[columns][:, in_grid].argmax(-1), "epsilons": np.asarray(figure.grid_eps),
                "examples": examples[part][in_grid]}
    elif unit.kind == "minimal":
        spec = config.minimal
        assert bounds is not None, "the minimal-ε unit starts from the grid bounds of the model's attack records"
        minimal = minimal_perturbation(model, x[part], labels[part], norm=spec.norm, eps_max=spec.eps_max,
                                       tolerance=spec.tolerance, steps=spec.steps, loss=spec.loss, upper_bounds=bounds,
                                       seed=config.seed, example_ids=examples[part], gradient=config.gradient)
        output.tables[f"records/{unit.model}/minimal.parquet"] = pd.DataFrame({
            "model": unit.model, "norm": spec.norm, "example": examples[part], "label": labels[part].astype(np.int16),
            "minimal_eps": minimal.eps, "grid_bound": bounds, "eps_max": minimal.eps_max,
            "tolerance": minimal.tolerance, "loss": spec.loss})
    elif unit.kind == "checks":
        checks = [check_logits(model, x[part]),
                  check_gradients(model, x[part], labels[part], example_ids=examples[part]),
                  *check_unbounded(model, x[part], labels[part], seed=config.seed, example_ids=examples[part])]
        output.extra["checks"] = [c.to_dict() for c in checks]
        output.extra["examples"] = unit.stop - unit.start
    else:  # pragma: no cover - plan() makes only the kinds above
        raise AssertionError(unit.kind)
    return output


def write_unit(run_dir: Path, output: UnitOutput) -> dict[str, Any]:
    """Write a unit's files atomically; returns its done record (key, kind, each file's sha256, checks), to which
    the caller adds the time and worker before writing ``done/<unit>.json``."""
    files: dict[str, str] = {}
    for relative, frame in output.records.items():
        files[relative] = file_sha256(write_records(frame, run_dir / relative))
    for relative, frame in output.tables.items():
        files[relative] = file_sha256(write_atomic(run_dir / relative, lambda p: frame.to_parquet(p, index=False)))
    for relative, arrays in output.arrays.items():
        files[relative] = file_sha256(
            write_atomic(run_dir / relative, lambda p: np.savez_compressed(p, **arrays)))  # type: ignore[arg-type]
    return {"key": output.key, "kind": output.kind, "files": files, **output.extra}


# --------------------------------------------------------------------------------------------
# the sweep


@dataclasses.dataclass
class SweepInputs:
    """What every unit of a run reads: the config, the loaded models, the examples, and the run folder."""

    config: SweepConfig
    models: dict[str, LoadedModel]
    x: np.ndarray
    labels: np.ndarray
    examples: np.ndarray
    run_dir: Path
    code: dict[str, Any]


# A finished unit's output, with its wall time and the worker that ran it, handed to the driver to write.
Finish = Callable[[Unit, UnitOutput, float, dict[str, Any]], None]


def local_worker() -> dict[str, Any]:
    return {"executor": "local", "host": socket.gethostname(), "pid": os.getpid()}


def run_local(inputs: SweepInputs, todo: list[Unit], finish: Finish,
              progress: Callable[[str], None] | None = None) -> None:
    """The in-process executor: the units one after another, in plan order (a minimal-ε unit after its model's
    attacks, whose records give its starting bounds)."""
    for unit in todo:
        if progress is not None:
            progress(unit.key)
        started = time.perf_counter()
        bounds = (grid_upper_bounds(inputs.run_dir, unit.model, inputs.config.minimal.norm,
                                    inputs.examples[unit.start:unit.stop]) if unit.kind == "minimal" else None)
        output = compute_unit(inputs.config, unit, inputs.models[unit.model].model, inputs.x, inputs.labels,
                              inputs.examples, bounds)
        finish(unit, output, time.perf_counter() - started, local_worker())


def deterministic_kernels() -> None:
    """TensorFlow's deterministic kernels, in every process that runs units. They are a process-wide switch that
    cannot be turned off again, and ``train_model`` turns it on: without this, a sweep that trained its model and
    attacked it in the same process wrote other records (in the last bits) than the same sweep resumed after
    training. Measured: no cost in time on the CPU (PGD on both models, side by side)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def run_sweep(config: SweepConfig, results_root: Path, *, run_id: str | None = None,
              on_unit_done: Callable[[Unit], None] | None = None) -> Path:
    """Run (or resume) a sweep and write its tables and figures; returns the run folder.

    Everything that can fail on bad input (assets, model files, the Ray cluster's address) is done before the run
    folder is made. The units run in this process or as Ray tasks (``config.run``); either way this process alone
    writes the run folder, and the records are the same to the byte.
    """
    from tqdm.auto import tqdm

    from advsweep.assets import load_dataset
    from advsweep.experiments.report import build_report

    started = time.time()
    cluster = None
    if config.run.executor == "ray":  # a wrong address is refused before anything is loaded, trained or written
        from advsweep.experiments.cluster import connect

        cluster = connect(config.run)
    try:
        deterministic_kernels()
        dataset = load_dataset(config.dataset)
        y_test = dataset.test_labels
        models = prepare_models(config, results_root / "models")
        assets = {dataset.resolved.name: dataset.resolved.to_dict()}
        for loaded in models:  # the weights each model was built from, as its training recorded them
            for entry in loaded.metrics.get("assets", {}).values():
                assets.setdefault(entry["name"], entry)
        examples = select_examples(y_test, count=config.examples, selection=config.selection,
                                   seed=config.selection_seed, classes=dataset.info.classes)
        x, labels = dataset.test_images(examples), y_test[examples]
        code = code_version()
        run_id = run_id or run_identity(config, models, code)
        run_dir = results_root / config.name / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        inputs = SweepInputs(config=config, models={m.spec.name: m for m in models}, x=x, labels=labels,
                             examples=examples, run_dir=run_dir, code=code)

        previous = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {}
        info = manifest(config, models, code, list(assets.values()), examples)
        executor = {"name": config.run.executor, **(cluster.describe() if cluster is not None else {})}
        info.update({"run_id": run_id, "status": "running", "started": previous.get("started") or _now(),
                     "executor": executor,
                     "sessions": previous.get("sessions", []) + [{"started": _now(), "executor": config.run.executor}]})
        write_json(run_dir / "config.resolved.json", config.to_dict())
        write_json(run_dir / "manifest.json", info)
        write_atomic(run_dir / "examples.csv", lambda p: pd.DataFrame(
            {"position": np.arange(len(examples)), "example": examples, "label": labels}).to_csv(p, index=False))

        units = plan(config)
        todo = [u for u in units if not unit_is_done(run_dir, u)]
        logger.info("sweep %s, run %s: %d of %d units to do on the %s executor (%s)", config.name, run_id, len(todo),
                    len(units), config.run.executor, run_dir)
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = tqdm(total=sum(u.cost for u in units), initial=sum(u.cost for u in units if u not in todo),
                   unit="grad", unit_scale=True, desc=config.name, dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")

        def finish(unit: Unit, output: UnitOutput, seconds: float, worker: dict[str, Any]) -> None:
            writing = time.perf_counter()
            record = write_unit(run_dir, output)
            record.update({"seconds": seconds, "write_seconds": time.perf_counter() - writing, "finished": _now(),
                           "worker": worker})
            write_json(run_dir / unit.done_path, record)
            bar.update(unit.cost)
            logger.info("%s: done in %.1f s%s", unit.key, seconds,
                        f" on {worker['host']} (pid {worker['pid']})" if worker["executor"] != "local" else "")
            if on_unit_done is not None:
                on_unit_done(unit)

        with logging_redirect_tqdm(), bar:
            if cluster is None:
                run_local(inputs, todo, finish, progress=bar.set_postfix_str)
            else:
                cluster.execute(inputs, units, todo, finish, progress=bar.set_postfix_str)
    finally:
        if cluster is not None:
            cluster.close()

    build_report([run_dir], run_dir)
    info["status"] = "complete"
    info["finished"] = _now()
    info["sessions"][-1]["finished"] = info["finished"]
    done = {u.key: json.loads((run_dir / u.done_path).read_text()) for u in units}
    info["unit_seconds"] = {key: record["seconds"] for key, record in done.items()}
    info["units"] = {key: {"seconds": record["seconds"], "write_seconds": record.get("write_seconds"),
                           "finished": record.get("finished"), "worker": record.get("worker")}
                     for key, record in done.items()}
    info["wall_seconds_this_session"] = time.time() - started
    write_json(run_dir / "manifest.json", info)
    return run_dir


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
