"""Adversarial training and the robust model kinds: robustness gained on held-out images (PGD, TRADES and fast
training), the collapse detector, the config's refusals, Madry et al.'s CNN, TRADES' SmallCNN, the VGG16 from scratch, TensorBoard logs, the SavedModel export and the
ε-budget figures of a sweep over models trained at different ε."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from advsweep.attacks import run_attack
from advsweep.experiments.cli import main
from advsweep.experiments.config import ConfigError, parse_config
from advsweep.experiments.reporting.plots import training_curves
from advsweep.experiments.sweep import run_sweep
from advsweep.models import build_madry_cnn, build_trades_cnn, build_wong_cnn
from advsweep.models.adversarial import detect_collapse, fast_fgsm, learning_rate_at, train_adversarially
from advsweep.models.common import model_function
from advsweep.models.config import AdversarialConfig, ModelConfig
from advsweep.models.training import build_model, export_savedmodel, train_model

EPS = 0.2
SMALL = {"kind": "small_cnn", "train_examples": 3000, "validation_examples": 500, "epochs": 2, "seed": 3,
         "augment_shift": 0}
ADVERSARIAL = {"method": "pgd", "eps": EPS, "steps": 5, "eval_examples": 200, "ramp_epochs": 1.0}


@pytest.fixture(scope="module")
def natural_and_robust(tmp_path_factory):
    """The small CNN trained naturally and by PGD-5 adversarial training on the same 3000 images, 2 epochs."""
    root = tmp_path_factory.mktemp("models")
    natural = train_model(ModelConfig.from_mapping(SMALL), root)
    robust = train_model(ModelConfig.from_mapping({**SMALL, "adversarial": ADVERSARIAL}), root,
                         draw_curves=training_curves)
    return natural, robust


def test_adversarial_training_lowers_pgd_success_on_held_out_images(natural_and_robust, test_images):
    natural, robust = natural_and_robust
    x, y = test_images[0][:100], test_images[1][:100]  # test images: neither model saw them
    accuracy = {name: run_attack("pgd", trained.model, x, y, [0.0, EPS], steps=20, loss="margin").robust_accuracy
                for name, trained in (("natural", natural), ("robust", robust))}
    assert accuracy["robust"][0] > 0.8  # still a classifier
    # PGD-20 succeeds far less often on the adversarially trained model
    assert accuracy["robust"][1] > accuracy["natural"][1] + 0.25, accuracy


@pytest.mark.slow
def test_trades_and_fast_training_make_their_papers_models_robust(natural_and_robust, test_images, tmp_path):
    """A short TRADES run of TRADES' SmallCNN and a short fast-training run (FGSM from a random start) of Madry et
    al.'s CNN, on the fixture's 3000 images for 2 epochs: each stays a classifier, PGD-20 succeeds far less often on it
    than on the naturally trained small CNN, and metrics.json records the method's resolved options."""
    natural, _ = natural_and_robust
    x, y = test_images[0][:200], test_images[1][:200]
    natural_accuracy = run_attack("pgd", natural.model, x, y, [0.0, EPS], steps=20, loss="margin").robust_accuracy
    runs = {"trades": ("trades_cnn", {"method": "trades", "eps": EPS, "steps": 5}),
            "fast": ("madry_cnn", {"method": "fast", "eps": EPS})}
    resolved = {"trades": {"steps": 5, "step_size": 0.5, "beta": 1.0},
                "fast": {"step_size": 1.25, "noise": 1.0, "clip_noise": True}}
    for method, (kind, adversarial) in runs.items():
        config = {**SMALL, "kind": kind, "adversarial": {**adversarial, "eval_examples": 200, "ramp_epochs": 1.0}}
        trained = train_model(ModelConfig.from_mapping(config), tmp_path)
        accuracy = run_attack("pgd", trained.model, x, y, [0.0, EPS], steps=20, loss="margin").robust_accuracy
        assert accuracy[0] > 0.85, (method, accuracy)
        assert accuracy[1] > natural_accuracy[1] + 0.25, (method, accuracy, natural_accuracy)
        options = json.loads((trained.folder / "metrics.json").read_text())["adversarial"]["options"]
        assert options["method"] == method and {k: options[k] for k in resolved[method]} == resolved[method]


def test_adversarial_metrics_history_curves_and_logs(natural_and_robust):
    natural, robust = natural_and_robust
    assert robust.folder.name != natural.folder.name  # the method and ε are part of the model id
    metrics = json.loads((robust.folder / "metrics.json").read_text())
    adversarial = metrics["adversarial"]
    assert adversarial["options"] == {**AdversarialConfig.from_mapping(ADVERSARIAL).to_dict()}
    assert adversarial["options"]["step_size"] == pytest.approx(0.5)  # the default 2.5 / steps, resolved
    assert adversarial["collapse"] is None and adversarial["label"] == "PGD-5 ε=0.2"
    history = pd.read_csv(robust.folder / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    for column in ("loss", "accuracy", "val_accuracy", "val_robust_accuracy", "eps", "learning_rate", "kept"):
        assert history[column].notna().all(), column
    assert history["eps"].iloc[0] == pytest.approx(EPS)  # the ramp reached ε at the end of epoch 1
    kept = int(history.loc[history["kept"] == 1, "epoch"].iloc[0])
    assert kept == metrics["best_epoch"] == int(history["val_robust_accuracy"].idxmax()) + 1
    assert adversarial["held_out_robust_accuracy"] == history["val_robust_accuracy"].max()
    for suffix in (".png", ".pdf"):
        assert (robust.folder / f"training_curves{suffix}").stat().st_size > 0
    # TensorBoard's event files carry the held-out robust accuracy of each epoch
    events = sorted((robust.folder / "tensorboard" / "validation").glob("events.out.tfevents.*"))
    assert events
    logged = {}
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        for value in event.summary.value:
            if value.tag == "epoch_robust_accuracy":
                logged[event.step] = float(tf.make_ndarray(value.tensor))
    np.testing.assert_allclose([logged[e] for e in range(2)], history["val_robust_accuracy"], rtol=1e-6)
    # natural training logs too (Keras' TensorBoard callback)
    assert list((natural.folder / "tensorboard" / "validation").glob("events.out.tfevents.*"))


def test_savedmodel_export_reloads_with_the_same_logits(natural_and_robust, test_images, tmp_path, capsys):
    _, robust = natural_and_robust
    x = test_images[0][:32]
    folder = export_savedmodel(robust.model, tmp_path / "savedmodel")
    loaded = tf.saved_model.load(str(folder))  # held: a SavedModel's functions need their object alive
    served = loaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, robust.model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    # the command: `advsweep export MODEL_DIR`
    model_dir = tmp_path / "copy"
    shutil.copytree(robust.folder, model_dir)
    assert main(["export", str(model_dir)]) == 0
    loaded = tf.saved_model.load(str(model_dir / "savedmodel"))
    served = loaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, robust.model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "not a folder written by `advsweep train`" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the collapse detector


def _history(robust, accuracy, reached):
    return {"val_robust_accuracy": robust, "accuracy": accuracy, "eps_reached": reached}


FAST = AdversarialConfig(method="fast", eps=0.3)


def test_collapse_detector_fires_when_held_out_pgd_falls():
    # Wong et al.'s signature: robust accuracy climbs, then falls to near zero within an epoch
    collapse = detect_collapse(_history([0.55, 0.71, 0.04], [0.6, 0.75, 0.98], [1, 1, 1]), FAST)
    assert collapse is not None and collapse.epoch == 3 and collapse.best_epoch == 2
    assert "fell from 0.710 (epoch 2) to 0.040" in collapse.reason


def test_collapse_detector_fires_on_a_first_epoch_collapse():
    # no earlier epoch to compare with: the training attack is withstood (97%), PGD is not (2%)
    collapse = detect_collapse(_history([0.02], [0.97], [1]), FAST)
    assert collapse is not None and collapse.epoch == 1 and "gap" in collapse.reason
    # a model that never learned robustness: the gap stays and PGD accuracy does not climb
    collapse = detect_collapse(_history([0.03, 0.02], [0.90, 0.97], [1, 1]), FAST)
    assert collapse is not None and collapse.epoch == 2 and "gap" in collapse.reason


@pytest.mark.parametrize("robust, accuracy, reached", [
    ([0.55, 0.71, 0.74], [0.6, 0.75, 0.80], [1, 1, 1]),   # healthy training
    ([0.60, 0.52], [0.7, 0.72], [1, 1]),                  # a dip smaller than collapse_drop
    ([0.05], [0.95], [0]),                                # during the ε ramp the held-out ε is above the training ε
    ([0.168, 0.174], [0.209, 0.658], [1, 1]),             # a gap while PGD accuracy still climbs (a run that reached 0.88)
], ids=["healthy", "small-dip", "during-ramp", "gap-while-climbing"])
def test_collapse_detector_stays_quiet_on_healthy_training(robust, accuracy, reached):
    assert detect_collapse(_history(robust, accuracy, reached), FAST) is None


def test_learning_rate_schedules():
    assert learning_rate_at("constant", 1e-3, 0.9) == 1e-3
    assert learning_rate_at("decay", 1e-3, 0.25) == 1e-3 and learning_rate_at("decay", 1e-3, 0.75) == pytest.approx(5e-4)
    assert learning_rate_at("onecycle", 1e-3, 0.0) == 0.0 and learning_rate_at("onecycle", 1e-3, 0.4) == pytest.approx(1e-3)
    assert learning_rate_at("onecycle", 1e-3, 1.0) == pytest.approx(0.0)


@pytest.mark.parametrize("schedule, rates", [("onecycle", [0.0, 1e-3 / 3 / 0.4, 1e-3 / 3 / 0.6]),
                                             ("decay", [1e-3, 1e-3, 2e-3 / 3]), ("constant", [1e-3] * 3)])
def test_the_learning_rate_schedule_reaches_the_optimizer(test_images, schedule, rates):
    """The optimizer steps at the schedule's rate, read back from the optimizer (Keras 3 copies a rate variable
    handed to `optimizer.learning_rate` once: every schedule ran at its peak until 2026-11-30). Three epochs of one
    batch each step at progress 0, 1/3 and 2/3; a first step at rate 0 leaves the weights as they were, to the bit."""
    x, y = test_images[0][:20], test_images[1][:20].astype(np.int64)
    config = AdversarialConfig(method="fast", eps=0.1, schedule=schedule, eval_examples=10, collapse_drop=1.0,
                               collapse_gap=1.0)
    keras.utils.set_random_seed(0)
    result = train_adversarially(build_wong_cnn(), config, x=x, y=y, x_val=x, y_val=y, epochs=3, batch_size=20,
                                 learning_rate=1e-3, patience=5, seed=0)
    assert result.history["learning_rate"] == pytest.approx(rates, rel=1e-6, abs=1e-12)  # float32 variable
    model = build_wong_cnn()
    before = [w.copy() for w in model.get_weights()]
    train_adversarially(model, config, x=x, y=y, x_val=x, y_val=y, epochs=1, batch_size=20, learning_rate=1e-3,
                        patience=5, seed=0)
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert unchanged == (rates[0] == 0.0)


def test_a_scheduled_model_has_a_new_id_and_a_constant_rate_keeps_its_own():
    """Models trained before the schedule reached the optimizer keep their ids only where what they ran is what
    their config says (a constant rate)."""
    constant = ModelConfig(kind="madry_cnn", adversarial={"method": "pgd", "eps": 0.3, "steps": 5, "ramp_epochs": 2})
    assert "schedule_applied" not in constant.relevant()["adversarial"]
    decay = ModelConfig(kind="madry_cnn", epochs=7, batch_size=100, augment_shift=0,
                        adversarial={"method": "pgd", "eps": 0.3, "steps": 5, "ramp_epochs": 2, "schedule": "decay"})
    assert decay.relevant()["adversarial"]["schedule_applied"] is True
    assert decay.model_id != "madry_cnn-97079c6f3b"  # the README recipe's id while its decay was not applied


# --------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("adversarial, match", [
    ({"method": "free"}, r"models\[0\]\.train\.adversarial\.method.*'pgd', 'fast', 'trades'"),
    ({"method": "pgd", "eps": 0}, r"adversarial\.eps.*\(0, 1\]"),
    ({"method": "pgd", "eps": 1.5}, r"adversarial\.eps"),
    ({"method": "pgd", "steps": 0}, r"adversarial\.steps.*≥ 1|adversarial\.steps.*from 1"),
    ({"method": "pgd", "beta": 6}, r"adversarial\.beta.*option of trades, not of 'pgd'"),
    ({"method": "fast", "steps": 3}, r"adversarial\.steps.*not of 'fast'"),
    ({"method": "trades", "beta": -1}, r"adversarial\.beta.*positive"),
    ({"method": "pgd", "schedule": "cosine"}, r"adversarial\.schedule.*'constant', 'decay', 'onecycle'"),
    ({"method": "pgd", "epsilon": 0.3}, r"unknown adversarial option\(s\) \['epsilon'\]"),
    ("pgd", r"adversarial.*a table"),
], ids=["method", "eps-zero", "eps-above-1", "steps", "beta-for-pgd", "steps-for-fast", "beta-negative", "schedule",
        "unknown-key", "not-a-table"])
def test_bad_adversarial_values_are_refused_when_the_config_is_loaded(adversarial, match, tmp_path):
    config = {"name": "bad", "models": [{"name": "m", "train": {"kind": "madry_cnn", "adversarial": adversarial}}],
              "epsilons": {"linf": [0.1]}, "attacks": [{"name": "fgsm"}]}
    with pytest.raises(ConfigError, match=match):
        parse_config(config, base=tmp_path)


@pytest.mark.parametrize("value, match", [
    ("pgd,beta=1", r"--adversarial `beta`.*option of trades"),
    ("method=pgd,eps=2", r"--adversarial `eps`"),
    ("pgd,7", r"key=value"),
])
def test_cli_train_refuses_bad_adversarial_options(tmp_path, capsys, value, match):
    assert main(["train", "--model", "small_cnn", "--adversarial", value, "--output", str(tmp_path)]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_cli_adversarial_option_reads_as_the_config_table():
    from advsweep.experiments.cli import parse_adversarial

    assert parse_adversarial("fast,eps=0.3,clip_noise=false,noise=2") == {
        "method": "fast", "eps": 0.3, "clip_noise": False, "noise": 2}
    assert parse_adversarial("method=trades,eps=0.1,beta=6.0,schedule=onecycle") == {
        "method": "trades", "eps": 0.1, "beta": 6.0, "schedule": "onecycle"}


# --------------------------------------------------------------------------------------------
# model kinds


def test_madry_cnn_has_the_papers_architecture(test_images):
    model = build_madry_cnn()
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert shapes == {"image": (28, 28, 1), "conv1": (28, 28, 32), "pool1": (14, 14, 32), "conv2": (14, 14, 64),
                      "pool2": (7, 7, 64), "flatten": (3136,), "dense": (1024,), "logits": (10,)}
    assert model.get_layer("conv1").kernel.shape == (5, 5, 1, 32)
    assert model.count_params() == 832 + 51264 + 3136 * 1024 + 1024 + 10250
    assert model(test_images[0][:4]).shape == (4, 10)


def test_trades_cnn_is_the_papers_smallcnn_layer_by_layer(test_images):
    """TRADES' SmallCNN written out in PyTorch as their ``models/small_cnn.py`` defines it, given our weights: every
    layer's output on real test images equals ours (Keras' flatten order mapped onto PyTorch's), and our
    initialisation is theirs (He-normal convolutions with zero biases, PyTorch's default dense layers, zero logits)."""
    import torch
    from torch import nn

    model = build_trades_cnn()
    assert model.count_params() == 312_202
    for name, fan_in in (("conv1", 9), ("conv2", 288), ("conv3", 288), ("conv4", 576)):
        kernel, bias = (w.numpy() for w in model.get_layer(name).weights)
        assert not bias.any() and abs(kernel.std() / np.sqrt(2.0 / fan_in) - 1) < 0.15, name
        assert np.abs(kernel).max() > 2.5 * np.sqrt(2.0 / fan_in), name  # a normal, not He's truncated normal
    for name, fan_in in (("dense1", 1024), ("dense2", 200)):
        for weights in model.get_layer(name).weights:
            assert 0.9 / np.sqrt(fan_in) < np.abs(weights.numpy()).max() <= 1 / np.sqrt(fan_in), name
    assert not any(w.numpy().any() for w in model.get_layer("logits").weights)
    assert model.get_layer("dropout").rate == 0.5
    rng = np.random.default_rng(0)  # logits that are not all zero, so that the comparison says something
    model.get_layer("logits").set_weights([rng.normal(0, 0.2, (200, 10)).astype(np.float32),
                                           rng.normal(0, 0.2, 10).astype(np.float32)])

    theirs = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2, 2),
                           nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2, 2),
                           nn.Flatten(), nn.Linear(64 * 4 * 4, 200), nn.ReLU(), nn.Dropout(0.5), nn.Linear(200, 200),
                           nn.ReLU(), nn.Linear(200, 10)).eval()
    ours = {"conv1": 1, "conv2": 3, "pool1": 4, "conv3": 6, "conv4": 8, "pool2": 9, "dense1": 12, "dense2": 15,
            "logits": 16}  # our layer → the index of the module whose output it is (after its ReLU)
    _copy_into_torch(model, theirs, {name: index - (0 if name == "logits" else 1) for name, index in ours.items()
                                     if not name.startswith("pool")}, flattened=("dense1", (4, 4, 64)))
    with torch.no_grad():
        x = test_images[0][:64]
        inside = keras.Model(model.inputs, [model.get_layer(name).output for name in ours])
        outputs = dict(zip(ours, (t.numpy() for t in inside(x, training=False))))
        h = torch.tensor(x.transpose(0, 3, 1, 2).copy())
        for index, module in enumerate(theirs):
            h = module(h)
            for name in (n for n, i in ours.items() if i == index):
                got = h.numpy().transpose(0, 2, 3, 1) if h.ndim == 4 else h.numpy()
                if name == "dense1":
                    got = np.maximum(got, 0)
                np.testing.assert_allclose(outputs[name], got, atol=1e-4, rtol=1e-4, err_msg=name)
    logits = model(x, training=False).numpy()
    assert np.array_equal(logits, model(x, training=False).numpy())  # inference: the dropout is the identity
    assert not np.allclose(logits, model(x, training=True).numpy(), atol=1e-3)  # training: it drops


def _wong_cnn_in_torch(model):
    """Wong et al.'s ``mnist_net`` in PyTorch, as their code defines it, holding ``model``'s weights."""
    from torch import nn

    theirs = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
                           nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                           nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10)).eval()
    _copy_into_torch(model, theirs, {"conv1": 0, "conv2": 2, "dense": 5, "logits": 7}, flattened=("dense", (7, 7, 32)))
    return theirs


def _copy_into_torch(model, theirs, modules, *, flattened):
    """Copy ``model``'s layers into the PyTorch modules ``theirs[modules[name]]``: convolution kernels to (out, in,
    h, w), dense kernels transposed, and the first dense layer after the flatten (``flattened``: its name and the
    (h, w, c) it flattens) with its rows moved from Keras' (h, w, c) order to PyTorch's (c, h, w)."""
    import torch

    with torch.no_grad():
        for name, index in modules.items():
            kernel, bias = (w.numpy() for w in model.get_layer(name).weights)
            if name.startswith("conv"):
                kernel = kernel.transpose(3, 2, 0, 1)
            elif name == flattened[0]:
                kernel = kernel.reshape(*flattened[1], -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
            else:
                kernel = kernel.T
            theirs[index].weight.copy_(torch.tensor(kernel))
            theirs[index].bias.copy_(torch.tensor(bias))


def test_fast_training_step_is_wongs_mnist_step(test_images):
    """Our FGSM-from-a-random-start training step against Wong et al.'s MNIST code written out in PyTorch, from the
    same uniform noise on the same network: the same adversarials. Their start is not clipped to [0, 1] before the
    gradient; a step from the clipped start (their CIFAR-10 code's) differs on many pixels, so the comparison tells
    the two apart (the harness clipped until 2026-11-30, and on MNIST that made their recipe collapse)."""
    import torch
    import torch.nn.functional as F

    keras.utils.set_random_seed(3)
    model = build_wong_cnn()
    x, y = test_images[0][:64], test_images[1][:64].astype(np.int64)
    eps, alpha, key = 0.3, 0.375, tf.constant([7, 11], tf.int32)
    ours = fast_fgsm(lambda images: model(images, training=False), tf.constant(x), tf.constant(y), tf.constant(eps),
                     step_size=1.25, noise=1.0, clip_noise=True, key=key).numpy()
    noise = eps * tf.random.stateless_uniform(x.shape, key, -1.0, 1.0).numpy()

    theirs_model = _wong_cnn_in_torch(model)

    def wong(clip_start):  # fast_adversarial/MNIST/train_mnist.py, the FGSM branch (NCHW)
        X, Y = torch.tensor(x.transpose(0, 3, 1, 2).copy()), torch.tensor(y)
        delta = torch.tensor(noise.transpose(0, 3, 1, 2).copy())
        if clip_start:
            delta = torch.max(torch.min(1 - X, delta), 0 - X)
        delta.requires_grad = True
        F.cross_entropy(theirs_model(X + delta), Y).backward()
        delta = torch.clamp(delta + alpha * torch.sign(delta.grad.detach()), -eps, eps)
        delta = torch.max(torch.min(1 - X, delta), 0 - X)
        return (X + delta).detach().numpy().transpose(0, 2, 3, 1)

    differ = np.abs(ours - wong(clip_start=False)) > 1e-5
    assert differ.mean() < 1e-3  # a gradient component at ±0 may round either way in two frameworks
    assert (np.abs(ours - wong(clip_start=True)) > 1e-5).mean() > 0.05
    assert np.abs(ours - x).max() <= eps + 1e-6 and ours.min() >= 0.0 and ours.max() <= 1.0


def test_wong_cnn_is_the_fast_at_codes_network_layer_by_layer(test_images):
    """Wong et al.'s ``mnist_net`` written out in PyTorch as their fast-AT code defines it (padding 1, stride 2),
    given our weights: every layer's output on real test images equals ours (Keras' flatten order mapped onto
    PyTorch's), and our initialisation is PyTorch's default (uniform within ±1/√fan-in, weights and biases)."""
    import torch

    keras.utils.set_random_seed(0)
    model = build_wong_cnn()
    assert model.count_params() == 166_406
    for name, fan_in in (("conv1", 16), ("conv2", 256), ("dense", 1568), ("logits", 100)):
        for weights in (w.numpy() for w in model.get_layer(name).weights):
            assert np.abs(weights).max() <= 1 / np.sqrt(fan_in), name
            if weights.size >= 100:  # the bound is reached: uniform on it, not narrower (0.9^100 ≈ 3e-5 by chance)
                assert np.abs(weights).max() > 0.9 / np.sqrt(fan_in), name

    theirs = _wong_cnn_in_torch(model)
    ours = {"conv1": 1, "conv2": 3, "dense": 6, "logits": 7}  # our layer → the module whose output it is
    with torch.no_grad():
        x = test_images[0][:64]
        inside = keras.Model(model.inputs, [model.get_layer(name).output for name in ours])
        outputs = dict(zip(ours, (t.numpy() for t in inside(x))))
        h = torch.tensor(x.transpose(0, 3, 1, 2).copy())
        for index, module in enumerate(theirs):
            h = module(h)
            for name in (n for n, i in ours.items() if i == index):
                got = h.numpy().transpose(0, 2, 3, 1) if h.ndim == 4 else h.numpy()
                np.testing.assert_allclose(outputs[name], got, atol=1e-4, rtol=1e-4, err_msg=name)
    assert outputs["conv1"].shape[1:] == (14, 14, 16) and outputs["conv2"].shape[1:] == (7, 7, 32)
    assert np.ptp(outputs["logits"]) > 0.1  # a comparison of outputs that differ, so that it says something


def test_model_ids_of_natural_models_are_unchanged_and_kinds_keep_their_options():
    # the quick sweep's models keep their folders (ids computed before adversarial training existed)
    assert ModelConfig(kind="small_cnn", train_examples=10000, epochs=8).model_id == "small_cnn-2f0f82e300"
    assert ModelConfig(kind="vgg16", train_examples=10000).model_id == "vgg16-ce6e9f40c7"
    madry = ModelConfig(kind="madry_cnn")
    assert ModelConfig(kind="madry_cnn", cut="block5_pool").model_id == madry.model_id  # VGG options are ignored
    assert "feature_scaling" not in ModelConfig(kind="vgg16_scratch").relevant()
    a = ModelConfig(kind="madry_cnn", adversarial={"method": "pgd", "eps": 0.3})
    b = ModelConfig(kind="madry_cnn", adversarial={"method": "pgd", "eps": 0.3, "steps": 10, "step_size": 0.25})
    assert a.model_id == b.model_id  # the defaults resolved: the same training, the same id
    assert ModelConfig(kind="madry_cnn", adversarial={"method": "pgd", "eps": 0.2}).model_id != a.model_id
    assert ModelConfig.from_mapping(a.to_dict()) == a


def test_vgg16_from_scratch_is_randomly_initialised_and_trains_every_layer(vgg16_weights, test_images):
    model = build_model(ModelConfig(kind="vgg16_scratch", seed=0))
    base = model.get_layer("vgg16_base")
    assert base.trainable and len(model.trainable_weights) == len(model.weights)  # nothing frozen, no feature scaling
    kernel = base.get_layer("block1_conv1").kernel.numpy()
    assert not np.allclose(kernel, vgg16_weights[0]["block1_conv1"][0])  # not the ImageNet weights
    # one optimiser step moves the first convolution: it trains end to end
    x, y = test_images[0][:16], test_images[1][:16]
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)
    assert not np.array_equal(kernel, base.get_layer("block1_conv1").kernel.numpy())
    # a trainable base is differentiated by the plain tape (the fast path caches a frozen base's weights)
    forward = model_function(model, "fast")
    np.testing.assert_array_equal(forward(tf.constant(x[:2])).numpy(), model(x[:2], training=False).numpy())


# --------------------------------------------------------------------------------------------
# the ε-budget comparison


def test_sweep_over_training_budgets_draws_the_line_figure_and_the_heatmap(natural_and_robust, tmp_path):
    natural, robust = natural_and_robust
    config = tmp_path / "budgets.toml"
    config.write_text(f'''
name = "budgets-test"
[examples]
count = 30
selection = "first"
[[models]]
name = "natural"
path = "{natural.folder}"
[[models]]
name = "pgd"
path = "{robust.folder}"
[epsilons]
linf = [0.1, 0.2]
[[attacks]]
name = "pgd"
steps = 10
loss = "margin"
[minimal]
enabled = false
''')
    from advsweep.experiments.config import load_config

    run_dir = run_sweep(load_config(config), tmp_path / "results")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [m["training"]["eps"] for m in manifest["models"]] == [0.0, EPS]
    budgets = pd.read_csv(run_dir / "budgets.csv")
    summary = pd.read_csv(run_dir / "summary.csv")
    worst = summary[summary["attack"] == "worst case"]
    # every cell of the figures is the worst-case row of the summary (itself a function of the records)
    for row in budgets.itertuples():
        match = worst[(worst["model"] == row.model) & np.isclose(worst["eps"], row.test_eps)]
        assert row.robust_accuracy == pytest.approx(float(match["robust_accuracy"].iloc[0]))
    assert sorted(budgets["train_eps"].unique()) == [0.0, EPS]
    assert sorted(budgets["test_eps"].unique()) == [0.0, 0.1, 0.2]
    for stem in ("budgets_lines", "budgets_heatmap"):
        assert (run_dir / "figures" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (run_dir / "figures" / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    # the model trained at ε = 0.2 is the more robust one at ε = 0.2
    at = budgets[np.isclose(budgets["test_eps"], EPS)].set_index("train_eps")["robust_accuracy"]
    assert at[EPS] > at[0.0]


@pytest.mark.slow
def test_fast_training_with_too_large_a_step_collapses_and_the_run_says_so(tmp_path, capsys):
    """Fast adversarial training of the small CNN at ε = 0.3 with a step of 2.5 ε (twice Wong et al.'s 1.25 ε): every
    training adversarial lands on a corner of the ε-box, the model learns to withstand that one step and not PGD
    (measured: accuracy on the training adversarials 0.59 against held-out PGD-10 0.16 after four epochs, and
    widening). The detector must fire, the command must say so, and metrics.json must record it."""
    arguments = ["train", "--model", "small_cnn", "--train-examples", "10000", "--validation-examples", "1000",
                 "--epochs", "8", "--augment-shift", "0", "--output", str(tmp_path),
                 "--adversarial", "fast,eps=0.3,step_size=2.5,eval_examples=500"]
    assert main(arguments) == 0
    captured = capsys.readouterr()
    assert "adversarial training collapsed (catastrophic overfitting) after epoch" in captured.err
    summary = json.loads(captured.out)
    collapse = summary["collapse"]
    assert collapse is not None and collapse["best_epoch"] < collapse["epoch"] < 8
    metrics = json.loads((Path(summary["folder"]) / "metrics.json").read_text())
    assert metrics["adversarial"]["collapse"] == collapse and metrics["adversarial"]["stopped_early"]
    history = pd.read_csv(Path(summary["folder"]) / "history.csv")
    assert len(history) == collapse["epoch"] and history["collapsed"].iloc[-1] == 1
    assert metrics["best_epoch"] == collapse["best_epoch"]  # the weights before the collapse were kept


def test_feature_spread_floor_stops_dead_features_from_being_scaled_by_ten_million(vgg16_model, test_images):
    """The frozen VGG16's standardisation: a feature that never fires on clean digits has spread 0 and is divided by
    Keras' floor of 1e-7; adversarial training raises every spread to a tenth of the median first."""
    import keras

    from advsweep.models.training import SPREAD_FLOOR, floor_feature_spread
    from advsweep.models.vgg16 import feature_extractor

    features = feature_extractor(vgg16_model)(test_images[0][:300]).numpy()
    spread = features.std(axis=0)
    dead = np.flatnonzero(spread == 0)
    assert len(dead) > 0  # real features of real digits: some never fire
    scaling = keras.layers.Normalization(axis=-1)
    scaling.adapt(features)
    bump = np.zeros((1, features.shape[1]), np.float32)
    bump[0, dead[0]] = 1.0  # a perturbation makes one dead feature fire at 1
    before = float((scaling(features[:1] + bump) - scaling(features[:1])).numpy()[0, dead[0]])
    raised = floor_feature_spread(scaling, fraction=SPREAD_FLOOR)
    after = float((scaling(features[:1] + bump) - scaling(features[:1])).numpy()[0, dead[0]])
    assert before > 1e6  # amplified by Keras' floor
    assert raised >= len(dead)
    assert after == pytest.approx(1.0 / (SPREAD_FLOOR * np.median(spread)), rel=1e-3)
    # the informative features keep their standardisation
    alive = int(np.argmax(spread))
    np.testing.assert_allclose(np.asarray(scaling.variance)[0, alive] if np.ndim(scaling.variance) == 2
                               else np.asarray(scaling.variance)[alive], spread[alive] ** 2, rtol=1e-3)
