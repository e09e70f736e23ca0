"""Examples on which the harness's ``autoattack`` and the original AutoAttack disagree, attacked again member by
member with several seeds on both sides: whether a disagreement is a weaker member or a random start.

``benchmarks/autoattack_original.py`` runs each side once, with one seed: an example near the boundary of its
ε-ball can then be fooled on one side and not on the other by the draw of its random start alone. This script
attacks the given test images with each member of the standard ensemble alone (``--members``), once per seed
(``--seeds``), on the original (``pyautoattack==0.2.0`` on the PyTorch port of the model, as the benchmark runs it)
and on the harness, and prints for each member and seed which examples each side fooled. The original draws its
random starts for its whole batch, so an example's start also depends on the others attacked with it: give one
index per run (``--indices 53``) to attack it alone. The harness draws each example's start from its own stream
(its test index and the seed).

    python benchmarks/autoattack_seeds.py results/models/vgg16-<id> --indices 53 --eps 0.02 --reduced --seeds 3

Needs the test extra (``torch==2.13.0``, ``pyautoattack==0.2.0``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from autoattack_original import STANDARD, THREAT_MODELS, original_adversary, torch_port  # noqa: E402
from presets import REDUCED, machine  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import autoattack  # noqa: E402
from advsweep.models.training import load_trained  # noqa: E402


def original_member(module: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, member: str, eps: float,
                    norm: str, seed: int, reduced: bool) -> np.ndarray:
    """Which examples the original's ``member`` alone fools, with the standard version's settings (or reduced)."""
    adversary = original_adversary(module, eps, norm=norm, seed=seed, attacks=(member,), reduced=reduced)
    x_adv = adversary.run_standard_evaluation(images, labels, batch_size=500)[0]
    with torch.no_grad():
        return (module(x_adv).argmax(1) != labels).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a folder written by `advsweep train`")
    parser.add_argument("--indices", required=True, help="test indices, comma-separated (one: attacked alone)")
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--norm", choices=("linf", "l2"), default="linf")
    parser.add_argument("--members", default=",".join(STANDARD), help=f"comma-separated, of {', '.join(STANDARD)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … N−1 on each side (default 3)")
    parser.add_argument("--reduced", action="store_true", help="3 targets and 1000 Square queries on both sides")
    args = parser.parse_args()
    members = args.members.split(",")
    if not set(members) <= set(STANDARD):
        parser.error(f"--members: {sorted(set(members) - set(STANDARD))} are not members of the standard version")

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_trained(args.model_dir)[0] if args.model_dir.is_dir() else keras.saving.load_model(args.model_dir)
    indices = np.array([int(i) for i in args.indices.split(",")])
    data = load_dataset("mnist")
    x, y = data.test_images(indices), data.test_labels[indices].astype(np.int64)
    module = torch_port(model).eval()
    images, labels = torch.tensor(x.transpose(0, 3, 1, 2).copy()), torch.tensor(y)
    settings = REDUCED if args.reduced else {}

    print(f"{args.model_dir.name}, test indices {indices.tolist()}, {THREAT_MODELS[args.norm]} ε = {args.eps:g}, "
          f"{'reduced (3 targets, 1000 queries)' if args.reduced else 'standard'} settings; CPU: {machine()}\n")
    print("| member | seed | fooled by the original | fooled by advsweep |")
    print("|---|---|---|---|")
    for member in members:
        for seed in range(args.seeds):
            theirs = original_member(module, images, labels, member, args.eps, args.norm, seed, args.reduced)
            ours = autoattack(model, x, y, [args.eps], norm=args.norm, attacks=[member],
                              settings={member: settings[member]} if member in settings else None, seed=seed,
                              example_ids=indices).success[0]
            print(f"| {member} | {seed} | {indices[theirs].tolist()} | {indices[ours].tolist()} |", flush=True)


if __name__ == "__main__":
    main()
