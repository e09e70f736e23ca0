"""Every default value of advsweep, in one table.

The Python API (``run_attack``, ``projected_gradient_descent``, ``minimal_perturbation``), a sweep config
and ``advsweep evaluate`` all read their defaults from here, so a key left out means the same thing
wherever it is left out. This module imports nothing of the harness: every layer may read it.
docs/sweeps.md's "Defaults" section prints this table; ``tests/test_trust.py`` holds the entry points'
signatures and the config parser to it.
"""

from __future__ import annotations

from typing import Any, Final

# Iterative attacks, per (attack, norm): foolbox 3.3.4's defaults, so that both implementations run the same
# attack when nothing is set. PGD L∞ is Madry et al.'s MNIST setting (40 steps of 0.01 at ε = 0.3).
ITERATIVE: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("pgd", "linf"): {"steps": 40, "rel_stepsize": 0.01 / 0.3, "random_start": True},
    ("pgd", "l2"): {"steps": 50, "rel_stepsize": 0.025, "random_start": True},
    ("bim", "linf"): {"steps": 10, "rel_stepsize": 0.2, "random_start": False},
    ("bim", "l2"): {"steps": 10, "rel_stepsize": 0.2, "random_start": False},
}

# Every attack. early_stop: an example leaves the attack at its first adversarial iterate. The reported
# numbers (the any-iterate view) are the same either way and early stop saves the remaining steps; turn it off
# to also get each run's last iterate (``result.last``), which is what foolbox returns.
ATTACK: Final[dict[str, Any]] = {
    "norm": "linf",
    "loss": "ce",
    "restarts": 1,
    "early_stop": True,
    "seed": 0,
    "gradient": "auto",
    "implementations": ("own", "foolbox"),
}

# AutoAttack's members (Croce & Hein, ICML 2020; ``autoattack/autoattack.py``) with the settings of its "standard"
# version, used by the attack alone and inside the ``autoattack`` ensemble; APGD-DLR (untargeted) is a member of the
# ``plus`` and ``rand`` versions, FAB (untargeted) of ``plus``.
AUTOATTACK: Final[dict[str, dict[str, Any]]] = {
    "apgd-ce": {"steps": 100, "restarts": 1, "rho": 0.75, "eot_draws": 1, "large_radii": False},
    "apgd-dlr": {"steps": 100, "restarts": 1, "rho": 0.75, "eot_draws": 1, "large_radii": False},
    "apgd-t": {"steps": 100, "target_classes": 9, "restarts": 1, "rho": 0.75, "eot_draws": 1, "large_radii": False},
    "fab-t": {"steps": 100, "target_classes": 9, "restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
    "fab": {"steps": 100, "restarts": 5, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},  # untargeted: the plus version
    "square": {"queries": 5000, "p_init": 0.8, "restarts": 1},
}
# AutoAttack's versions: the members in the order they run, and the changes to the settings above. ``rand`` is for
# a randomized model (logits that change between two calls on one input): APGD-CE and APGD-DLR, each gradient
# averaged over 20 draws of the model (Expectation over Transformation), one run each. ``plus``: the authors' plus
# version (APGD-CE and APGD-DLR with 5 restarts, untargeted FAB with 5, Square, then APGD-T and FAB-T with 9 targets,
# one run each). ``by_norm``: a threat model's
# further changes (the standard version's L1 settings, as the authors' ``_set_version``: APGD-CE with 5 restarts and
# APGD-T with 5 targets, both through the radii 3ε, 2ε, ε).
AUTOATTACK_VERSIONS: Final[dict[str, dict[str, Any]]] = {
    "standard": {"attacks": ("apgd-ce", "apgd-t", "fab-t", "square"), "settings": {},
                 "by_norm": {"l1": {"apgd-ce": {"restarts": 5, "large_radii": True},
                                    "apgd-t": {"target_classes": 5, "large_radii": True}}}},
    "plus": {"attacks": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
             "settings": {"apgd-ce": {"restarts": 5}, "apgd-dlr": {"restarts": 5}}},
    "rand": {"attacks": ("apgd-ce", "apgd-dlr"),
             "settings": {"apgd-ce": {"eot_draws": 20}, "apgd-dlr": {"eot_draws": 20}}},
}
APGD_CE: Final[dict[str, Any]] = AUTOATTACK["apgd-ce"]  # APGD alone (untargeted, CE or DLR)
APGD_T: Final[dict[str, Any]] = AUTOATTACK["apgd-t"]
FAB: Final[dict[str, Any]] = AUTOATTACK["fab-t"]
FAB_UNTARGETED: Final[dict[str, Any]] = AUTOATTACK["fab"]
SQUARE: Final[dict[str, Any]] = AUTOATTACK["square"]

# The minimal-perturbation bisection behind the robustness curve. The margin loss cannot saturate (cross-
# entropy does on the frozen VGG16); 20 steps of 2.5 ε / steps per round (Madry et al.'s rule: the steps can
# travel 2.5 ε), and each example starts from the smallest grid ε that fooled it, so the curve never sits
# above the table (the sweep's check "robustness curve not above the worst case" holds this).
MINIMAL: Final[dict[str, Any]] = {
    "enabled": True,
    "norm": "linf",
    "examples": 100,
    "steps": 20,
    "loss": "margin",
    "eps_max": {"linf": 0.5, "l2": 6.0, "l1": 40.0},
    "tolerance": {"linf": 1.0 / 255.0, "l2": 0.02, "l1": 0.1},
}

# A randomized model (its logits differ between two calls): every point it is judged at, clean or adversarial, is
# classified by the mean of ``draws`` draws' softmax probabilities (advsweep.attacks.adaptive.randomized, where the number
# is measured and justified).
RANDOMIZED: Final[dict[str, Any]] = {"draws": 15}

# Escalation ([escalation]): when a check says the gradients lie, the attack the literature prescribes runs on its
# own: EOT (APGD-CE and APGD-DLR on the mean of the model's draws) for a randomized model; BPDA (the
# non-differentiable layers' backward pass replaced by the identity: ``layers``, or those found) with APGD-CE and
# APGD-T, and Square with ``square_queries`` queries (twice AutoAttack's 5000), for zero, NaN or stepped gradients
# or Square beating the gradient attacks.
ESCALATION: Final[dict[str, Any]] = {"enabled": True, "layers": [], "square_queries": 10000}

# A sweep, and the one-model sweep behind ``advsweep evaluate``.
SWEEP: Final[dict[str, Any]] = {
    "dataset": "mnist",
    "seed": 0,
    "chunk_size": 1000,
    "gradient": "auto",
    "examples": {"count": 200, "selection": "balanced", "seed": 0},
    "grid_examples": 6,
}

# How a sweep's units are run (the ``[run]`` table; ``advsweep sweep --executor/--address``): in this process, or
# as Ray tasks of ``cpus_per_task`` CPUs (TensorFlow's thread pools are set to it) and ``gpus_per_task`` GPUs, each
# retried up to ``max_retries`` times if its worker dies. None of it changes a record, so none of it is in the run id.
RUN: Final[dict[str, Any]] = {
    "executor": "local",
    "cpus_per_task": 1,
    "gpus_per_task": 0,
    "max_retries": 3,
}

# ``advsweep evaluate MODEL_DIR``: the first ``examples`` test images, FGSM and PGD (the ITERATIVE defaults)
# by both implementations over an L∞ grid.
EVALUATE: Final[dict[str, Any]] = {
    "examples": SWEEP["examples"]["count"],
    "eps": (0.1, 0.2, 0.3),
    "attacks": ("fgsm", "pgd"),
}


def render(value: Any) -> str:
    """A default as it would be written in a sweep config (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return str(value)


def table() -> list[tuple[str, str]]:
    """``(key, value)`` rows of every default, for docs/sweeps.md's "Defaults" table."""
    rows: list[tuple[str, str]] = []
    for (attack, norm), values in ITERATIVE.items():
        rows += [(f"{attack}, {norm}: `{key}`", render(value)) for key, value in values.items()]
    rows += [(f"every attack: `{key}`", render(value)) for key, value in ATTACK.items()]
    for attack, values in AUTOATTACK.items():
        rows += [(f"{attack}: `{key}`", render(value)) for key, value in values.items()]
    for key, value in MINIMAL.items():
        if isinstance(value, dict):
            rows += [(f"`[minimal]` `{key}` ({norm})", render(v)) for norm, v in value.items()]
        else:
            rows.append((f"`[minimal]` `{key}`", render(value)))
    for key, value in SWEEP.items():
        if key == "examples":
            rows += [(f"sweep: `examples.{k}`", render(v)) for k, v in value.items()]
        elif key == "grid_examples":
            rows.append(("sweep: `figures.grid_examples`", render(value)))
        else:
            rows.append((f"sweep: `{key}`", render(value)))
    rows += [(f"`[run]` `{key}`", render(value)) for key, value in RUN.items()]
    rows += [(f"`advsweep evaluate`: `--{key}`", render(value)) for key, value in EVALUATE.items()]
    return rows
