"""Where an ``autoattack`` run's time goes: the seconds spent inside the model calls and outside them, and the rows
those calls held against the evaluations the run counts (``result.cost``: busy rows only). The difference is the
*idle* rows of the plan's calls (a round of 41 busy examples in a call of 44 rows pays for 3 it does not use), which
cost as much time as busy ones.

The engine's compiled calls are wrapped to time each call to its last byte (``.numpy()``) and count its rows, idle
ones apart (the engine fills an idle row with zeros, and no MNIST test image has every pixel within ε of zero at
the budgets here); the attack itself is the harness's ``autoattack`` as a sweep runs it. Works on any commit whose engine calls the model
through ``advsweep.attacks.engine.programme.logits_fn`` and ``loss_gradient_fn`` (to count a plan rule of an earlier commit,
``git checkout <commit> -- attacks/engine/plan.py``: a plan's cache key holds its rule's format, so that rule's own plan
is measured or read).

    python benchmarks/call_rows.py results/models/vgg16-<id> --examples 100 --eps 0.02 --reduced
    python benchmarks/call_rows.py results/models/madry_cnn-<id> --examples 300 --eps 0.3 --members apgd-t
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import autoattack  # noqa: E402
from advsweep.attacks.engine import programme as engine  # noqa: E402
from advsweep.attacks.engine.plan import plan_of  # noqa: E402
from advsweep.attacks.engine.spec import members_of  # noqa: E402
from advsweep.models.training import load_trained  # noqa: E402
from presets import REDUCED  # noqa: E402

SECONDS: collections.Counter[str] = collections.Counter()
ROWS: collections.Counter[str] = collections.Counter()
IDLE: collections.Counter[str] = collections.Counter()


class Done:
    """A call's output already fetched, standing in for the tensor the engine calls ``.numpy()`` on."""

    def __init__(self, value: np.ndarray):
        self.value = value

    def numpy(self) -> np.ndarray:
        return self.value


def timed(kind: str, call: Any) -> Any:
    def wrapped(*args: Any) -> Any:
        started = time.perf_counter()
        out = call(*args)
        values = [t.numpy() for t in out] if isinstance(out, (list, tuple)) else out.numpy()
        SECONDS[kind] += time.perf_counter() - started
        points = args[0].numpy()
        ROWS[kind] += len(points)
        IDLE[kind] += int((~points.reshape(len(points), -1).any(axis=1)).sum())  # the engine's idle rows are zeros
        return [Done(v) for v in values] if isinstance(values, list) else Done(values)

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a folder written by `advsweep train`")
    parser.add_argument("--examples", type=int, default=100, help="the first N test images (default 100)")
    parser.add_argument("--eps", type=float, required=True, help="the L∞ budget")
    parser.add_argument("--reduced", action="store_true", help="3 targets and 1000 Square queries")
    parser.add_argument("--members", default=None,
                        help="comma-separated members of the standard version (default: all four)")
    args = parser.parse_args()
    if not args.model_dir.is_dir():
        parser.error(f"{args.model_dir} is not a model folder: give one written by `advsweep train`")
    if args.examples < 1:
        parser.error(f"--examples must be at least 1, not {args.examples}")
    try:  # checked before the model is loaded, as the attack would check them
        members = members_of("standard", args.members.split(",") if args.members else None)
    except ValueError as error:
        parser.error(f"--members: {error}")

    forward, gradient = engine.logits_fn, engine.loss_gradient_fn
    engine.logits_fn = lambda model: timed("forward", forward(model))  # type: ignore[assignment]
    engine.loss_gradient_fn = lambda model, *a: timed("gradient", gradient(model, *a))  # type: ignore[assignment]
    model = load_trained(args.model_dir)[0]
    data = load_dataset("mnist")
    indices = np.arange(args.examples)
    x, y = data.test_images(indices), data.test_labels[indices].astype(np.int64)
    plan = plan_of(model)  # measured once per machine and cached: before the timing
    started = time.perf_counter()
    result = autoattack(model, x, y, [args.eps], example_ids=indices, settings=REDUCED if args.reduced else None,
                        attacks=list(members))
    seconds = time.perf_counter() - started
    cost = result.cost or {}
    print(f"{args.model_dir.name}, first {args.examples} test images, L∞ ε = {args.eps:g}"
          f"{', reduced' if args.reduced else ''}; plan: gradient {plan.gradient.rows} rows ({plan.gradient_path}), "
          f"forward {plan.forward.rows} rows; robust {100 * (1 - result.success[0].mean()):.2f}%")
    print("\n| kind | rows called | of which idle | seconds in calls | rows per second |")
    print("|---|---|---|---|---|")
    for kind in ("gradient", "forward"):
        print(f"| {kind} | {ROWS[kind]} | {IDLE[kind]} ({100 * IDLE[kind] / max(ROWS[kind], 1):.1f}%) | "
              f"{SECONDS[kind]:.1f} | {ROWS[kind] / max(SECONDS[kind], 1e-9):.0f} |")
    print("\n| member | seconds | forward + gradient evaluations counted |")
    print("|---|---|---|")
    for name, c in cost.items():
        print(f"| {name} | {c.get('seconds', 0):.1f} | {int(c.get('forward', 0))} + {int(c.get('gradient', 0))} |")
    print(f"total {seconds:.1f} s, of which {seconds - sum(SECONDS.values()):.1f} s outside the model calls")


if __name__ == "__main__":
    main()
