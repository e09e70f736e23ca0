"""What the attacks are and which values their hyper-parameters take, without importing TensorFlow.

The sweep config, the command line and the attacks themselves check hyper-parameters with the functions
here, so a bad value is refused with the same message whether it comes from a TOML file (before any work
starts, in a fraction of a second) or from a Python call. Every check raises
:class:`~advsweep.assets.validate.Invalid` (a ``ValueError``) naming the argument, the value received and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from advsweep.assets.validate import Invalid, flag, integer, number, one_of
from advsweep.defaults import AUTOATTACK, AUTOATTACK_VERSIONS
from advsweep.models.config import GRADIENT_PATHS, check_gradient_path

NORMS: tuple[str, ...] = ("linf", "l2")
L1_NORMS: tuple[str, ...] = ("linf", "l2", "l1")  # for the attacks that also take the L1 threat model
NORM_LABELS: dict[str, str] = {"linf": "L∞", "l2": "L2", "l1": "L1"}  # as tables and figures name the norms
NORM_LATEX: dict[str, str] = {"linf": r"\ell_\infty", "l2": r"\ell_2", "l1": r"\ell_1"}
LOSSES: tuple[str, ...] = ("ce", "margin")
IMPLEMENTATIONS: tuple[str, ...] = ("own", "foolbox")

_COMMON = ("norm", "loss", "targets", "example_ids", "gradient")
_ITERATIVE = ("steps", "rel_stepsize", "abs_stepsize", "early_stop")


_APGD = ("norm", "example_ids", "gradient", "steps", "restarts", "rho", "seed", "eot_draws", "large_radii")
ENSEMBLE: tuple[str, ...] = AUTOATTACK_VERSIONS["standard"]["attacks"]  # the standard attacks, in AutoAttack's order
MEMBERS: tuple[str, ...] = tuple(AUTOATTACK)  # every attack an ensemble may run
VERSIONS: tuple[str, ...] = tuple(AUTOATTACK_VERSIONS)


@dataclasses.dataclass(frozen=True)
class AttackDefinition:
    """One attack, declared once: the registry, the config checks and the docs read it, and nothing else lists
    the attacks.

    Attributes:
        function: ``"module:function"`` of the own implementation, imported when the registry is (so that reading
            this table imports no TensorFlow).
        params: the keyword hyper-parameters the function takes (``tests/test_attacks.py`` holds them to its
            signature).
        foolbox: the foolbox adapter's name of the attack, or ``None`` where only the own implementation exists.
        norm: the one norm the attack takes (FGSM: L∞), or ``None``.
        fixed: keyword arguments the name fixes (APGD-CE is ``auto_pgd`` with ``loss="ce"``).
        min_classes: the fewest classes a model must have (the targeted DLR loss reads the 4th logit).
        l1: whether it takes the L1 threat model too (AutoAttack's attacks, with the L1-ball ∩ box projection).
    """

    function: str
    params: tuple[str, ...]
    foolbox: str | None = None
    norm: str | None = None
    fixed: tuple[tuple[str, Any], ...] = ()
    min_classes: int = 2
    l1: bool = False


_FAB = ("norm", "example_ids", "gradient", "steps", "restarts", "alpha_max", "eta", "beta", "seed")
ATTACK_SPECS: dict[str, AttackDefinition] = {
    "fgsm": AttackDefinition("advsweep.attacks.gradient.fgm:fast_gradient_method", _COMMON, foolbox="fgm",
                             norm="linf"),
    "fgm": AttackDefinition("advsweep.attacks.gradient.fgm:fast_gradient_method", _COMMON, foolbox="fgm"),
    "pgd": AttackDefinition("advsweep.attacks.gradient.pgd:projected_gradient_descent",
                            _COMMON + _ITERATIVE + ("random_start", "restarts", "seed"), foolbox="pgd"),
    "bim": AttackDefinition("advsweep.attacks.gradient.pgd:basic_iterative_method", _COMMON + _ITERATIVE,
                            foolbox="bim"),
    "apgd-ce": AttackDefinition("advsweep.attacks.gradient.apgd:auto_pgd", _APGD, fixed=(("loss", "ce"),), l1=True),
    "apgd-dlr": AttackDefinition("advsweep.attacks.gradient.apgd:auto_pgd", _APGD, fixed=(("loss", "dlr"),), l1=True),
    "apgd-t": AttackDefinition("advsweep.attacks.gradient.apgd:auto_pgd_targeted", _APGD + ("target_classes",),
                               min_classes=4, l1=True),
    "fab-t": AttackDefinition("advsweep.attacks.ensemble.fab:fab_targeted",
                              _FAB[:4] + ("target_classes",) + _FAB[4:], l1=True),
    "fab": AttackDefinition("advsweep.attacks.ensemble.fab:fab_untargeted", _FAB, l1=True),
    "square": AttackDefinition("advsweep.attacks.ensemble.square:square_attack",
                               ("norm", "example_ids", "queries", "p_init", "restarts", "seed"), l1=True),
    "autoattack": AttackDefinition("advsweep.attacks.ensemble.cascade:autoattack",
                                   ("norm", "example_ids", "gradient", "version", "attacks", "settings", "seed"),
                                   l1=True),
}
L1_ATTACKS: tuple[str, ...] = tuple(name for name, definition in ATTACK_SPECS.items() if definition.l1)  # of a sweep


def implementations_of(name: str) -> tuple[str, ...]:
    """The implementations attack ``name`` has: ``("own", "foolbox")``, or ``("own",)`` where foolbox has none."""
    return IMPLEMENTATIONS if ATTACK_SPECS[check_attack(name)].foolbox is not None else ("own",)


def check_members(value: Any) -> list[str]:
    """The attacks of an ``autoattack`` ensemble: distinct names from :data:`MEMBERS`, in the order to run."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value \
            or any(v not in MEMBERS for v in value) or len(set(value)) != len(value):
        raise Invalid("attacks", f"a list of distinct names from {list(MEMBERS)}, in the order to run them", value)
    return list(value)


def members_of(version: str, attacks: Any = None) -> tuple[str, ...]:
    """The attacks an ``autoattack`` ensemble runs, in order: ``attacks`` where given (checked), else ``version``'s."""
    return tuple(check_members(list(AUTOATTACK_VERSIONS[version]["attacks"] if attacks is None else attacks)))


def norms_of(name: str) -> tuple[str, ...]:
    """The threat models attack ``name`` takes: L∞ and L2, and for AutoAttack's attacks (:data:`L1_ATTACKS`) L1
    too."""
    return L1_NORMS if name in L1_ATTACKS else NORMS


def check_norm(norm: Any, norms: tuple[str, ...] = NORMS) -> str:
    return one_of("norm", norm, norms, hint="strings, not np.inf")


def check_loss(loss: Any) -> str:
    return one_of("loss", loss, LOSSES, hint="'margin' is Carlini-Wagner's logit margin")


def eps_limit(norm: str, input_shape: tuple[int, ...]) -> float:
    """The largest meaningful ε on inputs in [0, 1]: the diameter of the input box (L∞: 1; L2: √dimensions,
    28 for MNIST; L1: the dimensions, 784 for MNIST)."""
    if norm == "linf":
        return 1.0
    dimensions = float(np.prod(input_shape))
    return dimensions if norm == "l1" else float(np.sqrt(dimensions))


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


def check_settings(value: Any) -> dict[str, dict[str, Any]]:
    """Changes to the ``autoattack`` members' standard settings, ``{member: {parameter: value}}`` (AutoAttack's
    "custom" version, e.g. ``{"square": {"queries": 1000}}``); each value checked as the member checks it."""
    if not isinstance(value, Mapping):
        raise Invalid("settings", f"a table of {list(MEMBERS)} → {{parameter = value}}", value)
    checked: dict[str, dict[str, Any]] = {}
    for member, changes in value.items():
        if member not in MEMBERS or not isinstance(changes, Mapping):
            raise Invalid("settings", f"a table of {list(MEMBERS)} → {{parameter = value}}", {member: changes})
        for key, setting in changes.items():
            if key not in AUTOATTACK[member]:
                raise Invalid(f"settings.{member}", f"parameters of {member}: {list(AUTOATTACK[member])}", key)
            try:
                PARAMETER_CHECKS[key](setting)
            except Invalid as error:
                raise Invalid(f"settings.{member}.{key}", error.requirement, error.value, hint=error.hint) from None
        checked[member] = dict(changes)
    return checked


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
    "rho": lambda value: number("rho", value, above=0.0, maximum=1.0),
    "target_classes": lambda value: check_positive_int("target_classes", value),
    "queries": lambda value: check_positive_int("queries", value),
    "p_init": lambda value: number("p_init", value, above=0.0, maximum=1.0),
    "alpha_max": lambda value: number("alpha_max", value, minimum=0.0, maximum=1.0),
    "eta": lambda value: number("eta", value, minimum=1.0),
    "beta": lambda value: number("beta", value, above=0.0, maximum=1.0),
    "eot_draws": lambda value: integer("eot_draws", value, minimum=1, maximum=1000),
    "large_radii": lambda value: check_flag("large_radii", value),
    "version": lambda value: one_of("version", value, VERSIONS,
                                    hint="'rand' for a model whose logits change between two calls"),
    "attacks": check_members,
    "settings": check_settings,
}


def check_attack(name: Any) -> str:
    if name not in ATTACK_SPECS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {sorted(ATTACK_SPECS)}")
    return str(name)


def check_implementation(implementation: Any) -> str:
    return one_of("implementation", implementation, IMPLEMENTATIONS)


def attack_parameters(name: str) -> list[str]:
    """The keyword hyper-parameters an attack accepts."""
    return list(ATTACK_SPECS[check_attack(name)].params)


def check_parameter(name: str, key: str, value: Any) -> Any:
    """Check one hyper-parameter of attack ``name``; ``ValueError`` names an unknown key or a bad value."""
    allowed = attack_parameters(name)
    if key not in allowed:
        raise ValueError(f"attack {name!r} has no parameter {key!r}; allowed: {allowed}")
    check = PARAMETER_CHECKS.get(key)
    return value if check is None else check(value)


def check_keys(name: str, params: Mapping[str, Any]) -> None:
    """The keys of a call or a config table are attack ``name``'s parameters, and a fixed-norm attack keeps its norm
    (the values are the attack's own checks, :data:`PARAMETER_CHECKS`, run where the attack starts)."""
    allowed = attack_parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"attack {name!r} has no parameter(s) {unknown}; allowed: {allowed}")
    fixed = ATTACK_SPECS[name].norm
    if fixed is not None and params.get("norm", fixed) != fixed:
        raise ValueError(f"attack {name!r} is {fixed} only; use 'fgm' with norm='{params['norm']}'")


def check_combination(name: str, params: Mapping[str, Any], norm: str, classes: int | None = None) -> None:
    """The rules that join a parameter to another, to the norm or to the model, declared here once and run where
    an attack starts (and by the config checks, before any model is loaded, with ``classes=None``):
    ``large_radii`` (l1-APGD's radii 3ε, 2ε, ε, directly or in an ensemble's ``settings``) needs the L1 threat
    model and at least 3 steps; a model has at least the classes the attack reads (:attr:`AttackDefinition.
    min_classes`; an ensemble, those of its members)."""
    radii = ["large_radii"] if params.get("large_radii") else []
    radii += [f"settings.{member}.large_radii" for member, values in (params.get("settings") or {}).items()
              if values.get("large_radii")]
    if radii and norm != "l1":
        raise Invalid(radii[0], "False outside the L1 threat model (it is l1-APGD's schedule of radii 3ε, 2ε, ε)",
                      True, hint="set norm = \"l1\" or leave the key out")
    if params.get("large_radii") and params.get("steps", AUTOATTACK[name]["steps"] if name in AUTOATTACK else 3) < 3:
        raise Invalid("steps", "at least 3 with large_radii (one per radius)", params.get("steps"))
    if classes is not None:
        members = members_of(params.get("version", "standard"), params.get("attacks")) if name == "autoattack" \
            else (name,)
        needed = max(ATTACK_SPECS[m].min_classes for m in members)
        if classes < needed:
            reader = next(m for m in members if ATTACK_SPECS[m].min_classes == needed)
            raise Invalid("model", f"a classifier of at least {needed} classes for {reader!r}"
                          + (" (the targeted DLR loss reads the 4th logit)" if needed == 4 else "")
                          + ("; leave it out of `attacks`" if name == "autoattack" else ""), classes)


__all__ = [
    "ATTACK_SPECS",
    "ENSEMBLE",
    "GRADIENT_PATHS",
    "IMPLEMENTATIONS",
    "L1_ATTACKS",
    "L1_NORMS",
    "NORM_LABELS",
    "NORM_LATEX",
    "LOSSES",
    "MEMBERS",
    "NORMS",
    "PARAMETER_CHECKS",
    "VERSIONS",
    "attack_parameters",
    "check_attack",
    "check_epsilons",
    "check_flag",
    "check_implementation",
    "check_loss",
    "check_members",
    "members_of",
    "norms_of",
    "check_settings",
    "check_norm",
    "check_parameter",
    "check_combination",
    "check_keys",
    "AttackDefinition",
    "check_positive_int",
    "check_positive_number",
    "check_seed",
    "check_stepsize",
    "eps_limit",
    "implementations_of",
]
