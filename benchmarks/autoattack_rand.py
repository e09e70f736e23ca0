"""AutoAttack's ``rand`` version against its standard version on a randomized model, and against the authors' ``rand``.

The model: a trained classifier behind a layer that adds fresh Gaussian noise (σ = ``--sigma``) to its input at every
call, inference included, so that its logits change between two calls on one input (the harness' determinism check
fails it and recommends ``rand``). On the first ``--examples`` test images at L∞ ``--eps``, prints the robust
accuracy (and seconds) under the harness' standard version, its ``rand`` version (APGD-CE and APGD-DLR, each gradient
averaged over 20 draws), and with ``--reference`` the authors' ``rand`` version (``pyautoattack``'s
``AutoAttack(version='rand')``) on the same Keras model through ``benchmarks/autoattack_reference.py``'s bridge (its
backward pass draws its own noise: each gradient is of some draw, as EOT needs, not of the forward pass's). Each side
draws its own noise: the numbers vary by a few examples from run to run.

    python benchmarks/autoattack_rand.py results/models/small_cnn-2f0f82e300 --examples 100 --eps 0.1 --reference

Needs the test extra for ``--reference`` (``torch==2.13.0``, ``pyautoattack==0.2.0``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import autoattack  # noqa: E402
from advsweep.attacks.evaluation.checks import check_deterministic  # noqa: E402
from advsweep.models.training import load_trained  # noqa: E402
from presets import machine  # noqa: E402


class NoisyInput(keras.layers.Layer):
    """Fresh Gaussian noise on the input at every call, inference included."""

    def __init__(self, sigma: float, **kwargs):
        super().__init__(**kwargs)
        self.sigma, self.draws = sigma, keras.random.SeedGenerator(1)

    def call(self, inputs):
        return inputs + keras.random.normal(keras.ops.shape(inputs), stddev=self.sigma, seed=self.draws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a folder written by `advsweep train`")
    parser.add_argument("--examples", type=int, default=100, help="the first N test images (default 100)")
    parser.add_argument("--eps", type=float, default=0.1, help="L∞ budget (default 0.1)")
    parser.add_argument("--sigma", type=float, default=0.1, help="the noise's standard deviation (default 0.1)")
    parser.add_argument("--reference", action="store_true", help="also run the authors' rand version")
    args = parser.parse_args()
    base = load_trained(args.model_dir)[0]
    inputs = keras.Input(base.input_shape[1:])
    model = keras.Model(inputs, base(NoisyInput(args.sigma)(inputs)))
    data = load_dataset("mnist")
    x, y = data.test_images(np.arange(args.examples)), data.test_labels[:args.examples].astype(np.int64)
    print(f"{machine()}; {args.examples} examples, "
          f"L∞ ε = {args.eps}, noise σ = {args.sigma}")
    print(check_deterministic(model, x).detail)
    print("| evaluation | robust % | seconds |\n|---|---|---|")
    for version in ("standard", "rand"):
        started = time.perf_counter()
        result = autoattack(model, x, y, [args.eps], version=version)
        print(f"| harness, {version} | {100 * result.robust_accuracy[0]:.1f} | {time.perf_counter() - started:.0f} |",
              flush=True)
    if args.reference:
        import torch
        from autoattack_reference import KerasModule
        from pyautoattack import AutoAttack

        torch.set_num_threads(os.cpu_count() or 1)
        module = KerasModule(model).eval()
        images, labels = torch.tensor(x.transpose(0, 3, 1, 2).copy()), torch.tensor(y)
        started = time.perf_counter()
        reference = AutoAttack(module, norm="Linf", eps=args.eps, version="rand", device="cpu", seed=0)
        _, predicted = reference.run_standard_evaluation(images, labels, batch_size=len(x))
        robust = (predicted == labels).float().mean().item()  # its own bookkeeping: a fresh call after each attack
        print(f"| authors' AutoAttack, rand | {100 * robust:.1f} | {time.perf_counter() - started:.0f} |")


if __name__ == "__main__":
    main()
