"""The harness's l1-APGD (APGD-CE and APGD-T, ``norm="l1"``) against the authors' (``pyautoattack``'s ``APGDAttack``
and ``APGDAttack_targeted`` with ``norm='L1'``) on the same Keras model and the same examples, side by side.

The authors' code attacks the Keras model itself through ``benchmarks/autoattack_reference.py``'s bridge (a PyTorch
module whose forward and backward passes are TensorFlow's), so that only the attacks differ; both run 100 steps and
one run (APGD-T: ``--targets`` target classes), one ε per call, each from its own random starts. Prints robust
accuracy per ε and attack for both, and each side's seconds in this run (the bridge makes the reference slow: it is
not a speed comparison).

    python benchmarks/apgd_l1_reference.py results/models/small_cnn-<id> --examples 100 --eps 5,10

Needs the test extra (``torch==2.13.0``, ``pyautoattack==0.2.0``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from autoattack_reference import KerasModule  # noqa: E402
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import auto_pgd, auto_pgd_targeted  # noqa: E402
from advsweep.models.training import load_trained  # noqa: E402
from presets import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a folder written by `advsweep train`")
    parser.add_argument("--examples", type=int, default=100, help="the first N test images (default 100)")
    parser.add_argument("--eps", default="5,10", help="L1 budgets, comma-separated (default 5,10)")
    parser.add_argument("--targets", type=int, default=3, help="APGD-T's target classes (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model = load_trained(args.model_dir)[0]
    data = load_dataset("mnist")
    x, y = data.test_images(np.arange(args.examples)), data.test_labels[:args.examples].astype(np.int64)
    module = KerasModule(model).eval()
    images, labels = torch.tensor(x.transpose(0, 3, 1, 2).copy()), torch.tensor(y)
    print(f"{machine()}; {args.examples} examples")
    print("| ε (L1) | attack | harness robust % | authors' robust % | harness s | authors' s |\n|---|---|---|---|---|---|")
    for eps in (float(e) for e in args.eps.split(",")):
        for targeted in (False, True):
            started = time.perf_counter()
            ours = (auto_pgd_targeted(model, x, y, [eps], norm="l1", target_classes=args.targets) if targeted
                    else auto_pgd(model, x, y, [eps], norm="l1")).robust_accuracy[0]
            own_seconds = time.perf_counter() - started
            reference = (APGDAttack_targeted(module, norm="L1", eps=eps, n_iter=100, n_restarts=1, seed=0,
                                             device="cpu", n_target_classes=args.targets) if targeted
                         else APGDAttack(module, norm="L1", eps=eps, n_iter=100, n_restarts=1, seed=0, loss="ce",
                                         device="cpu"))
            started = time.perf_counter()
            adversarials = reference.perturb(images, labels)
            with torch.no_grad():
                theirs = float((module(adversarials).argmax(1) == labels).float().mean())
            print(f"| {eps:g} | {'APGD-T' if targeted else 'APGD-CE'} | {100 * ours:.1f} | {100 * theirs:.1f} | "
                  f"{own_seconds:.0f} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
