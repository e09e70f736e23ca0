"""What the attacks are and which values their hyper-parameters take, without importing TensorFlow.

The sweep config, the command line and the attacks themselves check hyper-parameters with the functions
here, so a bad value is refused with the same message whether it comes from a TOML file (before any work
starts, in a fraction of a second) or from a Python call. Every check raises
:class:`~advsweep.assets.validate.Invalid` (a ``ValueError``) naming the argument, the value received and
what is allowed.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from advsweep.assets.validate import Invalid, flag, integer, number, one_of
from advsweep.models.config import GRADIENT_PATHS, check_gradient_path

NORMS: tuple[str, ...] = ("linf", "l2")
LOSSES: tuple[str, ...] = ("ce", "margin")
IMPLEMENTATIONS: tuple[str, ...] = ("own", "foolbox")

_COMMON = ("norm", "loss", "targets", "example_ids", "gradient")
_ITERATIVE = ("steps", "rel_stepsize", "abs_stepsize", "early_stop")


# name → (foolbox adapter's attack name, fixed norm or None, keyword hyper-parameters of the own function)
ATTACK_SPECS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "fgsm": ("fgm", "linf", _COMMON),
    "fgm": ("fgm", None, _COMMON),
    "pgd": ("pgd", None, _COMMON + _ITERATIVE + ("random_start", "restarts", "seed")),
    "bim": ("bim", None, _COMMON + _ITERATIVE),
}


def check_norm(norm: Any) -> str:
    return one_of("norm", norm, NORMS, hint="strings, not np.inf")


def check_loss(loss: Any) -> str:
    return one_of("loss", loss, LOSSES, hint="'margin' is Carlini-Wagner's logit margin")


def eps_limit(norm: str, input_shape: tuple[int, ...]) -> float:
    """The largest meaningful ε on inputs in [0, 1]: the diameter of the input box (L∞: 1; L2: √dimensions,
    28 for MNIST)."""
    return 1.0 if norm == "linf" else float(np.sqrt(np.prod(input_shape)))


def check_epsilons(epsilons: Any, norm: str, input_shape: tuple[int, ...]) -> np.ndarray:
    """A list (or one number) of ε → float64 ``(K,)``; each finite, ≥ 0 and ≤ the norm's limit on inputs of
    ``input_shape`` (:func:`eps_limit`)."""
    values = [epsilons] if isinstance(epsilons, numbers.Number) or np.ndim(epsilons) == 0 else list(epsilons)
    if len(values) == 0:
        raise Invalid("epsilons", "a list of at least one ε", [])
    limit = eps_limit(norm, input_shape)
    checked = []
    for value in values:
        try:
            checked.append(number("epsilons", value, minimum=0.0, maximum=limit))
        except Invalid:
            raise Invalid("epsilons", f"numbers in [0, {limit:g}] for norm={norm!r} (inputs live in [0, 1])",
                          value) from None
    return np.asarray(checked, dtype=np.float64)


def check_positive_int(name: str, value: Any) -> int:
    return integer(name, value, minimum=1)


def check_positive_number(name: str, value: Any) -> float:
    return number(name, value, above=0.0)


def check_stepsize(rel_stepsize: Any, abs_stepsize: Any) -> None:
    check_positive_number("rel_stepsize", rel_stepsize)
    if abs_stepsize is not None:
        check_positive_number("abs_stepsize", abs_stepsize)


def check_flag(name: str, value: Any) -> bool:
    return flag(name, value)


def check_seed(seed: Any) -> int:
    return integer("seed", seed, minimum=0)


# the check of each hyper-parameter a user sets (``targets`` and ``example_ids`` are arrays, checked with the inputs)
PARAMETER_CHECKS: dict[str, Callable[[Any], Any]] = {
    "norm": check_norm,
    "loss": check_loss,
    "gradient": check_gradient_path,
    "steps": lambda value: check_positive_int("steps", value),
    "restarts": lambda value: check_positive_int("restarts", value),
    "rel_stepsize": lambda value: check_positive_number("rel_stepsize", value),
    "abs_stepsize": lambda value: None if value is None else check_positive_number("abs_stepsize", value),
    "random_start": lambda value: check_flag("random_start", value),
    "early_stop": lambda value: check_flag("early_stop", value),
    "seed": check_seed,
}


def check_attack(name: Any) -> str:
    if name not in ATTACK_SPECS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {sorted(ATTACK_SPECS)}")
    return str(name)


def check_implementation(implementation: Any) -> str:
    return one_of("implementation", implementation, IMPLEMENTATIONS)


def attack_parameters(name: str) -> list[str]:
    """The keyword hyper-parameters an attack accepts."""
    return list(ATTACK_SPECS[check_attack(name)][2])


def check_parameter(name: str, key: str, value: Any) -> Any:
    """Check one hyper-parameter of attack ``name``; ``ValueError`` names an unknown key or a bad value."""
    allowed = attack_parameters(name)
    if key not in allowed:
        raise ValueError(f"attack {name!r} has no parameter {key!r}; allowed: {allowed}")
    check = PARAMETER_CHECKS.get(key)
    return value if check is None else check(value)


def check_parameters(name: str, params: Mapping[str, Any]) -> None:
    """Check every hyper-parameter of a call or a config table, and that a fixed-norm attack keeps its norm."""
    for key, value in params.items():
        check_parameter(name, key, value)
    fixed = ATTACK_SPECS[check_attack(name)][1]
    if fixed is not None and params.get("norm", fixed) != fixed:
        raise ValueError(f"attack {name!r} is {fixed} only; use 'fgm' with norm='{params['norm']}'")


__all__ = [
    "ATTACK_SPECS",
    "GRADIENT_PATHS",
    "IMPLEMENTATIONS",
    "LOSSES",
    "NORMS",
    "PARAMETER_CHECKS",
    "attack_parameters",
    "check_attack",
    "check_epsilons",
    "check_flag",
    "check_implementation",
    "check_loss",
    "check_norm",
    "check_parameter",
    "check_parameters",
    "check_positive_int",
    "check_positive_number",
    "check_seed",
    "check_stepsize",
    "eps_limit",
]
