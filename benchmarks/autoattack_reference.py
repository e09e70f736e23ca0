"""The harness's ``autoattack`` against torchattacks' port of the original AutoAttack, on the same Keras model, the
same examples, side by side in one run.

The reference attacks the Keras model itself through a bridge: a PyTorch module whose forward pass runs the
Keras model and whose backward pass is TensorFlow's tape gradient of it (as AutoAttack's own TensorFlow adapter
does), so both implementations see the same function and only the attacks differ. The reference ensemble is
torchattacks' APGD, APGDT, FAB and Square in a ``MultiAttack``, each set to the original AutoAttack's standard
settings (``autoattack/autoattack.py``): 100 steps for APGD-CE, APGD-T (9 targets) and FAB-T (9 targets,
``alpha_max`` 0.1), 5000 queries for Square with the schedule not rescaled. torchattacks' own ``AutoAttack``
class is not used: it leaves APGD and FAB at 10 steps and rescales Square's schedule, a weaker ensemble than the
original.

Both run one ε per call (the reference knows no grid), on the first N test images. Prints, per ε, robust
accuracy in % of the harness's ensemble, the reference's, the harness's PGD-40 (margin loss) and the harness's
ensemble found by member; then the wall-time ratio measured in this run and the harness's model evaluations per
example (never an absolute time).

    python benchmarks/autoattack_reference.py results/models/small_cnn-<id> --examples 100 --eps 0.05,0.1,0.15
    python benchmarks/autoattack_reference.py results/models/small_cnn-<id> --scale 1000   # gradient masking
    python benchmarks/autoattack_reference.py results/models/small_cnn-<id> --eps 0.2,0.3   # an adversarially trained one
    python benchmarks/autoattack_reference.py results/models/vgg16-<id> --examples 30 --eps 0.02 --reduced

A model is a folder written by ``advsweep train`` (or a sweep) or a ``.keras`` file of a classifier of MNIST
images returning logits. Each ε's row is printed as soon as it is measured.

``--scale 1000`` multiplies the logits by 1000 (the same decisions, a saturated softmax whose cross-entropy
gradients vanish) and runs the harness's ensemble on the scaled and the unscaled model, with the checks' verdicts.
Needs the test extra (``torch==2.13.0``, ``torchattacks``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
import torchattacks  # noqa: E402

from advsweep.assets import load_dataset  # noqa: E402
from advsweep.attacks import autoattack, run_attack  # noqa: E402
from advsweep.attacks.evaluation.checks import check_ensemble  # noqa: E402
from advsweep.attacks.engine.spec import ENSEMBLE  # noqa: E402
from advsweep.defaults import AUTOATTACK  # noqa: E402
from advsweep.models.training import load_trained  # noqa: E402
from presets import REDUCED  # noqa: E402




class _KerasCall(torch.autograd.Function):
    """Logits of NCHW images by the Keras model; the backward pass is TensorFlow's vector–Jacobian product."""

    @staticmethod
    def forward(ctx: Any, images: torch.Tensor, bridge: KerasModule) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(images)
        ctx.bridge = bridge
        return torch.from_numpy(bridge.logits(images.detach().numpy()))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (images,) = ctx.saved_tensors
        return torch.from_numpy(ctx.bridge.vjp(images.detach().numpy(), grad_output.numpy())), None


class KerasModule(torch.nn.Module):
    """A Keras classifier of NHWC images in [0, 1] as a PyTorch module of NCHW images."""

    def __init__(self, model: keras.Model):
        super().__init__()
        self.model = model
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # torchattacks reads the device off a parameter
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

        @tf.function(reduce_retracing=True)
        def vjp(x: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = model(x, training=False)
            return tape.gradient(logits, x, output_gradients=upstream)

        self._vjp = vjp

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._forward(tf.constant(images.transpose(0, 2, 3, 1))).numpy()

    def vjp(self, images: np.ndarray, upstream: np.ndarray) -> np.ndarray:
        grad = self._vjp(tf.constant(images.transpose(0, 2, 3, 1)), tf.constant(upstream)).numpy()
        return np.ascontiguousarray(grad.transpose(0, 3, 1, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _KerasCall.apply(images, self)


class InPlanRows(KerasModule):
    """:class:`KerasModule` computing each call as the harness computes it: in a zero-padded block of one of the
    model's plan's call sizes (a gradient in the gradient plan's, a check's logits in the forward plan's: the
    smallest that holds the call), each example in its row (``example_id % rows``). Every size of a plan gives a
    row the floats of a full call (tests/test_plan.py), so the reference and the harness read the same floats from
    the model. Set ``examples`` to the ids of the images of the next calls (one example, or a batch whose calls all
    hold the same examples in the same order) before attacking them."""

    def __init__(self, model: keras.Model, plan: Any):
        super().__init__(model)
        self.plan, self.examples, self.rows = plan, np.zeros(1, np.int64), plan.forward.size_for(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        part = self.plan.gradient if images.requires_grad and torch.is_grad_enabled() else self.plan.forward
        self.rows = part.size_for(len(images))
        return super().forward(images)

    def logits(self, images: np.ndarray) -> np.ndarray:
        at = self._at(len(images))
        return super().logits(self._in_rows(images, at))[at]

    def vjp(self, images: np.ndarray, upstream: np.ndarray) -> np.ndarray:
        at = self._at(len(images))
        return super().vjp(self._in_rows(images, at), self._in_rows(upstream, at))[at]

    def _at(self, n: int) -> np.ndarray:
        at = np.asarray(self.examples, np.int64) % self.rows
        if len(at) != n or len(np.unique(at)) != n:
            raise ValueError(f"a call of {n} images for examples {self.examples} in blocks of {self.rows} rows")
        return at

    def _in_rows(self, values: np.ndarray, at: np.ndarray) -> np.ndarray:
        """``values`` in rows ``at`` of a zero-padded block of ``rows`` rows."""
        block = np.zeros((self.rows,) + values.shape[1:], np.float32)
        block[at] = values
        return block


def reference_autoattack(module: torch.nn.Module, eps: float, norm: str, classes: int, seed: int = 0,
                         settings: dict[str, dict[str, Any]] | None = None,
                         attacks: tuple[str, ...] = ENSEMBLE) -> Any:
    """torchattacks' attacks with the original AutoAttack's standard settings (and ``settings``' changes, as the
    harness's ``autoattack`` takes them), in its order; ``attacks`` a subsequence of the ensemble (one attack is
    returned as it is: torchattacks' ``MultiAttack`` wants two or more)."""
    name = "Linf" if norm == "linf" else "L2"
    apgd, apgd_t, fab, square = ({**AUTOATTACK[a], **(settings or {}).get(a, {})} for a in ENSEMBLE)
    members = {
        "apgd-ce": lambda: torchattacks.APGD(module, norm=name, eps=eps, steps=apgd["steps"], n_restarts=1, seed=seed,
                                             loss="ce", rho=apgd["rho"]),
        "apgd-t": lambda: torchattacks.APGDT(module, norm=name, eps=eps, steps=apgd_t["steps"], n_restarts=1,
                                             seed=seed, rho=apgd_t["rho"],
                                             n_classes=min(classes, apgd_t["target_classes"] + 1)),
        "fab-t": lambda: torchattacks.FAB(module, norm=name, eps=eps, steps=fab["steps"], n_restarts=1,
                                          alpha_max=fab["alpha_max"], eta=fab["eta"], beta=fab["beta"], seed=seed,
                                          multi_targeted=True, n_classes=min(classes, fab["target_classes"] + 1)),
        "square": lambda: torchattacks.Square(module, norm=name, eps=eps, n_queries=square["queries"], n_restarts=1,
                                              p_init=square["p_init"], loss="margin", resc_schedule=False, seed=seed),
    }
    chosen = [members[a]() for a in attacks]
    return chosen[0] if len(chosen) == 1 else torchattacks.MultiAttack(chosen)


def reference_robust(module: KerasModule, x: np.ndarray, y: np.ndarray, eps: float, norm: str, classes: int,
                     seed: int = 0, settings: dict[str, dict[str, Any]] | None = None,
                     attacks: tuple[str, ...] = ENSEMBLE) -> float:
    """The reference ensemble's robust accuracy (a fraction) on NHWC images ``x``, labels ``y``."""
    images, labels = torch.tensor(x.transpose(0, 3, 1, 2).copy()), torch.tensor(y)
    adversarial = reference_autoattack(module, eps, norm, classes, seed, settings, attacks)(images, labels)
    delta = (adversarial - images).detach().reshape(len(x), -1)
    size = delta.abs().max(1)[0] if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5, "the reference left the ε-ball"
    with torch.no_grad():
        return float((module(adversarial).argmax(1) == labels).float().mean())


def scaled(model: keras.Model, factor: float) -> keras.Model:
    """The model with its logits multiplied by ``factor``: the same decisions, a saturated softmax."""
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(inputs, keras.layers.Rescaling(factor)(model(inputs)), name=f"{model.name}_x{factor:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model folder written by `advsweep train` or a sweep, or a .keras file")
    parser.add_argument("--examples", type=int, default=100, help="the first N test images (default 100)")
    parser.add_argument("--eps", default="0.05,0.1,0.15", help="budgets, comma-separated")
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"))
    parser.add_argument("--scale", type=float, default=None, help="compare the harness on logits × SCALE instead")
    parser.add_argument("--reduced", action="store_true",
                        help=f"both ensembles with the same reduced budgets, {REDUCED} (for the VGG16 on a CPU)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.model.suffix == ".keras":
        model, name = keras.models.load_model(args.model, compile=False), args.model.name
    else:
        model, config, _ = load_trained(args.model)
        name = config.model_id
    data = load_dataset("mnist")  # `advsweep train` is MNIST-only
    x = data.test_images(np.arange(args.examples))
    y = data.y_test[: args.examples].astype(np.int64)
    grid = [float(e) for e in args.eps.split(",")]
    classes = int(model.output_shape[-1])
    print(f"{name}, first {args.examples} test images, {args.norm}; "
          f"command: python {' '.join(sys.argv)}\n")
    if args.scale is not None:
        masked = scaled(model, args.scale)
        print(f"| model | {' | '.join(f'ε = {e:g}' for e in grid)} |\n|---|" + "---|" * len(grid))
        for name, candidate in (("as trained", model), (f"logits × {args.scale:g}", masked)):
            result = autoattack(candidate, x, y, grid, norm=args.norm)
            print(f"| {name} | " + " | ".join(f"{100 * a:.1f}" for a in result.robust_accuracy) + " |")
            for check in check_ensemble(result):
                print(f"    {check.verdict}: {check.name}: {check.detail}")
            pgd = run_attack("pgd", candidate, x, y, grid, norm=args.norm, steps=40)
            print(f"    PGD-40 (cross-entropy): " + " | ".join(f"{100 * a:.1f}" for a in pgd.robust_accuracy))
        return
    module = KerasModule(model).eval()
    settings = REDUCED if args.reduced else None
    if args.reduced:
        print(f"both ensembles with reduced budgets: {REDUCED}\n")
    own, reference = [], []
    own_seconds = reference_seconds = 0.0
    evaluations = 0
    budgets = "the same reduced budgets" if args.reduced else "AutoAttack's settings"
    print(f"| ε | advsweep `autoattack` | torchattacks, {budgets} | advsweep PGD-40, margin loss "
          "| advsweep: fooled by clean/APGD-CE/APGD-T/FAB-T/Square |\n|---|---|---|---|---|", flush=True)
    for eps in grid:
        started = time.perf_counter()
        result = autoattack(model, x, y, [eps], norm=args.norm, settings=settings)
        own_seconds += time.perf_counter() - started
        own.append(float(result.robust_accuracy[0]))
        evaluations += result.evaluations or 0
        assert result.found_by is not None
        members = "/".join(str(int((result.found_by[0] == m).sum())) for m in ("clean", *AUTOATTACK))
        started = time.perf_counter()
        reference.append(reference_robust(module, x, y, eps, args.norm, classes, settings=settings))
        reference_seconds += time.perf_counter() - started
        pgd = run_attack("pgd", model, x, y, [eps], norm=args.norm, steps=40, loss="margin").robust_accuracy[0]
        print(f"| {eps:g} | {100 * own[-1]:.1f} | {100 * reference[-1]:.1f} | {100 * pgd:.1f} | {members} |", flush=True)
    print(f"\nwall time, torchattacks / advsweep, measured in this run: {reference_seconds / own_seconds:.2f}")
    print(f"advsweep model evaluations per example, over the {len(grid)} ε: {evaluations / args.examples:.0f}")
    worst = max(100 * (o - r) for o, r in zip(own, reference, strict=True))
    print(f"largest excess of advsweep over the reference: {worst:+.1f} points (must be ≤ +0.5)")


if __name__ == "__main__":
    main()
