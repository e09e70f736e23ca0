"""The units of a sweep and what computes their records: each unit's work from its inputs alone, its files, and the
digest of the sources that compute records (what a run id vouches for).

A unit (the clean pass per model and chunk; an attack × implementation per model and chunk; the minimal-ε bisection;
the model's checks) is computed in memory by :func:`compute_unit` from the model, the examples and the seeds, never
from what ran before it in the same process, and written by :func:`write_unit`. Both executors call these two, so a
record is the same to the byte whichever computed it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import pandas as pd

from advsweep.assets.files import sha256_file as file_sha256
from advsweep.assets.files import write_atomic
from advsweep.defaults import ATTACK, AUTOATTACK, ITERATIVE
from advsweep.experiments.config import AttackSpec, ModelSpec, SweepConfig
from advsweep.experiments.reporting.records import attack_records, clean_records, write_records
from advsweep.experiments.reporting.verdicts import GRADIENT_FAILURES

if TYPE_CHECKING:
    from advsweep.attacks import AttackResult

# examples of the per-model checks (PGD-40 twice for the unbounded attack, 100 forward passes each for the loss's
# stability)
CHECK_EXAMPLES = 100
BPDA_PROBES = 8  # images the search for non-differentiable layers probes each layer on


@dataclasses.dataclass
class LoadedModel:
    spec: ModelSpec
    model: keras.Model
    folder: Path
    sha256: str
    metrics: dict[str, Any]
    file: Path  # the model file (or SavedModel folder) it was loaded from (what a Ray worker is sent)
    written_by_train: bool
    code: list[Path] = dataclasses.field(default_factory=list)  # the files of its custom_objects
    code_sha256: str | None = None  # their digest: part of the model's identity


class UnloadableModel(Exception):
    """Keras could not load a model file, or the code its classes need."""


def classifier_from_file(file: Path, spec: ModelSpec, data: Any, *, written_by_train: bool,
                         code_files: list[Path] | None = None) -> keras.Model:
    """The classifier the attacks see, from a model file (``.keras``, legacy ``.h5``, or a SavedModel folder): a
    model ``advsweep train`` wrote is checked against the data set; any other is checked and rescaled to [0, 1]
    inputs, after the code that registers its own classes (``spec.custom_objects``, or ``code_files``: the same
    code where a Ray worker received it) is imported. The driver and every Ray worker load a model by this one
    function, so both attack the same function.

    Raises:
        UnloadableModel: the model or its code cannot be loaded (the message names the problem and the fix).
        ValueError: the model breaks the contract (the message says how).
    """
    from advsweep.models.common import as_classifier, check_contract
    from advsweep.models.user import UserModelError, ensure_global_seed, import_user_code, load_model_file

    ensure_global_seed()  # a user's seedless random op loads (a randomized model is detected, not refused)
    try:
        import_user_code([str(f) for f in code_files] if code_files is not None else list(spec.custom_objects))
        model = load_model_file(file, input_shape=data.input_shape)
    except UserModelError as error:
        raise UnloadableModel(str(error)) from error
    if written_by_train:
        check_contract(model, data.input_shape, data.classes)
        return model
    return as_classifier(model, input_shape=data.input_shape, classes=data.classes, input_range=spec.input_range)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One resumable piece of work."""

    key: str  # e.g. "vgg16/pgd-linf/own/chunk-0001"
    kind: str  # "clean", "attack", "minimal", "checks" or "escalation"
    model: str
    cost: float  # estimated gradient evaluations, for the progress bar's time left
    attack: AttackSpec | None = None
    implementation: str | None = None
    start: int = 0
    stop: int = 0
    surrogate: str | None = None  # a transfer attack's surrogate model: the adversarials are found on it

    @property
    def done_path(self) -> str:
        return f"done/{self.key.replace('/', '__')}.json"


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
            if attack.surrogate == spec.name:  # a transfer attack is evaluated on the other models
                continue
            grid = config.epsilons[attack.norm]
            per_eps = attack_cost(attack.name, attack.norm, attack.params)
            for implementation in attack.implementations:
                for start, stop in chunks:
                    cost = (stop - start) * (per_eps * (len(grid) - 1) + 0.5 * len(grid))
                    units.append(Unit(key=f"{spec.name}/{attack.label}/{implementation}/chunk-{start // config.chunk_size:04d}",
                                      kind="attack", model=spec.name, cost=cost, attack=attack,
                                      implementation=implementation, start=start, stop=stop,
                                      surrogate=attack.surrogate))
        if config.minimal.enabled:
            n = config.minimal.examples
            units.append(Unit(key=f"{spec.name}/minimal", kind="minimal", model=spec.name,
                              cost=n * config.minimal.steps * 8, start=0, stop=n))
        n_checks = min(config.examples, CHECK_EXAMPLES)
        # PGD-40 twice (the unbounded attack) and 100 forward passes (the loss's stability) per example
        units.append(Unit(key=f"{spec.name}/checks", kind="checks", model=spec.name, cost=n_checks * 90, start=0,
                          stop=n_checks))
        if config.escalation.enabled:  # after the checks, whose findings it reads; it runs nothing where none fired
            units.append(Unit(key=f"{spec.name}/escalation/own", kind="escalation", model=spec.name,
                              cost=config.examples * 10, start=0, stop=config.examples))
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
    from advsweep.attacks.engine.spec import attack_parameters

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


def escalation_triggers(run_dir: Path, model: str, *, randomized: bool) -> dict[str, Any]:
    """What the escalation unit of ``model`` is to run, from the finished checks and attack units of the run: EOT
    where the model is randomized; BPDA and a larger Square where a check of :data:`GRADIENT_FAILURES` failed on a
    deterministic model. ``{"eot": bool, "bpda": bool, "why": [the failed checks' names]}``."""
    why = []
    for done in sorted((run_dir / "done").glob(f"{model}__*.json")):
        record = json.loads(done.read_text())
        for check in record.get("checks", []):
            if not check["passed"] and not check.get("informational") and check["name"].startswith(GRADIENT_FAILURES):
                why.append(check["name"])
    why = list(dict.fromkeys(why))
    if randomized:
        return {"eot": True, "bpda": False, "why": ["the model is randomized (its logits differ between two calls)"]}
    return {"eot": False, "bpda": bool(why), "why": why}


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
                 examples: np.ndarray, bounds: np.ndarray | None = None,
                 surrogate: keras.Model | None = None, randomized: bool = False,
                 triggers: dict[str, Any] | None = None) -> UnitOutput:
    """Compute one unit from its inputs alone (the model, the sweep's examples, for the minimal-ε unit the grid
    bounds of :func:`grid_upper_bounds`, for a transfer attack's unit its surrogate model, and whether the model is
    randomized: then every point it is judged at, clean or adversarial, is judged by the rule of
    :mod:`advsweep.attacks.adaptive.randomized`; for the escalation unit what the checks found, :func:`escalation_triggers`);
    nothing is read or written on disk."""
    from advsweep.attacks import minimal_perturbation, predict_logits, run_attack
    from advsweep.attacks.evaluation.checks import (
        check_deterministic,
        check_ensemble,
        check_gradients,
        check_logits,
        check_loss_stability,
        check_result_validity,
        check_unbounded,
    )
    from advsweep.attacks.engine.spec import members_of

    part = slice(unit.start, unit.stop)
    output = UnitOutput(key=unit.key, kind=unit.kind)
    name = unit.key.split("/", 1)[1]
    records_path = f"records/{unit.model}/{name.replace('/', '--')}.parquet"

    judge = Judge(model, config.draws, config.seed) if randomized else None
    if unit.kind == "clean":
        logits = (judge.logits(x[part], examples[part]) if judge is not None
                  else predict_logits(model, x[part], example_ids=examples[part]))
        output.records[records_path] = clean_records(model=unit.model, examples=examples[part], labels=labels[part],
                                                     logits=logits)
    elif unit.kind == "attack":
        assert unit.attack is not None and unit.implementation is not None
        transfer = unit.attack.surrogate is not None
        if transfer:
            assert surrogate is not None, f"the transfer attack {unit.key} needs its surrogate model"
        result = run_attack(unit.attack.name, surrogate if transfer else model, x[part], labels[part],
                            list(config.epsilons[unit.attack.norm]), implementation=unit.implementation,
                            example_ids=examples[part], **_attack_params(config, unit))
        if transfer:
            result = transferred(result, model, labels[part], examples[part], judge=judge)
        elif judge is not None:
            result = judge.rejudged(result, labels[part], examples[part])
        views = [("single" if unit.attack.name in SINGLE_STEP else "any", result)]
        if result.last is not None:
            views.append(("last", result.last))
        output.records[records_path] = pd.concat(
            [attack_records(model=unit.model, attack=unit.attack.label, implementation=unit.implementation,
                            iterate=iterate, norm=unit.attack.norm, epsilons=view.epsilons, examples=examples[part],
                            labels=labels[part], x=x[part], x_adv=view.x_adv, logits=view.logits,
                            found_by=view.found_by, loss_rise=result.loss_rise) for iterate, view in views],
            ignore_index=True)
        if result.cost is not None:  # where the time went (per member of an ensemble): the report's cost table
            output.extra["cost"] = {"members": result.cost}
        checks = [check_result_validity(result, x[part], label=f"{unit.attack.label}/{unit.implementation}")]
        params = unit.attack.params
        members = members_of(params.get("version", "standard"), params.get("attacks"))
        if not transfer:  # a transfer row's outcomes are the model's, its `found_by` the surrogate's
            checks += check_ensemble(result, label=f"{unit.attack.label}/{unit.implementation}", members=members)
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
                  check_deterministic(model, x[part], example_ids=examples[part]),
                  check_gradients(model, x[part], labels[part], example_ids=examples[part]),
                  check_loss_stability(model, x[part], labels[part], seed=config.seed, example_ids=examples[part]),
                  *check_unbounded(model, x[part], labels[part], seed=config.seed, example_ids=examples[part])]
        output.extra["checks"] = [c.to_dict() for c in checks]
        output.extra["examples"] = unit.stop - unit.start
    elif unit.kind == "escalation":
        assert triggers is not None, "the escalation unit acts on what the model's checks found"
        escalate(output, config, unit, model, x[part], labels[part], examples[part], triggers, judge)
    else:  # pragma: no cover - plan() makes only the kinds above
        raise AssertionError(unit.kind)
    return output


EOT_PGD_STEPS = 100


def eot_attack(expected: keras.Model, x: np.ndarray, labels: np.ndarray, examples: np.ndarray, eps: float, *,
               norm: str, seed: int, judge: Judge) -> AttackResult:
    """EOT at one ε against a randomized model, on ``expected``, the rule's own prediction (the mean of
    ``judge.draws`` draws a call: :func:`advsweep.attacks.adaptive.randomized.mean_of_draws`, built once per escalation, so
    that its plan of model calls and compiled functions are made once): APGD-CE and APGD-DLR, AutoAttack's ``rand``
    members, with two calls of the mean per gradient (so that each runs every step and keeps its latest adversarial,
    as the authors' ``rand`` version), and PGD-100 on the mean's cross-entropy (step 2.5 ε / 100, random start,
    every step run; L∞ and L2). Per example the point kept is the first the rule judges adversarial of PGD's last
    iterate, APGD's point and PGD's first adversarial, else APGD's; the result's logits are the rule's judgement.
    Each ε runs on its own: an ensemble carries a point that fooled an example at one ε to every larger ε, which the
    rule, with other draws, may judge correct there, where a run at that ε goes deeper (on 40 images of the docs'
    noise model at ε = 0.2: 19% robust with carried points, 10% alone; PGD-100's last iterate 7.5%, FGSM 10%)."""
    from advsweep.attacks import run_attack

    settings = {"apgd-ce": {"eot_draws": 2}, "apgd-dlr": {"eot_draws": 2}}
    ensemble = run_attack("autoattack", expected, x, labels, [eps], attacks=["apgd-ce", "apgd-dlr"],
                          settings=settings, norm=norm, seed=seed, example_ids=examples)
    if eps == 0 or norm not in ("linf", "l2"):
        return judge.rejudged(ensemble, labels, examples)
    pgd = run_attack("pgd", expected, x, labels, [eps], norm=norm, steps=EOT_PGD_STEPS,
                     rel_stepsize=2.5 / EOT_PGD_STEPS, loss="ce", early_stop=False, random_start=True, seed=seed,
                     example_ids=examples)
    views = [pgd.last if pgd.last is not None else pgd, ensemble, pgd]  # the ensemble's point is choice 1
    judged = [judge.logits(view.x_adv[0], examples) for view in views]
    fooled = np.stack([logits.argmax(-1) != labels for logits in judged])  # (views, N)
    choice = np.where(fooled.any(axis=0), np.argmax(fooled, axis=0), 1)
    rows = np.arange(len(x))
    x_adv = np.stack([view.x_adv[0] for view in views])[choice, rows][None]
    logits = np.stack(judged)[choice, rows][None]
    base = ensemble.found_by[0] if ensemble.found_by is not None else np.full(len(x), "", dtype=object)
    found_by = np.where(choice == 1, base, "eot-pgd")
    success = logits.argmax(-1) != labels[None]
    cost = dict(ensemble.cost or {})
    cost.update({f"eot-pgd{EOT_PGD_STEPS}": next(iter((pgd.cost or {"": {}}).values()))} if pgd.cost else {})
    return dataclasses.replace(ensemble, x_adv=x_adv, logits=logits, success=success,
                               found_by=np.where(success[0], found_by, "")[None].astype(str), cost=cost,
                               evaluations=(ensemble.evaluations or 0) + (pgd.evaluations or 0))


def each_eps(grid: tuple[float, ...], attack: Callable[[float], AttackResult]) -> AttackResult:
    """One attack run at each ε of ``grid`` on its own, its results stacked as one result over the grid (evaluations
    and costs summed; a member's loss trace, found-by and points per ε)."""
    results = [attack(float(eps)) for eps in grid]
    cost: dict[str, dict[str, float]] = {}
    for result in results:
        for member, spent in (result.cost or {}).items():
            total = cost.setdefault(member, {"examples": 0, "seconds": 0.0, "forward": 0, "gradient": 0})
            total["examples"] = max(total["examples"], spent.get("examples", 0))
            for key in ("seconds", "forward", "gradient"):
                total[key] += spent.get(key, 0)
    traces = [r.loss_rise for r in results]
    return dataclasses.replace(
        results[0], epsilons=np.concatenate([r.epsilons for r in results]),
        x_adv=np.concatenate([r.x_adv for r in results]), logits=np.concatenate([r.logits for r in results]),
        success=np.concatenate([r.success for r in results]), last=None,
        found_by=None if any(r.found_by is None for r in results) else np.concatenate([r.found_by for r in results]),
        evaluations=sum(r.evaluations or 0 for r in results), cost=cost or None,
        loss_rise=None if all(t is None for t in traces) else np.concatenate(
            [t if t is not None else np.full(r.success.shape, np.nan, np.float32)
             for t, r in zip(traces, results, strict=True)]))


def escalate(output: UnitOutput, config: SweepConfig, unit: Unit, model: keras.Model, x: np.ndarray,
             labels: np.ndarray, examples: np.ndarray, triggers: dict[str, Any], judge: Judge | None) -> None:
    """The adaptive attacks the checks call for (:func:`escalation_triggers`), on every norm of the sweep's grids,
    each written as its own records (attack ``escalated-…``, so labelled in every table, figure and the report) with
    its cost; nothing where no check fired. EOT: :func:`eot_attack` at each ε, its points judged by the rule. BPDA:
    APGD-CE and APGD-T through the model with its non-differentiable layers' backward pass replaced by the identity
    (:mod:`advsweep.attacks.adaptive.bpda`), their points judged by the real model; and Square with
    ``escalation.square_queries`` queries."""
    import time

    from advsweep.attacks import predict_logits, run_attack
    from advsweep.attacks.adaptive.bpda import non_differentiable_layers, straight_through_model
    from advsweep.attacks.evaluation.checks import check_result_validity

    summary: dict[str, Any] = {"why": triggers["why"], "ran": [], "layers": [], "seconds": {}}
    output.extra["escalation"] = summary
    if not (triggers["eot"] or triggers["bpda"]):
        return
    runs: list[tuple[str, Callable[[str, tuple[float, ...]], AttackResult]]] = []
    if triggers["eot"]:
        from advsweep.attacks.adaptive.randomized import mean_of_draws

        assert judge is not None, "EOT is for a randomized model, whose points the rule judges"
        expected = mean_of_draws(model, judge.draws)
        runs.append(("eot", lambda norm, grid: each_eps(grid, lambda eps: eot_attack(
            expected, x, labels, examples, eps, norm=norm, seed=config.seed, judge=judge))))
    if triggers["bpda"]:
        layers = list(config.escalation.layers) or non_differentiable_layers(model, x[:BPDA_PROBES], seed=config.seed)
        summary["layers"] = layers
        if layers:
            surrogate = straight_through_model(model, layers)

            def bpda(norm: str, grid: tuple[float, ...]) -> AttackResult:
                crafted = run_attack("autoattack", surrogate, x, labels, list(grid), attacks=["apgd-ce", "apgd-t"],
                                     norm=norm, seed=config.seed, example_ids=examples)
                logits = np.stack([predict_logits(model, points, example_ids=examples) for points in crafted.x_adv])
                fooled = logits.argmax(axis=-1) != labels[None]
                return dataclasses.replace(crafted, logits=logits, success=fooled, last=None,
                                           found_by=None if crafted.found_by is None else
                                           np.where(fooled, crafted.found_by, ""))
            runs.append(("bpda", bpda))
        else:
            summary["why"] = summary["why"] + ["no layer with a zero gradient and a moving output was found at the "
                                               "model's top level: name it in `escalation.layers` for BPDA"]
        queries = config.escalation.square_queries
        runs.append((f"square{queries}", lambda norm, grid: run_attack(
            "square", model, x, labels, list(grid), queries=queries, norm=norm, seed=config.seed,
            example_ids=examples)))
    checks = []
    for name, attack in runs:
        for norm, grid in config.epsilons.items():
            label = f"escalated-{name}-{norm}"
            started = time.perf_counter()
            result = attack(norm, grid)
            if judge is not None and name != "eot":  # EOT's points are judged where it chooses them
                result = judge.rejudged(result, labels, examples)
            seconds = time.perf_counter() - started
            summary["ran"].append(label)
            summary["seconds"][label] = seconds
            output.records[f"records/{unit.model}/{label}--own.parquet"] = attack_records(
                model=unit.model, attack=label, implementation="own", iterate="any", norm=norm,
                epsilons=result.epsilons, examples=examples, labels=labels, x=x, x_adv=result.x_adv,
                logits=result.logits, found_by=result.found_by, loss_rise=result.loss_rise)
            cost = result.cost or {name: {"examples": len(x), "seconds": seconds, "forward": 0, "gradient": 0}}
            output.extra.setdefault("cost", {"members": {}})["members"].update(
                {f"{label}: {member}": value for member, value in cost.items()})
            checks.append(check_result_validity(result, x, label=f"{label}/own"))
    output.extra["checks"] = [c.to_dict() for c in checks]


class Judge:
    """A randomized model's judgement of points (:func:`advsweep.attacks.adaptive.randomized.judged_logits`): the mean of
    ``draws`` draws' probabilities, reproducible for the same points of the same examples."""

    def __init__(self, model: keras.Model, draws: int, seed: int):
        self.model, self.draws, self.seed = model, draws, seed

    def logits(self, x: np.ndarray, examples: np.ndarray) -> np.ndarray:
        from advsweep.attacks.adaptive.randomized import judged_logits

        return judged_logits(self.model, x, example_ids=examples, draws=self.draws, seed=self.seed)

    def rejudged(self, result: AttackResult, labels: np.ndarray, examples: np.ndarray) -> AttackResult:
        """``result`` with every view's points judged by the rule: their logits replaced, ``success`` recomputed
        and ``found_by`` cleared where the judged point is correct (an attack's lucky single draw is not a
        success)."""
        logits = np.stack([self.logits(points, examples) for points in result.x_adv])
        correct = logits.argmax(axis=-1) == labels[None]
        found_by = None if result.found_by is None else np.where(correct, "", result.found_by)
        last = None if result.last is None else self.rejudged(result.last, labels, examples)
        return dataclasses.replace(result, logits=logits, success=~correct, found_by=found_by, last=last)


def transferred(crafted: AttackResult, model: keras.Model, labels: np.ndarray, examples: np.ndarray, *,
                judge: Judge | None = None) -> AttackResult:
    """A transfer attack's result on ``model``: the adversarials found on the surrogate (``crafted``, its any-iterate
    view: the first adversarial at each ε, or its strongest point where none was found), classified by ``model``.
    ``found_by`` is ``"surrogate"`` where the point fooled the surrogate (the records keep it, and Pintor et al.'s
    transfer failure, a point that fooled the surrogate and not the model, is read off them); no loss trace, no
    last iterate: the model's own attack is not run."""
    from advsweep.attacks import AttackResult, predict_logits

    logits = np.stack([judge.logits(x_adv, examples) if judge is not None else
                       predict_logits(model, x_adv, example_ids=examples) for x_adv in crafted.x_adv])
    return AttackResult(epsilons=crafted.epsilons, x_adv=crafted.x_adv, logits=logits,
                        success=logits.argmax(axis=-1) != labels[None], norm=crafted.norm,
                        found_by=np.where(crafted.success, "surrogate", ""), evaluations=crafted.evaluations,
                        cost=crafted.cost)


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
    execution: dict[str, Any]  # the device kind and model-call plans the records are made under (execution_plan)
    randomized: dict[str, bool] = dataclasses.field(default_factory=dict)  # per model: judged by the rule


# A finished unit's output, with its wall time and the worker that ran it, handed to the driver to write.
Finish = Callable[[Unit, UnitOutput, float, dict[str, Any]], None]


def deterministic_kernels() -> None:
    """TensorFlow's deterministic kernels, in every process that runs units. They are a process-wide switch that
    cannot be turned off again, and ``train_model`` turns it on: without this, a sweep that trained its model and
    attacked it in the same process wrote other records (in the last bits) than the same sweep resumed after
    training. Measured: no cost in time on the CPU (PGD on both models, side by side)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------------------------
# what a run id vouches for

# The sources that compute records, per installed package: the defaults, the data sets and assets, the models, the
# attacks, the config's reading (it resolves every default into the config), the units and the record format. The
# plots, tables, report, command line and executors are left out: a change there leaves the run id alone, and
# `advsweep report RUN` rebuilds the outputs from the same records.
RECORD_SOURCES: dict[str, tuple[str, ...] | None] = {
    "advsweep": ("defaults.py", "lazy.py"),
    "advsweep.assets": None,  # None: every .py of the package
    "advsweep.models": None,
    "advsweep.attacks": None,
    "advsweep.experiments": ("config.py", "reporting/records.py", "units.py"),
}


def source_files(locations: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """The files of :data:`RECORD_SOURCES`, keyed by package and path inside it (``advsweep.attacks/gradient/pgd.py``), so
    that a checkout and an installed wheel of the same code give the same keys.

    Args:
        locations: the folder of each package; where the import system finds it if ``None``.
    """
    files: dict[str, Path] = {}
    for package, names in RECORD_SOURCES.items():
        if locations is not None:
            folder = Path(locations[package])
        else:
            spec = importlib.util.find_spec(package)
            assert spec is not None and spec.submodule_search_locations, package
            folder = Path(list(spec.submodule_search_locations)[0])
        paths = sorted(folder.rglob("*.py")) if names is None else [folder / name for name in names]
        for path in paths:
            files[f"{package}/{path.relative_to(folder).as_posix()}"] = path
    return files


def source_digest(locations: Mapping[str, Path] | None = None) -> str:
    """sha256 over the sources that compute records as they are on disk (each file's key and content), committed or
    not: an edited attack gives a new digest, hence a new run id, so a resumed run never mixes records of two code
    versions; an edited figure does not."""
    digest = hashlib.sha256()
    for key, path in sorted(source_files(locations).items()):
        digest.update(key.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def execution_plan(models: Mapping[str, keras.Model], device: str) -> dict[str, Any]:
    """The device-dependent choices that shape records: the device kind the units run on (``"cpu"`` or ``"gpu"``:
    the kernels round differently) and each model's plan of model calls (rows per call and packing, measured once
    per machine: :func:`advsweep.attacks.engine.plan.plan_of`). Part of the run's identity and manifest: a run's records
    are made under one plan, and Ray's workers use the driver's."""
    from advsweep.attacks.engine.plan import plan_of

    return {"device": device, "plans": {name: plan_of(model, device).to_dict() for name, model in models.items()}}
