"""How many draws a randomized model's judgement needs (advsweep.attacks.adaptive.randomized.DRAWS): two judgements of the
same test images with independent draws (seeds 0 and 1) for several draw counts, their accuracies, how many examples
they judge differently, and their time.

    python benchmarks/randomized_draws.py results/defenses/cnn_noise.keras \\
        --custom-objects experiments/configs/defenses/my_defense.py --examples 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a .keras classifier of MNIST whose logits change between calls")
    parser.add_argument("--custom-objects", default=None, help="the .py file that registers its own layers")
    parser.add_argument("--examples", type=int, default=1000, help="the first N test images (default 1000)")
    parser.add_argument("--draws", default="1,5,15,50", help="draw counts, comma-separated")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from advsweep.assets import load_dataset
    from presets import machine
    from advsweep.attacks.adaptive.randomized import judged_logits
    from advsweep.experiments.config import ModelSpec
    from advsweep.experiments.units import classifier_from_file

    tf.config.experimental.enable_op_determinism()  # as a sweep runs
    data = load_dataset("mnist")
    spec = ModelSpec(name="model", path=args.model,
                     custom_objects=(str(Path(args.custom_objects).resolve()),) if args.custom_objects else ())
    model = classifier_from_file(Path(args.model), spec, data.info, written_by_train=False)
    x, y = data.test_images(np.arange(args.examples)), data.test_labels[: args.examples]
    ids = np.arange(args.examples)
    print(f"{args.model}, first {args.examples} test images, {machine()}\n")
    print("| draws | accuracy (seed 0 / seed 1) | examples judged differently | seconds for both |\n|---|---|---|---|")
    for draws in (int(d) for d in args.draws.split(",")):
        started = time.perf_counter()
        first = judged_logits(model, x, example_ids=ids, draws=draws, seed=0).argmax(-1)
        second = judged_logits(model, x, example_ids=ids, draws=draws, seed=1).argmax(-1)
        print(f"| {draws} | {np.mean(first == y):.1%} / {np.mean(second == y):.1%} | "
              f"{np.mean(first != second):.1%} ({int(np.sum(first != second))}) | {time.perf_counter() - started:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
