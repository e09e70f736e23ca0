"""Square Attack's model evaluations per second against the model-call bound: how much of its time goes to its own
bookkeeping (windows, signs, proposals, the engine's rounds) rather than to the model.

    python benchmarks/square_rate.py MODEL_DIR [--examples 100] [--eps 0.3] [--queries 1000] [--repeats 3]

For each of ``--repeats`` runs on the same examples (the same draws: the result is the same each time), it prints
Square's forward evaluations (``result.cost``), its seconds and their rate, and the *bound*: the seconds those
evaluations take at the model's peak forward rate, the best over the plan's candidate call sizes, each size timed
``--repeats`` times just before (as ``benchmarks/autoattack_original.py`` bounds the whole ensemble). The fraction
bound / seconds is the share of Square's time spent in model calls at their best size; the rest is its bookkeeping
and the calls made below the best size as examples are fooled and leave the block. The median over the runs is the
figure reported. Op determinism is on, as in a sweep's units (the plan is measured with it)."""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import run_attack  # noqa: E402
from advsweep.attacks.engine.plan import measure_rates, plan_of, probe_calls  # noqa: E402
from advsweep.experiments.config import select_examples  # noqa: E402
from advsweep.models.training import load_trained  # noqa: E402
from presets import machine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a folder written by `advsweep train`")
    parser.add_argument("--examples", type=int, default=100, help="N balanced test images (default 100)")
    parser.add_argument("--eps", type=float, default=0.3, help="the L∞ budget (default 0.3)")
    parser.add_argument("--queries", type=int, default=1000, help="Square's queries per run (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, and timings per call size (default 3)")
    args = parser.parse_args(argv)
    tf.config.experimental.enable_op_determinism()
    model = load_trained(args.model_dir)[0]
    data = load_dataset("mnist")
    chosen = select_examples(data.test_labels, count=args.examples, selection="balanced", seed=0)
    x, y = data.test_images(chosen), data.test_labels[chosen]
    plan = plan_of(model)
    forward = probe_calls(model)[0]
    peak = max(max(measure_rates(forward).values()) for _ in range(args.repeats))
    print(f"{args.model_dir}, {args.examples} balanced test images, L∞ ε = {args.eps:g}, {args.queries} queries; "
          f"forward plan {plan.forward.rows} rows (free: {plan.forward.free}); peak forward rate {peak:,.0f} rows/s; "
          f"{machine()}\n")
    print("| run | robust % | forward evaluations | seconds | evaluations / s | bound s (fraction) |")
    print("|---|---|---|---|---|---|")
    fractions = []
    for run in range(1, args.repeats + 1):
        started = time.perf_counter()
        result = run_attack("square", model, x, y, [args.eps], queries=args.queries, example_ids=chosen)
        seconds = time.perf_counter() - started
        forward_rows = int(sum(c["forward"] for c in (result.cost or {}).values()))
        bound = forward_rows / peak
        fractions.append(bound / seconds)
        print(f"| {run} | {100 * result.robust_accuracy[0]:.0f} | {forward_rows:,} | {seconds:.1f} | "
              f"{forward_rows / seconds:,.0f} | {bound:.1f} ({bound / seconds:.2f}) |")
    print(f"\nmedian fraction of the bound: {float(np.median(fractions)):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
