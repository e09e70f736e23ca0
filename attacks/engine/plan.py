"""How the attack engine calls a model on this machine: rows per call, and how examples are packed into a call.

A model call's floats may depend on its shape (TensorFlow's CPU kernels can round differently at other batch
sizes), so an attack's result would depend on the rows per call: the engine calls a model only with shapes whose
rows are *measured* to come out the same to the bit (the plan's ``sizes``; on many models every size from a few
rows up, on others only one), zero rows where fewer examples are busy than the smallest fitting size. Which number
is fastest depends on the model and the machine (light models on a CPU gain several times from 1 to 64 rows, a heavy
one much less; a GPU wants many), so it is
*measured*, once per model architecture and machine, and kept in the cache (``plans/`` under
:func:`advsweep.assets.resolver.cache_dir`): every later run on the machine uses the same plan, and a sweep names it
in its manifest and its run id, so that records made under two plans are never mixed.

The measurement times the input gradient (on each gradient path the model has: the plain tape, and for a frozen
VGG16 base the custom backward passes, whose speed against the tape depends on the CPU) and the forward pass at 1, 8,
16, 32, 64, 128 and 256 rows per call, keeps the faster gradient path over all sizes (:func:`faster_path`;
``gradient="auto"``, every attack's default), and takes, for each kind of call, the number of rows whose **expected
round** is cheapest (:func:`round_cost`): a round evaluates however many examples are busy, from one (the last robust
example of an attack) to hundreds, in calls of ``rows`` and a last call of the smallest of ``sizes`` that holds the
rest, whose idle rows cost as much as busy ones. Large calls are cheaper per row, small calls waste less; the rule
weighs both as the time of an attack whose rounds hold every number of busy examples from 1 to 256 equally often (as
when examples are fooled at any step alike), with the cost of a call fitted to all the measured sizes (a fixed cost
per call and a cost per row: :func:`call_seconds`), not read off one size's noisy timing.

It also checks whether a row's result depends on its position in the call (the rows of one call permuted): where it
does not, the engine packs the busy examples into as few calls as possible (``free``); where it does, an example
always takes row ``example_id % rows`` and the calls of a round hold the examples of each row one after the other.
And for a free plan it calls the model at every size of :data:`LADDER` up to ``rows``, each with its rows in a random
order, and keeps the sizes whose rows equal, to the bit, the same rows of the largest call (``sizes``): a round's
last call then takes the smallest of them that holds its examples, instead of ``rows`` rows of which most would be
idle (the last few robust examples of an attack on a heavy model). Either way an example's floats depend on its own
point alone, never on the others of its chunk nor on how many are busy.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import re
import time
import weakref
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advsweep.assets.resolver import cache_dir

CANDIDATE_ROWS = (1, 8, 16, 32, 64, 128, 256)
# sizes tried for `sizes`: every size to 64, then steps of 4 to 128 and of 8 to 256, so that a round of up to 64
# busy examples has no idle row (with steps of 4 from 16 to 64, the VGG16's rounds of 41 busy examples took calls
# of 44 rows: 4–6% of its calls' rows were idle, measured on AutoAttack)
LADDER = tuple(range(1, 65)) + tuple(range(68, 129, 4)) + tuple(range(136, 257, 8))
FORMAT = 6  # of a cached plan (part of its key): 2 added `sizes`, 3 the denser LADDER and the fitted round cost,
# 4 the round cost over rounds of every size alike, 5 the last two calls of a round sized as a pair (packing),
# 6 the LADDER of every size to 64
BUSY = np.arange(1, 257)  # the numbers of busy examples a round is costed at (round_cost)
SECONDS_PER_SIZE = 0.25  # timing per candidate and evaluation kind (after one warm-up call)


@dataclasses.dataclass(frozen=True)
class Plan:
    """``rows`` per model call, whether an example may take any row of a call (``free``) or must sit in row
    ``example_id % rows``, and the call sizes up to ``rows`` whose rows come out the same as in a call of ``rows``
    (``sizes``, ascending, ``rows`` last; a free plan's last call of a round takes the smallest that fits)."""

    rows: int
    free: bool = False
    sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        sizes = tuple(sorted({int(s) for s in self.sizes if 0 < int(s) < self.rows} | {self.rows}))
        object.__setattr__(self, "sizes", sizes if self.free else (self.rows,))

    def size_for(self, busy: int) -> int:
        """The rows of a call that holds ``busy`` (at most ``rows``) examples."""
        return next(s for s in self.sizes if s >= busy)

    def packing(self, busy: int) -> tuple[int, ...]:
        """The rows of each call of a round of ``busy`` examples in a free plan (:func:`packing`)."""
        return packing(self.sizes, busy)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "free": self.free, "sizes": list(self.sizes)}


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
        def plan(part: dict[str, Any]) -> Plan:
            return Plan(rows=int(part["rows"]), free=bool(part["free"]), sizes=tuple(part.get("sizes", ())))

        return cls(gradient=plan(value["gradient"]), forward=plan(value["forward"]),
                   gradient_path=value["gradient_path"], measured=value.get("measured", {}))


@functools.lru_cache(maxsize=4096)
def packing(sizes: tuple[int, ...], busy: int) -> tuple[int, ...]:
    """The call sizes of a round of ``busy`` examples, each of ``sizes`` (ascending, the plan's rows last): as few
    calls as ``rows`` allows, full calls of ``rows`` but for the last two, and those two the pair of sizes with the
    fewest rows that holds the rest (the larger first). Where the small sizes do not give a row the floats of a full
    call (Madry et al.'s CNN: the same only from 104 rows up), a round of 270 in calls of 256 is 160 + 112 rows (of the
    pairs of 272, the one whose larger call is largest), not 256 + 104: a round's idle rows cost as much as its busy ones."""
    rows = sizes[-1]
    if busy <= 0:
        return ()
    full = max(-(-busy // rows) - 2, 0)
    rest = busy - full * rows
    if rest <= rows:
        return (rows,) * full + (next(s for s in sizes if s >= rest),)
    pairs = [(a, next(s for s in sizes if s >= rest - a)) for a in sizes if 2 * a >= rest]
    a, b = min(((a, b) for a, b in pairs if b <= a), key=lambda pair: (pair[0] + pair[1], -pair[0]))
    return (rows,) * full + (a, b)


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
    from advsweep.attacks.engine.core import device_kind

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
    """What a plan depends on: the model's architecture (not its weights), the device and the machine's CPU,
    TensorFlow's version, and whether its deterministic kernels are on (they are other kernels: a sweep's units run
    with them, a benchmark without)."""
    try:
        architecture = architecture_text(model)
    except (NotImplementedError, TypeError, ValueError):
        architecture = f"{type(model).__qualname__}/{model.count_params()}"
    from tensorflow.python.framework import config as tf_config  # no public getter for it

    deterministic = "deterministic" if tf_config.is_op_determinism_enabled() else "default"
    machine = f"{device}/{cpu_name()}/{tf.__version__}/{platform.machine()}/{deterministic}/plan-format-{FORMAT}"
    return hashlib.sha256(f"{architecture}|{machine}".encode()).hexdigest()[:20]


def architecture_text(model: keras.Model) -> str:
    """The model's configuration as sorted JSON, without what is not its architecture: its compile settings, and
    the layer names Keras generated (``dense_3``, ``input_layer_1``: a counter of the layers built so far in the
    process), each replaced by its class's name and its order of appearance. So the same architecture has the same
    key whether it was built first or tenth in a process, loaded from a file or compiled; names a user gave are
    kept."""
    config = model.get_config()
    generated: dict[str, str] = {}

    def visit(value: Any) -> Any:
        if isinstance(value, dict):
            name, kind = value.get("name"), value.get("class_name")
            if isinstance(name, str) and isinstance(kind, str) and isinstance(value.get("config"), dict):
                _generated(name, kind, generated)
            return {k: visit(v) for k, v in value.items() if k != "compile_config"}
        return [visit(v) for v in value] if isinstance(value, list) else value

    _generated(str(config.get("name", "")), type(model).__name__, generated)
    text = json.dumps(visit(config), sort_keys=True, default=str)
    for name, canonical in generated.items():
        text = text.replace(json.dumps(name), json.dumps(canonical))
    return text


def _generated(name: str, kind: str, generated: dict[str, str]) -> None:
    """Record ``name`` in ``generated`` when it is the one Keras gives a layer of class ``kind`` by default (its class
    in snake case, as Keras writes it, with an optional ``_<n>``)."""
    snake = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", kind)).lower()
    if name not in generated and re.fullmatch(re.escape(snake) + r"(_\d+)?", name):
        generated[name] = f"<{snake} {len(generated)}>"


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
    pick the plans (module notes); the gradient path is the faster one over all sizes (:func:`faster_path`)."""
    from advsweep.models.common import has_fast_gradient

    forward_call, gradient_call = probe_calls(model)
    classes = forward_call([0]).shape[1]  # from the logits: a model's declared output shape may leave it open
    calls = {f"gradient-{path}": gradient_call(path, "ce") for path in (("plain", "fast") if has_fast_gradient(model)
                                                                         else ("plain",))}
    calls["forward"] = forward_call
    measured = {kind: measure_rates(call) for kind, call in calls.items()}
    path = faster_path({k.split("-")[1]: rates for k, rates in measured.items() if k != "forward"})
    # the rows' floats are compared through the DLR loss: on random images a model's logits are often extreme, the
    # cross-entropy's gradient then exactly one-hot, and a backward pass from it can agree where a general one
    # (an attack's, on real images) does not (measured on the VGG16 and the small CNN: calls below 16 rows)
    plans = {"gradient": best_plan(gradient_call(path, "dlr"), measured[f"gradient-{path}"], also=loss_call(classes)),
             "forward": best_plan(calls["forward"], measured["forward"])}
    return ModelPlan(gradient=plans["gradient"], forward=plans["forward"], gradient_path=path,
                     measured={kind: {str(r): round(rate, 1) for r, rate in rates.items()}
                               for kind, rates in measured.items()})


def probe_calls(model: keras.Model) -> tuple[Any, Any]:
    """The calls a plan is measured with, on fixed random images of the model's input shape (and random labels):
    ``forward(indices)``, the logits of those images; ``gradient(path, loss)``, a call ``(indices) ->`` the logits,
    the loss and its input gradient on ``path``, each row one line."""
    from advsweep.attacks.engine.core import logits_fn, loss_gradient_fn

    shape = tuple(int(d) for d in model.input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.random((max(CANDIDATE_ROWS),) + shape, dtype=np.float32)
    logits = logits_fn(model)
    y = rng.integers(0, int(logits(tf.constant(x[:1])).shape[1]), max(CANDIDATE_ROWS))

    def gradient(path: str, loss: str) -> Any:
        function = loss_gradient_fn(model, loss, path)
        return lambda rows: np.concatenate([t.numpy().reshape(len(rows), -1) for t in
                                            function(tf.constant(x[rows]), tf.constant(y[rows]))], axis=1)

    return (lambda rows: logits(tf.constant(x[rows])).numpy()), gradient


def faster_path(rates: dict[str, dict[int, float]]) -> str:
    """The gradient path with the higher geometric mean of its rates over the sizes measured on every path: the two
    paths of the VGG16 differ by a few percent, less than one timing's noise on a shared machine, and a mean over
    the sizes decides that more steadily than the best size alone."""
    common = sorted(set.intersection(*(set(r) for r in rates.values())))
    return max(rates, key=lambda path: (float(np.mean(np.log([rates[path][size] for size in common]))), path == "plain"))


def loss_call(classes: int) -> Any:
    """Every loss the attacks ascend and its gradient with respect to the logits, on fixed logits ``(256, C)``, each
    row one line, as a gradient call computes them (:func:`advsweep.attacks.engine.core.padded_loss`): a gradient call
    composes one of them with the model's backward pass (which is checked with the DLR loss)."""
    from advsweep.attacks.engine.core import ALL_LOSSES, PAIRED_LOSSES, padded_loss

    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 4.0, (max(CANDIDATE_ROWS), classes)).astype(np.float32)
    labels = rng.integers(0, classes, max(CANDIDATE_ROWS))
    pairs = np.stack([labels, (labels + 1 + rng.integers(0, classes - 1, len(labels))) % classes], 1)

    @tf.function(input_signature=[tf.TensorSpec((None, classes), tf.float32), tf.TensorSpec((None,), tf.int64),
                                  tf.TensorSpec((None, 2), tf.int64)])
    def values_and_gradients(z: tf.Tensor, y: tf.Tensor, yt: tf.Tensor) -> list[tf.Tensor]:
        out = []
        for loss in ALL_LOSSES:
            with tf.GradientTape() as tape:
                tape.watch(z)
                values = padded_loss(z, yt if loss in PAIRED_LOSSES else y, loss)
                total = tf.reduce_sum(values)
            out += [values[:, None], tape.gradient(total, z)]
        return out

    return lambda rows: np.concatenate([t.numpy() for t in values_and_gradients(
        tf.constant(logits[rows]), tf.constant(labels[rows]), tf.constant(pairs[rows]))], axis=1)


def measure_rates(call: Any) -> dict[int, float]:
    """Rows per second of ``call(indices)`` at each of :data:`CANDIDATE_ROWS` (after one warm-up call each)."""
    rates: dict[int, float] = {}
    for rows in CANDIDATE_ROWS:
        call(np.arange(rows))
        count, started = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - started < SECONDS_PER_SIZE:
            call(np.arange(rows))
            count += 1
        rates[rows] = rows * count / (time.perf_counter() - started)
        if rows >= 32 and time.perf_counter() - started > 4 * SECONDS_PER_SIZE:
            break  # a call takes seconds: larger calls cannot be measured quickly, nor are they needed
    return rates


def best_plan(call: Any, rates: dict[int, float], also: Any = None) -> Plan:
    """The plan of the cheapest expected round (:func:`round_cost`) among the measured sizes, each with the call
    sizes that give its rows the same floats (:func:`same_rows`; of ``also`` too, where given).

    The sizes are checked only as far as a candidate needs them: a candidate's round cannot be cheaper than with
    every size it may still have (those checked and found the same, and the unchecked sizes of :data:`LADDER` up to
    its rows), so candidates are taken in the order of that bound, and the search ends at the first whose bound is
    no better than the best plan checked. The plan is the one checking every size would give; on a heavy model the
    calls of 144 … 256 rows a plan of 128 does not need are not made (half of the VGG16's check, some 15 s a
    measurement)."""
    largest = max(rates)
    same = _SameRows(call, largest, also)

    def key(plan: Plan) -> tuple[float, int]:
        return round_cost(plan, rates), plan.rows

    best: Plan | None = None
    remaining = set(rates)
    while remaining:
        bound, rows = min(key(Plan(rows=r, free=True, sizes=same.possible(r))) for r in remaining)
        if best is not None and (bound, rows) >= key(best):
            break
        remaining.remove(rows)
        sizes = same.upto(rows)
        if rows in sizes:  # its rows, permuted, equal the reference's: free, and so are the smaller sizes in `same`
            plan = Plan(rows=rows, free=True, sizes=sizes)
        else:
            plan = Plan(rows=rows, free=position_free(call, rows))
        best = plan if best is None or key(plan) < key(best) else best
    assert best is not None
    return best


def same_rows(call: Any, largest: int) -> tuple[int, ...]:
    """The sizes of :data:`LADDER` up to ``largest`` at which a call's rows, in a random order, equal to the bit
    the same rows of one call of ``largest`` rows (whatever the size and position of a row, its result is the same)."""
    return _SameRows(call, largest).upto(largest)


class _SameRows:
    """:func:`same_rows` (of ``call``, and of ``also`` where given), checked size by size up the ladder as far as it
    is asked (``upto``): each size's random order is the one the whole ladder's check would draw."""

    def __init__(self, call: Any, largest: int, also: Any = None):
        self.checks = [(c, c(np.arange(largest))) for c in (call, also) if c is not None]
        self.rng = np.random.default_rng(2)
        self.ladder = [s for s in LADDER if s <= largest]
        self.checked = 0
        self.same: list[int] = []

    def upto(self, rows: int) -> tuple[int, ...]:
        while self.checked < len(self.ladder) and self.ladder[self.checked] <= rows:
            size = self.ladder[self.checked]
            order = self.rng.permutation(size)
            if all(np.array_equal(c(order), reference[order]) for c, reference in self.checks):
                self.same.append(size)
            self.checked += 1
        return tuple(s for s in self.same if s <= rows)

    def possible(self, rows: int) -> tuple[int, ...]:
        """The sizes up to ``rows`` that may yet be the same: those checked and found so, and those not checked."""
        return tuple(s for s in self.same if s <= rows) + tuple(s for s in self.ladder[self.checked:] if s <= rows)


def call_seconds(rates: dict[int, float]) -> tuple[float, float]:
    """``(overhead, per_row)``: a call of ``s`` rows taking ``overhead + per_row · s`` seconds, fitted to the measured
    rates (least squares on the relative error, each size alike). Each rate is a fraction of a second of calls on a
    shared machine and varies by a few tens of percent from one measurement to the next; a heavy model's rate is
    nearly the same at every size, so that reading the noise of single sizes picked its plan by chance (the VGG16's
    gradient calls: 180 rows/s measured at 16 rows, 130 at 32, 150 at 64). Two parameters fitted to all sizes keep
    what the sizes say together: the fixed cost a call pays and the cost of a row."""
    sizes = np.array(sorted(rates), dtype=np.float64)
    seconds = sizes / np.array([rates[int(s)] for s in sizes])
    (overhead, per_row), *_ = np.linalg.lstsq(np.stack([1.0 / seconds, sizes / seconds], axis=1),
                                              np.ones_like(sizes), rcond=None)
    return max(float(overhead), 0.0), max(float(per_row), 1e-12)


def round_cost(plan: Plan, rates: dict[int, float]) -> float:
    """Seconds per busy example of an attack whose rounds hold 1 … 256 busy examples equally often, in ``plan``'s
    calls (:func:`packing`), each call of ``s`` rows taking :func:`call_seconds`'s ``overhead + per_row · s``; the
    rounds' total time over their total busy examples.

    The rounds an attack makes depend on the model: on a natural one most examples are fooled in the first steps
    and the last rounds hold a few, on an adversarially trained one nearly every round holds every example. Rounds
    of every size alike sit between the two. Averaging per busy example over the sizes instead (each size's seconds
    per example counted alike) weighs a round of one example as much as one of 256 and took 16-row calls for Madry
    et al.'s CNN, whose calls give the same floats only from 104 or 128 rows up (two measurements): its APGD-T
    rounds of 270 examples then took 17 calls (measured 2026-12-06: APGD-T 174 s against the original's 114 s)."""
    overhead, per_row = call_seconds(rates)
    shapes = [plan.packing(int(busy)) for busy in BUSY]
    return float(sum(len(s) * overhead + per_row * sum(s) for s in shapes) / np.sum(BUSY))


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
