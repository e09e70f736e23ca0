"""How the attack engine calls a model on this machine: rows per call, and how examples are packed into a call.

A model call's floats depend on its shape (TensorFlow's CPU kernels round differently at other batch sizes), so an
attack's result depends on the rows per call: the engine always calls a model with the same number of rows, the
plan's, zero rows where fewer examples are busy. Which number is fastest depends on the model and the machine
(light models on a CPU gain several times from 1 to 64 rows, a heavy one much less; a GPU wants many), so it is
*measured*, once per model architecture and machine, and kept in the cache (``plans/`` under
:func:`advsweep.assets.resolver.cache_dir`): every later run on the machine uses the same plan, and a sweep names it
in its manifest and its run id, so that records made under two plans are never mixed.

The measurement times the input gradient (on each gradient path the model has: the plain tape, and for a frozen
VGG16 base the custom backward passes, whose speed against the tape depends on the CPU) and the forward pass at 1, 8,
16, 32, 64, 128 and 256 rows per call, keeps the faster gradient path (``gradient="auto"``, every attack's default),
and takes, for each kind of call, the number of rows whose **expected round** is cheapest (:func:`round_cost`):
a round evaluates however many examples are busy, from one (the last robust example of an attack) to hundreds, in
``⌈busy / rows⌉`` calls, and the idle rows of the last call cost as much as busy ones. Large calls are cheaper per
row, small calls waste less; the rule weighs both, every number of busy examples from 1 to 256 counted alike.

It also checks whether a row's result depends on its position in the call (the rows of one call permuted): where it
does not, the engine packs the busy examples into as few calls as possible (``free``); where it does, an example
always takes row ``example_id % rows`` and the calls of a round hold the examples of each row one after the other.
Either way an example's floats depend on its own point alone, never on the others of its chunk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
import weakref
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.assets.resolver import cache_dir

CANDIDATE_ROWS = (1, 8, 16, 32, 64, 128, 256)
BUSY = np.arange(1, 257)  # the numbers of busy examples a round is costed at (round_cost)
SECONDS_PER_SIZE = 0.25  # timing per candidate and evaluation kind (after one warm-up call)


@dataclasses.dataclass(frozen=True)
class Plan:
    """``rows`` per model call, and whether an example may take any row of a call (``free``) or must sit in row
    ``example_id % rows``."""

    rows: int
    free: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "free": self.free}


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """The plans of one model on one device: for gradient calls (APGD, APGD-T, FAB-T) and for forward calls (Square),
    the gradient path every attack takes with ``gradient="auto"`` (``"fast"``: custom backward passes through a
    frozen VGG16 base, or ``"plain"``: the tape), and the measurement they came from (images per second at each
    candidate, per kind of call)."""

    gradient: Plan
    forward: Plan
    gradient_path: str = "plain"
    measured: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"gradient": self.gradient.to_dict(), "forward": self.forward.to_dict(),
                "gradient_path": self.gradient_path}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> ModelPlan:
        return cls(gradient=Plan(**value["gradient"]), forward=Plan(**value["forward"]),
                   gradient_path=value["gradient_path"], measured=value.get("measured", {}))


UNMEASURED = ModelPlan(gradient=Plan(rows=256), forward=Plan(rows=256), gradient_path="plain")  # a device this process cannot time
_IN_USE: weakref.WeakKeyDictionary[Any, ModelPlan] = weakref.WeakKeyDictionary()


def use_plan(model: keras.Model, plan: ModelPlan | dict[str, Any]) -> None:
    """Make the engine call ``model`` with ``plan`` in this process (a sweep's unit: the plan its run id names)."""
    _IN_USE[model] = plan if isinstance(plan, ModelPlan) else ModelPlan.from_dict(plan)


def plan_of(model: keras.Model, device: str | None = None) -> ModelPlan:
    """The model's plan on this machine: the one in use (:func:`use_plan`), else the cached measurement, else a
    new measurement (a few seconds; cached). ``device``: ``"cpu"`` or ``"gpu"`` (default: where TensorFlow runs);
    for a device this process does not have (a CPU driver planning GPU workers), the cached plan if any, else
    :data:`UNMEASURED` (256 rows per call, each example in row ``example_id % 256``)."""
    from advsweep.attacks.core import device_kind

    device = device or device_kind()
    if model in _IN_USE and device == device_kind():
        return _IN_USE[model]
    path = cache_dir() / "plans" / f"{plan_key(model, device)}.json"
    if path.is_file():
        try:
            plan = ModelPlan.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            plan = None
        if plan is not None:
            _IN_USE[model] = plan
            return plan
    if device != device_kind():  # planned for other machines (a CPU driver of GPU workers): not measurable here
        return UNMEASURED
    plan = measure_plan(model)
    _write(path, {**plan.to_dict(), "measured": plan.measured})
    _IN_USE[model] = plan
    return plan


def plan_key(model: keras.Model, device: str) -> str:
    """What a plan depends on: the model's architecture (not its weights), the device and the machine's CPU, and
    TensorFlow's version."""
    try:
        architecture = json.dumps(model.get_config(), sort_keys=True, default=str)
    except (NotImplementedError, TypeError, ValueError):
        architecture = f"{type(model).__qualname__}/{model.count_params()}"
    machine = f"{device}/{cpu_name()}/{tf.__version__}/{platform.machine()}"
    return hashlib.sha256(f"{architecture}|{machine}".encode()).hexdigest()[:20]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), with ``+avx512`` where it has AVX-512."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or "unknown")
    return name + ("+avx512" if " avx512f" in info else "")


def measure_plan(model: keras.Model) -> ModelPlan:
    """Time the model's gradient calls (on each gradient path it has) and forward calls at each candidate size and
    pick the plans (module notes); the gradient path is the one with the higher best rate."""
    from advsweep.attacks.core import logits_fn, loss_gradient_fn
    from advsweep.models.common import has_fast_gradient

    shape = tuple(int(d) for d in model.input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.random((max(CANDIDATE_ROWS),) + shape, dtype=np.float32)
    classes = int(model.output_shape[-1])
    y = rng.integers(0, classes, max(CANDIDATE_ROWS))
    forward_call = logits_fn(model)

    def gradient_call(path: str) -> Any:
        function = loss_gradient_fn(model, "ce", path)
        return lambda rows: function(tf.constant(x[rows]), tf.constant(y[rows]))[2].numpy()

    calls = {f"gradient-{path}": gradient_call(path) for path in (("plain", "fast") if has_fast_gradient(model)
                                                                   else ("plain",))}
    calls["forward"] = lambda rows: forward_call(tf.constant(x[rows])).numpy()
    measured: dict[str, dict[str, float]] = {}
    plans: dict[str, Plan] = {}
    for kind, call in calls.items():
        rates = {}
        for rows in CANDIDATE_ROWS:
            call(np.arange(rows))
            count, started = 0, time.perf_counter()
            while count == 0 or time.perf_counter() - started < SECONDS_PER_SIZE:
                call(np.arange(rows))
                count += 1
            rates[rows] = rows * count / (time.perf_counter() - started)
            if rows >= 32 and time.perf_counter() - started > 4 * SECONDS_PER_SIZE:
                break  # a call takes seconds: larger calls cannot be measured quickly, nor are they needed
        rows = min(rates, key=lambda r: (round_cost(r, rates[r]), r))
        measured[kind] = {str(r): round(rate, 1) for r, rate in rates.items()}
        plans[kind] = Plan(rows=rows, free=position_free(call, rows))
    path = max((k for k in calls if k != "forward"), key=lambda k: max(measured[k].values())).split("-")[1]
    return ModelPlan(gradient=plans[f"gradient-{path}"], forward=plans["forward"], gradient_path=path,
                     measured=measured)


def round_cost(rows: int, rate: float) -> float:
    """The mean seconds of a round in calls of ``rows`` rows at ``rate`` rows per second, over 1 … 256 busy
    examples: ``mean(⌈busy / rows⌉ · rows) / rate``."""
    return float(np.mean(np.ceil(BUSY / rows) * rows) / rate)


def position_free(call: Any, rows: int) -> bool:
    """Whether, at ``rows`` rows per call, each row's result is the same to the bit wherever it sits in the call
    (``call(indices)`` evaluates those examples; three permutations)."""
    if rows == 1:
        return True
    reference = call(np.arange(rows))
    rng = np.random.default_rng(1)
    for _ in range(3):
        permutation = rng.permutation(rows)
        if not np.array_equal(call(permutation), reference[permutation]):
            return False
    return True


def _write(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{time.time_ns()}.part")
    partial.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    partial.replace(path)
