"""APGD and APGD-T: hand-computed cases of the DLR losses, the checkpoint schedule, the step-size
decision, the random start and the momentum step; the attack's contract on the small CNN."""

from __future__ import annotations

import numpy as np
import pytest
import keras
import tensorflow as tf

from advsweep.attacks.gradient.apgd import (
    auto_pgd,
    auto_pgd_targeted,
    checkpoints,
    halve_steps,
    momentum_steps,
)
from advsweep.attacks.engine.core import loss_per_example, model_classes
from advsweep.attacks.engine.geometry import edge_start
from advsweep.attacks.engine.plan import UNMEASURED, use_plan


def test_dlr_losses_hand_computed():
    logits = tf.constant([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    # label 0 is the top class: −(3 − 2) / (3 − 1); label 2 is not: −(2 − 3) / (3 − 1)
    dlr = loss_per_example(logits, tf.constant([0, 2], tf.int64), "dlr").numpy()
    np.testing.assert_allclose(dlr, [-0.5, 0.5], rtol=1e-6)
    # targeted, label 0 towards 3: −(3 − 0) / (3 − (1 + 0) / 2) = −1.2; towards 2: −(3 − 2) / 2.5 = −0.4
    targeted = loss_per_example(logits, tf.constant([[0, 3], [0, 2]], tf.int64), "dlr-targeted").numpy()
    np.testing.assert_allclose(targeted, [-1.2, -0.4], rtol=1e-6)
    # scale and shift invariance: the property that makes DLR immune to logit scaling
    scaled = loss_per_example(1000.0 * logits + 7.0, tf.constant([0, 2], tf.int64), "dlr").numpy()
    np.testing.assert_allclose(scaled, dlr, rtol=1e-5)


def test_checkpoint_schedule_is_autoattacks():
    assert checkpoints(100) == (22, 6, 3)  # checkpoints after 22, 41, 57, 70, 80, 87, 93, 99 … steps
    assert checkpoints(10) == (2, 1, 1)
    assert checkpoints(1) == (1, 1, 1)


def test_step_halving_decision_hand_computed():
    """The checkpoint decisions of several runs in one call, each with its own window and history."""
    rising = np.arange(1.0, 101.0)  # every step raises the loss
    flat = np.zeros(100)
    flat[:22] = 5.0  # the first comparison is with the unfilled history[−1] = 0: one raise of 22
    # 17 of 22 steps raise the loss (17 > 16.5): no halving for oscillation ...
    oscillating = np.zeros(100)
    oscillating[:22] = np.cumsum([1.0 if c % 4 or c == 0 else -0.5 for c in range(22)])
    # 16 of 22 (16 ≤ 16.5): halving for oscillation, the best loss having improved
    fewer = np.zeros(100)
    fewer[:22] = np.cumsum([1.0 if (c % 4 and c != 1) or c == 0 else -0.5 for c in range(22)])
    short = np.zeros(100)
    short[30:36] = [1.0, 2.0, 3.0, 4.0, 3.5, 3.0]  # a window of 6 at step 35: 4 raises (4 ≤ 4.5) → halve
    cases = [  # history, i, window, halved at the last check, best at the last check, best now → halve?
        (rising, 21, 22, True, 0.0, 22.0, False),
        (flat, 21, 22, True, 5.0, 5.0, True),
        (oscillating, 21, 22, True, 0.0, 1.0, False),
        (fewer, 21, 22, True, 0.0, 1.0, True),
        # ... and halving when the step was kept last time and the best loss has not improved since
        (oscillating, 21, 22, False, 3.0, 3.0, True),
        (oscillating, 21, 22, False, 2.0, 3.0, False),
        (short, 35, 6, True, 0.0, 4.0, True),
    ]
    history, i, window, halved, at_check, best, expected = (np.array(column) for column in zip(*cases))
    np.testing.assert_array_equal(halve_steps(history, i, window, 0.75, halved, at_check, best), expected)


def test_random_start_lies_on_the_balls_edge():
    rng = np.random.default_rng(0)
    x0 = np.full((28, 28, 1), 0.5, np.float32)
    linf = edge_start(x0, 0.1, "linf", rng)
    assert np.abs(linf - x0).max() == pytest.approx(0.1, abs=1e-6)  # t / max|t|: one pixel at the edge
    l2 = edge_start(x0, 1.0, "l2", rng)
    assert np.linalg.norm(l2 - x0) == pytest.approx(1.0, abs=1e-5)
    assert edge_start(np.zeros((4, 4, 1), np.float32), 0.3, "linf", rng).min() == 0.0  # clipped to [0, 1]


def test_momentum_step_hand_computed():
    """Two examples in one block, one on a run's first step (a = 1) and one later (a = 0.75): each is its own
    hand-computed update."""
    x0 = np.array([[0.5, 0.5]] * 2, np.float32)
    x_cur = np.array([[0.55, 0.5]] * 2, np.float32)
    x_old = np.array([[0.5, 0.45]] * 2, np.float32)
    grad = np.array([[1.0, -2.0]] * 2, np.float32)
    eps, step = np.float32([0.1, 0.1]), np.float32([0.08, 0.08])
    moved = momentum_steps(x_cur, x_old, x0, grad, step, eps, "linf", np.array([True, False]))
    # first step (a = 1): x + η sign(g) projected: [0.6 (clipped from 0.63), 0.42]
    np.testing.assert_allclose(moved[0], [0.6, 0.42], atol=1e-6)
    # later (a = 0.75): x + 0.75 (z − x) + 0.25 (x − x_old) = [0.55 + 0.0375 + 0.0125, 0.5 − 0.06 + 0.0125]
    np.testing.assert_allclose(moved[1], [0.6, 0.4525], atol=1e-6)


def test_apgd_result_contract_on_the_small_cnn(small_cnn, test_images):
    x, y = test_images[0][:64], test_images[1][:64]
    grid = [0.0, 0.05, 0.1, 0.2]
    result = auto_pgd(small_cnn, x, y, grid, steps=20)
    assert result.x_adv.shape == (4, 64, 28, 28, 1) and result.success.shape == (4, 64)
    for k, eps in enumerate(grid):
        assert np.abs(result.x_adv[k] - x).max() <= eps + 1e-6
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    for k in range(len(grid)):  # the success reported is the model's own verdict on the point returned
        model_says = np.argmax(small_cnn.predict(result.x_adv[k], verbose=0), -1) != y
        np.testing.assert_array_equal(result.success[k], model_says)
    assert np.all(np.diff(result.robust_accuracy) <= 0)  # fooled at ε stays fooled at every larger ε
    again = auto_pgd(small_cnn, x, y, grid, steps=20)
    np.testing.assert_array_equal(again.x_adv, result.x_adv)  # the same seed gives the same adversarials
    dlr = auto_pgd(small_cnn, x, y, grid, steps=20, loss="dlr")
    targeted = auto_pgd_targeted(small_cnn, x, y, grid, steps=20, target_classes=3)
    for other in (dlr, targeted):
        assert other.success.shape == (4, 64) and np.all(np.diff(other.robust_accuracy) <= 0)
    l2 = auto_pgd(small_cnn, x, y, [0.0, 1.0, 2.0], norm="l2", steps=20)
    assert np.linalg.norm((l2.x_adv[2] - x).reshape(64, -1), axis=1).max() <= 2.0 + 1e-4


def test_apgd_t_reads_the_classes_from_the_logits_when_the_model_does_not_declare_them(small_cnn, test_images):
    """A five-class model whose declared output shape leaves the classes open: APGD-T aims at the classes its logits
    have (ranks 2–5), exactly as on the same model whose shape says 5 (it once assumed ten classes)."""
    keep = test_images[1] < 5
    x, y = test_images[0][keep][:16], test_images[1][keep][:16]
    inputs = keras.Input((28, 28, 1))
    declared = keras.Model(inputs, keras.layers.Lambda(lambda t: t[:, :5])(small_cnn(inputs)))
    undeclared = keras.Model(inputs, keras.layers.Lambda(lambda t: t[:, :5], output_shape=(None,))(small_cnn(inputs)))
    for model in (declared, undeclared):  # the same plan of calls for both, unmeasured: the test is of the classes
        use_plan(model, UNMEASURED)
    assert model_classes(undeclared) is None and model_classes(declared) == 5
    grid = [0.0, 0.1, 0.2]
    expected = auto_pgd_targeted(declared, x, y, grid, steps=10, target_classes=9)
    result = auto_pgd_targeted(undeclared, x, y, grid, steps=10, target_classes=9)
    np.testing.assert_array_equal(result.success, expected.success)
    np.testing.assert_array_equal(result.x_adv, expected.x_adv)
    assert 0 < result.success[2].sum() < len(x)


@pytest.mark.parametrize("targeted", [False, True], ids=["apgd-ce", "apgd-t"])
def test_apgd_follows_the_reference_from_the_same_random_starts(small_cnn, test_images, monkeypatch, targeted,
                                                                benchmark_module):
    """Like with like against the authors' algorithm: torchattacks' APGD / APGDT (ports of the authors' code) run
    the examples together as their ``perturb`` does (seeded once, one ``torch.rand`` start per run; APGD-T: targets 2,
    3, … on the examples still robust), on the same Keras model, each call in a block of the plan's call sizes with
    each example in its row, as ours computes it; ours starts every run from the point the reference drew for it and
    otherwise runs its own engine. The step-size schedule, momentum, restarts from the best point, targets and
    losses then decide alone: the same examples must be fooled, and for the others the highest-loss point of the
    last run (what both return there) must be the same point, to the bit."""
    import torch
    import torchattacks

    import advsweep.attacks.gradient.apgd as apgd
    import advsweep.attacks.engine.programme as engine
    from advsweep.attacks.engine.plan import plan_of

    n = 24
    x, y = test_images[0][:n], test_images[1][:n]
    eps, steps, targets, seed = 0.06, 25, 3, 3

    # the reference first: its runs, and the start each run of each example drew (the draw repeated from the same
    # generator state just before the run makes it)
    bridge = benchmark_module("autoattack_reference").InPlanRows(small_cnn, plan_of(small_cnn)).eval()
    if targeted:
        attack = torchattacks.APGDT(bridge, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, rho=0.75,
                                    n_classes=targets + 1)
    else:
        attack = torchattacks.APGD(bridge, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce",
                                   rho=0.75)
    images, labels = torch.tensor(x.transpose(0, 3, 1, 2).copy()), torch.tensor(y)
    fooled = np.zeros(n, dtype=bool)
    highest_loss_point = np.zeros_like(x)
    draws: dict[tuple[int, int], np.ndarray] = {}
    torch.manual_seed(seed)
    for run, rank in enumerate(range(2, targets + 2) if targeted else [None]):
        todo = np.flatnonzero(~fooled)
        state = torch.get_rng_state()
        starts = (2 * torch.rand((len(todo),) + images.shape[1:]) - 1).numpy().transpose(0, 2, 3, 1)
        torch.set_rng_state(state)
        draws.update({(int(i), run): start for i, start in zip(todo, starts)})
        bridge.examples, attack.target_class = todo, rank
        best, robust, _, _ = attack.attack_single_run(images[todo], labels[todo])
        fooled[todo] = ~robust.numpy().astype(bool)
        highest_loss_point[todo] = best.detach().numpy().transpose(0, 2, 3, 1)

    class Run:
        def __init__(self, example: int, stream: str):
            self.example, self.stream = example, stream

    def reference_start(x0: np.ndarray, e: float, norm: str, run: Run) -> np.ndarray:
        index = int(run.stream[len("apgd-t"):]) - 2 if targeted else 0
        t = draws.get((run.example, index), np.zeros_like(x0))  # a run the reference did not make: parts, and fails
        return np.clip(x0 + np.float32(e) * t / max(np.abs(t).max(), 1e-12), 0.0, 1.0).astype(np.float32)

    monkeypatch.setattr(engine, "example_stream", lambda s, example, stream, e, restart: Run(example, stream))
    monkeypatch.setattr(apgd, "edge_start", reference_start)
    if targeted:
        ours = apgd.auto_pgd_targeted(small_cnn, x, y, [eps], steps=steps, target_classes=targets)
    else:
        ours = apgd.auto_pgd(small_cnn, x, y, [eps], steps=steps)
    assert n // 6 <= fooled.sum() <= n - n // 6, "ε should leave the outcome open on these examples"
    np.testing.assert_array_equal(ours.success[0], fooled)
    robust = ~fooled
    same = (ours.x_adv[0] == highest_loss_point).all(axis=(1, 2, 3))
    # APGD-T's DLR gradients match to the bit. The cross-entropy's gradient with respect to the logits is computed
    # by PyTorch on one side and TensorFlow's fused kernel on the other; their last bits differ, a pixel's gradient
    # near zero can change sign, and that example's path parts (measured: 1 of the 19 robust of the first 24 on the
    # fixture trained without op determinism, 2 on the one trained with it, which the suite now always uses)
    assert (~same[robust]).sum() <= (0 if targeted else 2)


def test_the_rules_joining_parameters_refuse_the_same_way_in_a_call_and_an_ensemble(small_cnn, test_images):
    """`large_radii` outside L1, `large_radii` with fewer than 3 steps, and APGD-T on a model of fewer than 4
    classes are refused by the one declared rule (spec.check_combination), directly and in the ensemble's settings."""
    from advsweep.attacks import autoattack

    x, y = test_images[0][:4], test_images[1][:4]
    with pytest.raises(ValueError, match="False outside the L1 threat model"):
        auto_pgd(small_cnn, x, y, [0.1], large_radii=True)
    with pytest.raises(ValueError, match="at least 3 with large_radii"):
        auto_pgd(small_cnn, x, y, [5.0], norm="l1", steps=2, large_radii=True)
    with pytest.raises(ValueError, match="settings.apgd-ce.large_radii"):
        autoattack(small_cnn, x, y, [0.1], settings={"apgd-ce": {"large_radii": True}})
    inputs = keras.Input((28, 28, 1))
    three = keras.Model(inputs, small_cnn(inputs)[:, :3])
    keep = y < 3
    with pytest.raises(ValueError, match="at least 4 classes for 'apgd-t'"):
        auto_pgd_targeted(three, x[keep], y[keep], [0.1])
    with pytest.raises(ValueError, match="leave it out of `attacks`"):
        autoattack(three, x[keep], y[keep], [0.1])
