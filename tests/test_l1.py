"""The L1 threat model's projection onto the ball ∩ box, held to the authors' code (``pyautoattack``'s
``L1_projection``, "Mind the box", Croce & Hein 2021) on real MNIST images."""

from __future__ import annotations

import numpy as np
import pytest

from advsweep.attacks.engine.geometry import l1_box_projection, l1_point


@pytest.mark.parametrize("scale, eps", [(0.05, 5.0), (0.3, 10.0), (1.0, 12.0), (0.01, 100.0), (2.0, 1.0)])
def test_l1_projection_is_the_authors(test_images, scale, eps):
    import torch
    from pyautoattack.autopgd_base import L1_projection

    x = test_images[0][:64]
    rng = np.random.default_rng(int(scale * 100))
    y = (rng.laplace(0, scale, x.shape) * (rng.random(x.shape) < 0.3)).astype(np.float32)  # sparse proposals
    ours = l1_box_projection(x, y, eps)
    theirs = (torch.tensor(y) + L1_projection(torch.tensor(x), torch.tensor(y), eps)).numpy()
    # the same point up to the original's float32 sums over 2·784 breakpoints (ours are float64: measured
    # differences up to 8e-5 on a few coordinates, where theirs leaves the ball by as much: ‖δ‖₁ = 1.000084 for
    # ε = 1, and so comes up to 2e-5 closer to the proposal than the feasible point)
    np.testing.assert_allclose(ours, theirs, atol=2e-4)
    distance = lambda d: np.linalg.norm((d.astype(np.float64) - y).reshape(len(x), -1), axis=1)  # noqa: E731
    assert (distance(ours) <= distance(theirs) + 1e-4).all()
    flat = ours.reshape(len(x), -1)
    assert (np.abs(flat).sum(axis=1) <= eps * (1 + 1e-5)).all()
    assert ((x + ours >= -1e-6) & (x + ours <= 1 + 1e-6)).all()


def test_l1_projection_is_the_closest_point(test_images):
    """Any other point of the ball ∩ box is at least as far from the proposal (checked against random ones)."""
    x = test_images[0][:8]
    rng = np.random.default_rng(1)
    y = rng.normal(0, 0.4, x.shape).astype(np.float32)
    delta = l1_box_projection(x, y, 8.0)
    best = np.linalg.norm((delta - y).reshape(8, -1), axis=1)
    for _ in range(50):
        other = l1_box_projection(x, y + rng.normal(0, 0.2, x.shape).astype(np.float32), 8.0)
        assert (np.linalg.norm((other - y).reshape(8, -1), axis=1) >= best - 1e-4).all()
    inside = 0.001 * np.sign(y) * (np.abs(y) > 0)
    np.testing.assert_allclose(l1_box_projection(x, np.clip(inside, -x, 1 - x), 1e6),
                               np.clip(inside, -x, 1 - x), atol=1e-7)  # inside the ball and box: unchanged


@pytest.mark.slow
@pytest.mark.parametrize("targeted,large_radii", [(False, False), (True, False), (False, True)],
                         ids=["apgd-ce", "apgd-t", "apgd-ce-large-radii"])
def test_l1_apgd_follows_the_authors_from_the_same_random_starts(small_cnn, test_images, monkeypatch, targeted,
                                                                 large_radii, benchmark_module):
    """Like with like against the authors' l1-APGD (``pyautoattack``, ``norm='L1'``): each example run alone,
    seeded, as its ``perturb`` does (one ``torch.randn`` start per run; APGD-T: targets 2, 3, … until one fools);
    ours starts every run from the point the reference drew and otherwise runs its own engine. The sparse steps,
    the projection and the adaptive sparsity then decide: the same examples must be fooled, up to one whose path
    parts on the float rounding of the projection (theirs sums in float32, ours in float64), and ours never fools
    fewer. With ``large_radii`` (the authors' ``use_largereps``, AutoAttack's L1 version) the run's stages at 3ε,
    2ε and ε start from the same draw (projected onto the ball of 3ε)."""
    import torch
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    import advsweep.attacks.gradient.apgd as apgd
    import advsweep.attacks.engine.programme as engine

    x, y = test_images[0][:24], test_images[1][:24]
    eps, steps, targets, seed = 6.0, 25, 3, 3
    runs = targets if targeted else 1
    draws = {}
    for i in range(len(x)):
        torch.manual_seed(seed)
        draws[i] = [torch.randn((1, 1, 28, 28)).numpy()[0].transpose(1, 2, 0) for _ in range(runs)]

    class Run:
        def __init__(self, example: int, stream: str):
            self.example, self.stream = example, stream

    def reference_start(x0, e, norm, run):
        return l1_point(x0[None], draws[run.example][int(run.stream[len("apgd-t"):]) - 2 if targeted else 0][None], e)[0]

    monkeypatch.setattr(engine, "example_stream", lambda s, example, stream, e, restart: Run(example, stream))
    monkeypatch.setattr(apgd, "edge_start", reference_start)
    if targeted:
        ours = apgd.auto_pgd_targeted(small_cnn, x, y, [eps], norm="l1", steps=steps, target_classes=targets)
    else:
        ours = apgd.auto_pgd(small_cnn, x, y, [eps], norm="l1", steps=steps, large_radii=large_radii)

    from advsweep.attacks.engine.plan import plan_of

    # the reference reads the model's floats as ours does: each call in a block of the plan's sizes
    module = benchmark_module("autoattack_reference").InPlanRows(small_cnn, plan_of(small_cnn)).eval()
    if targeted:
        attack = APGDAttack_targeted(module, norm="L1", eps=eps, n_iter=steps, n_restarts=1, seed=seed, device="cpu",
                                     n_target_classes=targets)
    else:
        attack = APGDAttack(module, norm="L1", eps=eps, n_iter=steps, n_restarts=1, seed=seed, loss="ce",
                            device="cpu", use_largereps=large_radii)
    fooled = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):  # perturb seeds itself (torch.manual_seed(seed)) and draws one start per run
        module.examples = [i]
        image, label = torch.tensor(x[i:i + 1].transpose(0, 3, 1, 2).copy()), torch.tensor(y[i:i + 1])
        with torch.no_grad():
            fooled[i] = bool(module(attack.perturb(image, label)).argmax(1)[0] != label[0])
    assert 4 <= fooled.sum() <= 20, "ε should leave the outcome open on these examples"
    # one example may part on rounding per run of steps; with large_radii a run is three (at 3ε, 2ε, ε), and two of
    # the 24 part (one each way, the counts equal; measured on 2026-12-07 with today's package versions, at this
    # commit and at the last one CI passed, whose run had none part)
    assert (ours.success[0] != fooled).sum() <= (2 if large_radii else 1), (ours.success[0].astype(int),
                                                                             fooled.astype(int))
    assert ours.success[0].sum() >= fooled.sum()
