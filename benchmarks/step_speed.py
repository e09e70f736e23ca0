"""The NumPy work between an attack's model calls: one FAB step and one block of Square candidates, timed alone.

FAB's step (:func:`advsweep.attacks.ensemble.fab.fab_step`: two projections onto the linearised boundary and the mix) and
Square's candidates (``advsweep.attacks.ensemble.square.PROPOSALS``) run on a block of MNIST test images between two model
calls; this times them without a model, on the first ``--rows`` test images (default 270, the Madry CNN's robust
examples at ε = 0.3), each the best of ``--repeats`` timings. It imports nothing newer than those two functions, so
the same command times any commit of the harness (``git checkout REV -- attacks/ensemble/fab.py attacks/ensemble/square.py``).

    python benchmarks/step_speed.py
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks.ensemble.fab import fab_step  # noqa: E402
from presets import machine  # noqa: E402
from advsweep.attacks.ensemble.square import PROPOSALS  # noqa: E402

SQUARE_EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


def best_of(repeats: int, function: Callable[..., Any], *args: Any) -> float:
    """The least of ``repeats`` timings of ``function(*args)``, in milliseconds (after one call not timed)."""
    function(*args)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args)
        seconds.append(time.perf_counter() - started)
    return 1e3 * min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=270)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x0 = load_dataset("mnist").test_images(np.arange(args.rows))
    x1 = np.clip(x0 + rng.uniform(-0.3, 0.3, x0.shape).astype(np.float32), 0.0, 1.0)
    grads = rng.standard_normal(x0.shape).astype(np.float32)
    values = rng.standard_normal(args.rows).astype(np.float32)
    print(f"{args.rows} MNIST test images, best of {args.repeats} timings; CPU: {machine()}\n")
    print("| work | ms per block |")
    print("|---|---|")
    for norm in ("linf", "l2", "l1"):
        ms = best_of(args.repeats, fab_step, x1, x0, values, grads, norm, 0.1, 1.05)
        print(f"| FAB step, {norm} | {ms:.1f} |")
    for norm in ("linf", "l2", "l1"):
        eps = np.full(args.rows, SQUARE_EPS[norm])
        # a best point inside the ball and the box, as Square's always is
        x_best = np.clip(x0 + np.float32(SQUARE_EPS["linf"]) * np.where(rng.random(x0.shape) < 0.5, -1.0, 1.0)
                         .astype(np.float32), 0.0, 1.0) if norm == "linf" else x0
        for query in (5, 300, 3000):
            streams = [np.random.default_rng(k) for k in range(args.rows)]
            ms = best_of(args.repeats, PROPOSALS[norm], x0, x_best, eps, np.full(args.rows, query), 0.8, streams)
            print(f"| Square candidates, {norm}, query {query} | {ms:.2f} |")


if __name__ == "__main__":
    main()
