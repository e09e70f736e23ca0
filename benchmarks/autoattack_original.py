"""The harness's ``autoattack`` against the original AutoAttack (the authors' code, ``pyautoattack==0.2.0`` on the
package index), on the same model and examples, side by side in one run: robust accuracy, the examples on which the
two disagree, wall time, and model evaluations per example; per member of the ensemble, the seconds of each side;
and the harness's *model-call bound*: its own model evaluations (forward passes and gradients apart) times the
cost of one evaluation at the best rate measured on this machine (:func:`peak_rates`: each candidate call size of
``advsweep.attacks.engine.plan`` timed five times, the highest rate of all, measured before the harness's timing), the
time the model calls alone would take, and the fraction of it the harness reaches.

The original runs in PyTorch, as its users run it: the Keras model is ported layer by layer to a ``torch.nn`` module
with the same weights (convolutions, max pooling, flatten in Keras' NHWC order, dense layers: the small CNN and
Madry et al.'s CNN; and the frozen VGG16 classifier's padding, grey-to-RGB, caffe rescaling, VGG16 base and
standardised linear head), and the port's logits are checked against Keras' on the examples before anything is timed. The
harness attacks the Keras model. Both use the standard version's settings (APGD-CE 100 steps; APGD-T and FAB-T 9
targets, 100 steps; Square 5000 queries), or with ``--reduced`` 3 targets and 1000 queries on both sides; the
original evaluates in batches of ``--batch-size`` (500 covers 300 images in one batch), its random seed fixed.
Each side is timed alone, one after the other, with the same threads (the harness's plan of model calls, measured
once per machine and cached, is measured or read before its timing starts, as the original's PyTorch needs no plan); model evaluations of the original are
counted in its module (rows of forward passes with and without a gradient). With ``--repeats K`` it runs K pairs,
the first side alternating (the original first in the odd pairs), prints every pair's seconds and ratio, and reports
the median seconds of each side and the median of the pairs' ratios: one run's ratio moves by ±10% with a shared
machine, and a machine that drifts between the two sides of a pair favours neither side over the pairs.

    python benchmarks/autoattack_original.py results/models/small_cnn-<id> --examples 300 --eps 0.1
    python benchmarks/autoattack_original.py results/models/madry_cnn-<id> --examples 300 --eps 0.3
    python benchmarks/autoattack_original.py results/models/vgg16-<id> --examples 100 --eps 0.02 --reduced
    python benchmarks/autoattack_original.py results/models/vgg16-<id> --examples 100 --eps 0.02 --reduced --repeats 3
    python benchmarks/autoattack_original.py results/models/small_cnn-<id> --examples 300 --eps 5 --norm l1

Needs the test extra (``torch==2.13.0``, ``pyautoattack==0.2.0``). Prints one Markdown table row per run, with the
CPU it ran on.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import autoattack  # noqa: E402
from advsweep.attacks.engine.plan import plan_of  # noqa: E402
from advsweep.models.training import load_trained  # noqa: E402
from presets import REDUCED, machine  # noqa: E402



class Counted(torch.nn.Module):
    """A module that counts the rows it is called on: with a gradient (``requires_grad`` input) or without."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.forward_rows = 0
        self.gradient_rows = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and images.requires_grad:
            self.gradient_rows += int(images.shape[0])
        else:
            self.forward_rows += int(images.shape[0])
        return self.module(images)


class NhwcFlatten(torch.nn.Module):
    """Keras' ``Flatten`` of channels-last maps, on PyTorch's channels-first ones."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.permute(0, 2, 3, 1).flatten(1)


class Lambda(torch.nn.Module):
    """A parameter-free step of the port (padding, grey to RGB, rescaling, standardisation)."""

    def __init__(self, function: Any):
        super().__init__()
        self.function = function

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.function(maps)


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers in order, nested models opened (the VGG16 classifier: preprocessing, base, head)."""
    flat: list[keras.layers.Layer] = []
    for layer in model.layers:
        flat.extend(_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return flat


def _channels(values: Any) -> torch.Tensor:
    return torch.tensor(np.asarray(values, np.float32)).reshape(1, -1, 1, 1)


def torch_port(model: keras.Model) -> torch.nn.Sequential:
    """The Keras model as a ``torch.nn.Sequential`` of NCHW images with the same weights: a chain of Conv2D,
    MaxPooling2D, Flatten and Dense layers (the small CNN, Madry et al.'s CNN), and the frozen VGG16 classifier's
    zero padding, grey-to-RGB concatenation, caffe rescaling and feature standardisation.

    Raises:
        ValueError: a layer the port does not know (it names the layer).
    """
    modules: list[torch.nn.Module] = []
    for layer in _layers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = (np.asarray(w) for w in layer.get_weights())
            size = kernel.shape[0]
            if layer.strides != (1, 1) or layer.dilation_rate != (1, 1) or kernel.shape[0] != kernel.shape[1]:
                raise ValueError(f"layer {layer.name!r}: only square, unstrided, undilated convolutions are ported")
            conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], size,
                                   padding=size // 2 if layer.padding == "same" else 0)
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            conv.bias.data = torch.from_numpy(bias)
            modules.append(conv)
        elif isinstance(layer, keras.layers.MaxPooling2D):
            if layer.pool_size != layer.strides or layer.padding != "valid":
                raise ValueError(f"layer {layer.name!r}: only valid max pooling with stride = pool size is ported")
            modules.append(torch.nn.MaxPool2d(layer.pool_size))
        elif isinstance(layer, keras.layers.Flatten):
            modules.append(NhwcFlatten())
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = (np.asarray(w) for w in layer.get_weights())
            dense = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
            dense.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
            dense.bias.data = torch.from_numpy(bias)
            modules.append(dense)
        elif isinstance(layer, keras.layers.ZeroPadding2D):
            (top, bottom), (left, right) = layer.padding
            modules.append(Lambda(lambda t, p=(left, right, top, bottom): torch.nn.functional.pad(t, p)))
        elif isinstance(layer, keras.layers.Concatenate) and layer.name == "grey_to_rgb":
            modules.append(Lambda(lambda t: t.repeat(1, 3, 1, 1)))
        elif isinstance(layer, keras.layers.Rescaling):
            scale, offset = _channels(layer.scale), _channels(layer.offset)
            modules.append(Lambda(lambda t, a=scale, b=offset: t * a + b))
        elif isinstance(layer, keras.layers.Normalization):
            mean, variance = (torch.tensor(np.asarray(v, np.float32)).reshape(1, -1) for v in (layer.mean, layer.variance))
            modules.append(Lambda(lambda t, m=mean, v=variance: (t - m) / torch.clamp(torch.sqrt(v), min=1e-7)))
        else:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) is not ported; the port knows Conv2D, "
                             f"MaxPooling2D, Flatten, Dense and the VGG16 classifier's preprocessing")
        activation = getattr(layer, "activation", None)
        if activation is keras.activations.relu:
            modules.append(torch.nn.ReLU())
        elif activation not in (None, keras.activations.linear):
            raise ValueError(f"layer {layer.name!r}: activation {activation.__name__} is not ported")
    return torch.nn.Sequential(*modules).eval()


THREAT_MODELS = {"linf": "Linf", "l2": "L2", "l1": "L1"}  # our names → the original's


def size(delta: np.ndarray, norm: str) -> np.ndarray:
    """Each row's perturbation size in ``norm``."""
    flat = np.abs(delta.reshape(len(delta), -1)).astype(np.float64)
    return flat.max(1) if norm == "linf" else flat.sum(1) if norm == "l1" else np.sqrt((flat ** 2).sum(1))


STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version's members, in order


def original_adversary(module: torch.nn.Module, eps: float, *, norm: str, seed: int, version: str = "standard",
                       attacks: tuple[str, ...] | None = None, reduced: bool = False) -> Any:
    """The original's ``AutoAttack`` with ``version``'s settings, or with ``attacks`` (of :data:`STANDARD`) alone
    with the standard version's settings (one restart each; 9 targets and 5000 Square queries, or with ``reduced``
    3 targets and 1000 queries)."""
    from pyautoattack import AutoAttack

    if attacks is None:
        return AutoAttack(module, norm=THREAT_MODELS[norm], eps=eps, version=version, seed=seed)
    adversary = AutoAttack(module, norm=THREAT_MODELS[norm], eps=eps, version="custom", seed=seed,
                           attacks=list(attacks))
    adversary.apgd.n_restarts = adversary.apgd_targeted.n_restarts = adversary.fab.n_restarts = 1
    targets, queries = (3, 1000) if reduced else (9, 5000)
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = targets
    adversary.square.n_queries = queries
    return adversary


def original_autoattack(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, reduced: bool,
                        batch_size: int, seed: int, norm: str = "linf", version: str = "standard"
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """The original ensemble's adversarials, and the time after each member (cumulative seconds)."""
    adversary = original_adversary(module, eps, norm=norm, seed=seed, version=version,
                                   attacks=STANDARD if reduced else None, reduced=reduced)
    times: dict[str, float] = {}

    class Members(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("robust accuracy after "):
                times[message.split()[3].rstrip(":").lower()] = float(message.split("total time ")[1].split()[0])

    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Members())
    logger.propagate = False
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv, times


def peak_rates(model: keras.Model, path: str, repeats: int = 5) -> tuple[float, float]:
    """The highest rates (rows per second) of the model's forward calls and of its input-gradient calls on ``path``
    over the plan's candidate call sizes, each size timed ``repeats`` times: a plan's own measurement times each
    size once for a quarter of a second, and on a shared machine one such timing can read a quarter below what
    the calls reach over minutes (Madry et al.'s CNN, 2026-12-06: 2,535 gradients/s in a plan's measurement, 3,107
    and 3,671 in this function's, in two runs), which would make the bound too lenient."""
    from advsweep.attacks.engine.plan import measure_rates, probe_calls

    forward, gradient = probe_calls(model)
    calls = (forward, gradient(path, "ce"))
    best = [max(max(measure_rates(call).values()) for _ in range(repeats)) for call in calls]
    return best[0], best[1]


@dataclasses.dataclass
class Side:
    """One timed run of one side: its seconds, which examples it left robust, and (the original) the seconds of its
    members and the rows its module evaluated, or (advsweep) its result, the bound and the rates it was measured at."""

    seconds: float
    robust: np.ndarray
    members: dict[str, float] = dataclasses.field(default_factory=dict)
    forward_rows: int = 0
    gradient_rows: int = 0
    result: Any = None
    bound: float = 0.0
    rates: tuple[float, float] = (0.0, 0.0)


def run_original(module: Counted, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> Side:
    """The original AutoAttack, timed, with the rows its module evaluated and each member's seconds."""
    module.forward_rows = module.gradient_rows = 0
    started = time.perf_counter()
    x_adv, times = original_autoattack(module, images, labels, args.eps, reduced=args.reduced,
                                       batch_size=args.batch_size, seed=args.seed, norm=args.norm,
                                       version=args.version)
    seconds = time.perf_counter() - started
    assert size((x_adv - images).numpy(), args.norm).max() <= args.eps * (1 + 1e-5) + 1e-5, \
        "the original left the ε-ball"
    with torch.no_grad():
        robust = (module.module(x_adv).argmax(1) == labels).numpy()
    members, previous = {}, 0.0
    for name, cumulative in times.items():
        members[name], previous = cumulative - previous, cumulative
    return Side(seconds, robust, members, module.forward_rows, module.gradient_rows)


def run_advsweep(model: keras.Model, x: np.ndarray, y: np.ndarray, indices: np.ndarray, args: argparse.Namespace,
                 path: str) -> Side:
    """The harness's ``autoattack``, timed, and its model-call bound at the best rates measured just before it."""
    best_forward, best_gradient = peak_rates(model, path)
    started = time.perf_counter()
    result = autoattack(model, x, y, [args.eps], norm=args.norm, version=args.version,
                        settings=REDUCED if args.reduced else None, example_ids=indices)
    seconds = time.perf_counter() - started
    assert size(result.x_adv[0] - x, args.norm).max() <= args.eps * (1 + 1e-5) + 1e-5, "advsweep left the ε-ball"
    cost = result.cost or {}
    bound = (sum(c["forward"] for c in cost.values()) / best_forward
             + sum(c["gradient"] for c in cost.values()) / best_gradient)
    return Side(seconds, ~result.success[0], result=result, bound=bound, rates=(best_gradient, best_forward))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a folder written by `advsweep train` (small CNN or Madry CNN)")
    parser.add_argument("--examples", type=int, default=300, help="the first N test images (default 300)")
    parser.add_argument("--eps", type=float, required=True, help="the budget, in --norm")
    parser.add_argument("--norm", choices=tuple(THREAT_MODELS), default="linf",
                        help="the threat model (default linf; l1: AutoAttack's L1 version on both sides)")
    parser.add_argument("--version", choices=("standard", "plus"), default="standard",
                        help="AutoAttack's version on both sides (default standard)")
    parser.add_argument("--reduced", action="store_true",
                        help="3 targets and 1000 Square queries on both sides (L∞ and L2 only)")
    parser.add_argument("--batch-size", type=int, default=500, help="the original's batch (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="pairs of runs, the first side alternating (default 1); the medians are reported")
    args = parser.parse_args()
    if args.reduced and (args.norm == "l1" or args.version != "standard"):
        parser.error("--reduced is for the standard version in L∞ and L2 (the L1 and plus settings differ)")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_trained(args.model_dir)[0] if args.model_dir.is_dir() else keras.saving.load_model(args.model_dir)
    data = load_dataset("mnist")
    indices = np.arange(args.examples)
    x, y = data.test_images(indices), data.test_labels[indices].astype(np.int64)

    module = Counted(torch_port(model))
    images, labels = torch.tensor(x.transpose(0, 3, 1, 2).copy()), torch.tensor(y)
    with torch.no_grad():
        keras_logits = model(x, training=False).numpy()
        gap = float(np.abs(module.module(images).numpy() - keras_logits).max()) / max(1.0, np.abs(keras_logits).max())
    if gap > 1e-4:
        raise SystemExit(f"the PyTorch port's logits differ from Keras' by {gap:.2e}: the port is wrong")

    plan = None
    pairs: list[tuple[Side, Side]] = []
    for pair in range(args.repeats):  # the first side alternates: a machine that drifts favours neither
        sides: dict[str, Side] = {}
        for name in ("original", "advsweep") if pair % 2 == 0 else ("advsweep", "original"):
            if name == "original":
                sides[name] = run_original(module, images, labels, args)
            else:
                if plan is None:  # measured once per machine and cached: not part of either side's time
                    started = time.perf_counter()
                    plan = plan_of(model)
                    plan_seconds = time.perf_counter() - started
                sides[name] = run_advsweep(model, x, y, indices, args, plan.gradient_path)
        pairs.append((sides["original"], sides["advsweep"]))
    assert plan is not None

    n = args.examples
    theirs, ours = pairs[0][0].robust, pairs[0][1].robust
    result = pairs[0][1].result
    cost = result.cost or {}
    forward = sum(c["forward"] for c in cost.values())
    gradient = sum(c["gradient"] for c in cost.values())
    same = all(np.array_equal(o.robust, theirs) and np.array_equal(a.robust, ours) for o, a in pairs)
    original_seconds = float(np.median([o.seconds for o, _ in pairs]))
    own_seconds = float(np.median([a.seconds for _, a in pairs]))
    ratio = float(np.median([o.seconds / a.seconds for o, a in pairs]))
    fraction = float(np.median([a.bound / a.seconds for _, a in pairs]))
    bound = float(np.median([a.bound for _, a in pairs]))
    print(f"{args.model_dir.name}, first {n} test images, {THREAT_MODELS[args.norm]} ε = {args.eps:g}, "
          f"{'reduced (3 targets, 1000 queries)' if args.reduced else args.version} version; CPU: {machine()}; "
          f"torch {torch.__version__}, TensorFlow {tf.__version__}, Keras {keras.__version__}; "
          f"port's largest logit difference {gap:.1e} (relative to the largest logit)")
    if args.repeats > 1:
        print(f"\n{args.repeats} pairs of runs, the first side alternating; the row below: the median seconds of each "
              "side, the median of the pairs' ratios and of their bound fractions. Robust examples "
              + ("the same in every run of each side" if same else "NOT the same in every run: see the pairs"))
        print("\n| pair | first | original s | advsweep s | original / advsweep | model-call bound (fraction) | "
              "robust % (original / advsweep) |")
        print("|---|---|---|---|---|---|---|")
        for i, (o, a) in enumerate(pairs):
            print(f"| {i + 1} | {'original' if i % 2 == 0 else 'advsweep'} | {o.seconds:.0f} | {a.seconds:.0f} | "
                  f"{o.seconds / a.seconds:.2f}× | {a.bound:.0f} s ({a.bound / a.seconds:.2f}) | "
                  f"{100 * o.robust.mean():.2f} / {100 * a.robust.mean():.2f} |")
    print("\n| model | n | ε | original robust % | advsweep robust % | robust here, fooled there / fooled here, robust "
          "there | original s | advsweep s | original / advsweep time | original evaluations per example "
          "(forward + gradient) | advsweep evaluations per example (forward + gradient) | model-call bound "
          "(fraction reached) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.model_dir.name} | {n} | {args.eps:g} | {100 * theirs.mean():.2f} | {100 * ours.mean():.2f} | "
          f"{int((ours & ~theirs).sum())} / {int((~ours & theirs).sum())} | {original_seconds:.0f} | "
          f"{own_seconds:.0f} | **{ratio:.2f}×** | "
          f"{pairs[0][0].forward_rows / n:.0f} + {pairs[0][0].gradient_rows / n:.0f} | "
          f"{forward / n:.0f} + {gradient / n:.0f} | {bound:.0f} s ({fraction:.2f}) |")
    print("\n| member | original s | advsweep s | advsweep evaluations per example attacked (forward + gradient) |")
    print("|---|---|---|---|")
    for name, c in cost.items():
        each = [(o.members.get(name, float("nan")), (a.result.cost or {})[name]["seconds"]) for o, a in pairs]
        print(f"| {name} | {' / '.join(f'{t:.0f}' for t, _ in each)} | {' / '.join(f'{t:.0f}' for _, t in each)} | "
              f"{c['forward'] / max(c['examples'], 1):.0f} + {c['gradient'] / max(c['examples'], 1):.0f} |")
    best_gradient, best_forward = pairs[-1][1].rates
    print(f"\nplan of model calls here: gradient {plan.gradient.rows} rows ({plan.gradient_path}, "
          f"{'free' if plan.gradient.free else 'by row'}), forward {plan.forward.rows} rows "
          f"({'free' if plan.forward.free else 'by row'}); best rates (five timings of each size, before the last "
          f"run) {best_gradient:.0f} gradients/s, {best_forward:.0f} forward/s; call sizes gradient "
          f"{list(plan.gradient.sizes)}, forward {list(plan.forward.sizes)}; {plan_seconds:.0f} s to measure or read the plan (before the timing)")
    print(f"test indices robust here and fooled there: {indices[ours & ~theirs].tolist()}; fooled here and robust "
          f"there: {indices[~ours & theirs].tolist()}")
    print("advsweep fooled by: " + ", ".join(f"{name} {int((result.found_by[0] == name).sum())}"  # type: ignore[index]
                                             for name in dict.fromkeys(("clean", *cost))))


if __name__ == "__main__":
    main()
