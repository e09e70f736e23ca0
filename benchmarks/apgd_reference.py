"""The harness's APGD-CE and APGD-T against torchattacks' on the same small CNN, the same examples, side by side.

The small CNN's weights are copied into an equivalent PyTorch module (its logits agree with the Keras model's
to float rounding, checked before anything runs); torchattacks' ``APGD`` and ``APGDT`` (ports of the authors'
code) attack that module, the harness's ``auto_pgd`` and ``auto_pgd_targeted`` the Keras model, with
AutoAttack's standard settings (100 steps, one run, ρ = 0.75; APGD-T: 9 target classes), both one ε per call,
from their own random starts (the same seed cannot give the same start across the two). Prints robust
accuracy in % per ε for both and the wall-time ratio measured in this run (never an absolute time).

    python benchmarks/apgd_reference.py results/models/small_cnn-<id> --examples 300 --eps 0.1,0.2,0.3

Needs the test extra (``torch==2.13.0``, ``torchattacks``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchattacks  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks.gradient.apgd import auto_pgd, auto_pgd_targeted  # noqa: E402
from advsweep.models.training import load_trained  # noqa: E402


class TorchSmallCNN(torch.nn.Module):
    """The harness's small CNN (Conv 3×3 → pool → Conv 3×3 → pool → Dense → Dense) with a Keras model's weights;
    takes NCHW images, flattens in Keras' NHWC order."""

    def __init__(self, model: keras.Model):
        super().__init__()
        conv1, conv2 = model.get_layer("conv1"), model.get_layer("conv2")
        dense, logits = model.get_layer("dense"), model.get_layer("logits")
        self.conv1 = torch.nn.Conv2d(conv1.kernel.shape[2], conv1.kernel.shape[3], 3)
        self.conv2 = torch.nn.Conv2d(conv2.kernel.shape[2], conv2.kernel.shape[3], 3)
        self.dense = torch.nn.Linear(dense.kernel.shape[0], dense.kernel.shape[1])
        self.logits = torch.nn.Linear(logits.kernel.shape[0], logits.kernel.shape[1])
        for conv, layer in ((self.conv1, conv1), (self.conv2, conv2)):
            kernel, bias = (np.asarray(w) for w in layer.get_weights())
            conv.weight.data = torch.tensor(kernel.transpose(3, 2, 0, 1).copy())
            conv.bias.data = torch.tensor(bias)
        for linear, layer in ((self.dense, dense), (self.logits, logits)):
            kernel, bias = (np.asarray(w) for w in layer.get_weights())
            linear.weight.data = torch.tensor(kernel.T.copy())
            linear.bias.data = torch.tensor(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.permute(0, 2, 3, 1).reshape(len(x), -1)  # Keras flattens height, width, channels
        return self.logits(torch.relu(self.dense(x)))


def torch_robust_accuracy(module: torch.nn.Module, attack: object, x: np.ndarray, y: np.ndarray) -> float:
    images = torch.tensor(x.transpose(0, 3, 1, 2).copy())
    labels = torch.tensor(y)
    adversarial = attack(images, labels)  # type: ignore[operator]
    assert float((adversarial - images).detach().abs().max()) <= attack.eps + 1e-6  # type: ignore[attr-defined]
    with torch.no_grad():
        return float((module(adversarial).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a small CNN folder written by `advsweep train` or a sweep")
    parser.add_argument("--examples", type=int, default=300, help="the first N test images (default 300)")
    parser.add_argument("--eps", default="0.1,0.2,0.3", help="L∞ budgets")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, config, _ = load_trained(args.model_dir)
    data = load_dataset("mnist")
    x, y = data.test_images(np.arange(args.examples)), data.test_labels[: args.examples]
    module = TorchSmallCNN(model).eval()
    with torch.no_grad():
        torch_logits = module(torch.tensor(x.transpose(0, 3, 1, 2).copy())).numpy()
    gap = float(np.abs(torch_logits - model(x).numpy()).max())
    assert gap < 1e-3, f"the PyTorch copy differs from the Keras model by {gap}"
    grid = [float(e) for e in args.eps.split(",")]
    print(f"{config.model_id}, first {args.examples} test images, {args.steps} steps, one run; "
          f"largest logit difference between the Keras model and its PyTorch copy: {gap:.2g}\n")
    print("| attack | implementation | " + " | ".join(f"ε = {e:g}" for e in grid) + " | time |")
    print("|---|---|" + "---|" * len(grid) + "---|")
    for name in ("APGD-CE", "APGD-T"):
        started = time.perf_counter()
        own = []  # one call per ε, as the reference runs (a grid in one call also carries fooled examples upwards)
        for eps in grid:
            attack_fn = auto_pgd if name == "APGD-CE" else auto_pgd_targeted
            own.append(float(attack_fn(model, x, y, [eps], steps=args.steps).robust_accuracy[0]))
        own_seconds = time.perf_counter() - started
        started = time.perf_counter()
        reference = []
        for eps in grid:
            attack = (torchattacks.APGD(module, norm="Linf", eps=eps, steps=args.steps, n_restarts=1, seed=0, loss="ce")
                      if name == "APGD-CE" else
                      torchattacks.APGDT(module, norm="Linf", eps=eps, steps=args.steps, n_restarts=1, seed=0,
                                         n_classes=10))
            reference.append(torch_robust_accuracy(module, attack, x, y))
        reference_seconds = time.perf_counter() - started
        print(f"| {name} | advsweep | " + " | ".join(f"{100 * a:.1f}" for a in own) + f" | 1.00 |")
        print(f"| {name} | torchattacks | " + " | ".join(f"{100 * a:.1f}" for a in reference)
              + f" | {reference_seconds / own_seconds:.2f} |")
    print("\ntime: wall time relative to the harness's, measured in this run")


if __name__ == "__main__":
    main()
