"""Wong et al.'s fast adversarial training loop for MNIST, as their ``fast_adversarial/MNIST/train_mnist.py`` runs it,
written out in PyTorch, and the model it trains evaluated by the harness.

Their network (``mnist_net``), FGSM of α = 0.375 at ε = 0.3 from a uniform start in the ε-ball (the gradient taken at
the start as drawn; ``--clip-start`` clips it to [0, 1] first, as their CIFAR-10 code does), Adam with their cyclic
rate (0 → 5e-3 at 2/5 of training → 0, per batch), batch 100, all 60,000 training images, the last epoch kept.
After each epoch: clean accuracy and PGD-10 (step 0.075, cross-entropy and margin losses) on the first ``--examples``
test images. Then the weights go into the harness's ``wong_cnn`` and the harness's PGD-40 (margin) and standard
AutoAttack run on the same images (``--no-autoattack`` skips it). This is the reference the harness's
``experiments/configs/fast_at.toml`` is compared with in docs/reproduction.md.

    python benchmarks/fast_at_reference.py --seed 0 --examples 1000
    python benchmarks/fast_at_reference.py --seed 0 --examples 1000 --clip-start --no-autoattack

Needs the test extra (``torch==2.13.0``).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import autoattack, run_attack  # noqa: E402
from advsweep.models import build_wong_cnn  # noqa: E402
from presets import machine  # noqa: E402

EPS, ALPHA, LR_MAX, BATCH = 0.3, 0.375, 5e-3, 100


def pgd10(model: nn.Module, x: torch.Tensor, y: torch.Tensor, margin: bool) -> float:
    """Robust accuracy under L∞ PGD-10 (step 0.075, uniform start) on the cross-entropy or the logit margin."""
    x_adv = (x + torch.zeros_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(10):
        x_adv.requires_grad = True
        logits = model(x_adv)
        if margin:
            true = logits.gather(1, y[:, None])[:, 0]
            other = logits.masked_fill(F.one_hot(y, 10).bool(), -1e9).max(1)[0]
            loss = (other - true).sum()
        else:
            loss = F.cross_entropy(logits, y)
        grad, = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + 0.075 * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--examples", type=int, default=1000, help="the first N test images (default 1000)")
    parser.add_argument("--clip-start", action="store_true", help="clip the random start to [0, 1] (CIFAR-10 code)")
    parser.add_argument("--no-autoattack", action="store_true", help="skip the harness's AutoAttack")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    data = load_dataset("mnist")
    x_train = torch.tensor(data.train_images().transpose(0, 3, 1, 2).copy())
    y_train = torch.tensor(data.y_train.astype(np.int64))
    x_np, y_np = data.test_images(np.arange(args.examples)), data.test_labels[:args.examples].astype(np.int64)
    x_test, y_test = torch.tensor(x_np.transpose(0, 3, 1, 2).copy()), torch.tensor(y_np)
    model = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR_MAX)
    batches = len(x_train) // BATCH
    print(f"{machine()}; seed {args.seed}, "
          f"start {'clipped to [0, 1]' if args.clip_start else 'as drawn'}")
    started = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train))
        for i in range(batches):
            x, y = x_train[order[i * BATCH:(i + 1) * BATCH]], y_train[order[i * BATCH:(i + 1) * BATCH]]
            progress = epoch + (i + 1) / batches
            rate = np.interp([progress], [0, args.epochs * 2 // 5, args.epochs], [0, LR_MAX, 0])[0]
            optimizer.param_groups[0].update(lr=rate)
            delta = torch.zeros_like(x).uniform_(-EPS, EPS)
            if args.clip_start:
                delta = torch.max(torch.min(1 - x, delta), 0 - x)
            delta.requires_grad = True
            F.cross_entropy(model(x + delta), y).backward()
            delta = torch.clamp(delta + ALPHA * torch.sign(delta.grad.detach()), -EPS, EPS)
            delta = torch.max(torch.min(1 - x, delta), 0 - x).detach()
            loss = F.cross_entropy(model(torch.clamp(x + delta, 0, 1)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            clean = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"epoch {epoch + 1}: clean {clean:.4f}, PGD-10 cross-entropy {pgd10(model, x_test, y_test, False):.4f}, "
              f"margin {pgd10(model, x_test, y_test, True):.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    keras_model = build_wong_cnn()
    state = model.state_dict()
    for name, index in {"conv1": 0, "conv2": 2, "dense": 5, "logits": 7}.items():
        weight, bias = state[f"{index}.weight"].numpy(), state[f"{index}.bias"].numpy()
        if name.startswith("conv"):
            weight = weight.transpose(2, 3, 1, 0)
        elif name == "dense":  # PyTorch's (c, h, w) flatten → Keras' (h, w, c) rows
            weight = weight.reshape(100, 32, 7, 7).transpose(2, 3, 1, 0).reshape(1568, 100)
        else:
            weight = weight.T
        keras_model.get_layer(name).set_weights([weight, bias])
    everything = data.test_images()
    clean = float(np.mean(keras_model.predict(everything, verbose=0, batch_size=1000).argmax(1) == data.test_labels))
    print(f"in the harness: clean accuracy {100 * clean:.2f}% (all 10,000 test images)")
    pgd = run_attack("pgd", keras_model, x_np, y_np, [EPS], steps=40, rel_stepsize=0.0625, loss="margin")
    print(f"PGD-40 margin at ε = 0.3, first {args.examples}: {100 * pgd.robust_accuracy[0]:.1f}%", flush=True)
    if not args.no_autoattack:
        result = autoattack(keras_model, x_np, y_np, [EPS])
        members = {m: int((result.found_by[0] == m).sum()) for m in ("clean", "apgd-ce", "apgd-t", "fab-t", "square")}
        print(f"AutoAttack (standard) at ε = 0.3, first {args.examples}: {100 * result.robust_accuracy[0]:.1f}% "
              f"(fooled by {members})")


if __name__ == "__main__":
    main()
