"""Own and foolbox PGD under equal bookkeeping, with the cross-entropy and the margin loss, on a trained model.

Both implementations run the same PGD from the same per-example random starts (seed 0), every step at every
ε (no early stop), and both report two views of the same run: *any-iterate* (an example is fooled at ε if
any point the attack evaluated inside the ε-ball, at this ε or a smaller one, was misclassified) and
*last iterate* (the point each run ends on: what foolbox returns). Prints robust accuracy in % per view,
and whether the two implementations' adversarials are identical.

    python benchmarks/bookkeeping.py results/models/vgg16-ce6e9f40c7 --examples 64
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from advsweep.assets import load_mnist  # noqa: E402
from advsweep.attacks import run_attack  # noqa: E402
from advsweep.models.training import load_trained, to_float_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a folder written by `advsweep train` or a sweep")
    parser.add_argument("--examples", type=int, default=64, help="the first N test images (default 64)")
    parser.add_argument("--eps", default="0.05,0.1,0.2,0.3", help="L∞ budgets")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rel-stepsize", type=float, default=0.1)
    args = parser.parse_args()
    model, config, _ = load_trained(args.model_dir)
    (_, _, x_test, y_test), _ = load_mnist()
    x, y = to_float_images(x_test[: args.examples]), y_test[: args.examples].astype(np.int64)
    grid = [float(e) for e in args.eps.split(",")]
    print(f"{config.model_id}, first {args.examples} test images, PGD-{args.steps} with steps of "
          f"{args.rel_stepsize} ε and random start (seed 0), every step at every ε\n")
    print("| loss | implementation | view | " + " | ".join(f"ε = {e:g}" for e in grid) + " |")
    print("|---|---|---|" + "---|" * len(grid))
    identical = {}
    for loss in ("ce", "margin"):
        results = {implementation: run_attack("pgd", model, x, y, grid, implementation=implementation, loss=loss,
                                              steps=args.steps, rel_stepsize=args.rel_stepsize, seed=0,
                                              early_stop=False)
                   for implementation in ("own", "foolbox")}
        for implementation, result in results.items():
            assert result.last is not None
            for view, shown in (("any-iterate", result), ("last iterate", result.last)):
                cells = " | ".join(f"{100 * a:.1f}" for a in shown.robust_accuracy)
                print(f"| {loss} | {implementation} | {view} | {cells} |")
        own, reference = results["own"], results["foolbox"]
        assert own.last is not None and reference.last is not None
        identical[loss] = (np.array_equal(own.x_adv, reference.x_adv)
                           and np.array_equal(own.last.x_adv, reference.last.x_adv))
    for loss, same in identical.items():
        print(f"\n{loss}: own and foolbox adversarials identical to the bit in both views: {same}")


if __name__ == "__main__":
    main()
