"""One entry point for every attack and both implementations, so a sweep switches with one word. The attacks are
the ones :data:`~advsweep.attacks.engine.spec.ATTACK_SPECS` declares, with the function each names: nothing here
lists them a second time."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import keras

from advsweep.attacks.engine.core import AttackResult
from advsweep.attacks.engine.spec import (  # noqa: F401  (re-exported)
    ATTACK_SPECS,
    IMPLEMENTATIONS,
    AttackDefinition,
    attack_parameters,
    check_attack,
    check_implementation,
    check_keys,
    check_norm,
    implementations_of,
)
from advsweep.attacks.gradient.foolbox_adapter import foolbox_attack


def _own(definition: AttackDefinition) -> Callable[..., AttackResult]:
    """The own implementation a definition names (``"module:function"``), with the arguments its name fixes."""
    module, _, name = definition.function.partition(":")
    function = getattr(importlib.import_module(module), name)
    return functools.partial(function, **dict(definition.fixed)) if definition.fixed else function


# name → (function of the own implementation, foolbox adapter's attack name, fixed norm or None)
ATTACKS: dict[str, tuple[Callable[..., AttackResult], str | None, str | None]] = {
    name: (_own(definition), definition.foolbox, definition.norm) for name, definition in ATTACK_SPECS.items()
}
_FOOLBOX_PARAMS = set(inspect.signature(foolbox_attack).parameters) - {"attack", "model", "x", "labels", "epsilons"}


def run_attack(
    name: str,
    model: keras.Model,
    x: Any,
    labels: Any,
    epsilons: Any,
    *,
    implementation: str = "own",
    **params: Any,
) -> AttackResult:
    """Run attack ``name`` by either implementation.

    Args:
        name: the attack; ``"fgsm"`` is the L∞ fast gradient method, ``"fgm"`` takes ``norm``; ``"pgd"``,
            ``"bim"``; AutoAttack's ``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"``, ``"fab-t"``, ``"fab"``
            (untargeted), ``"square"`` and their ensemble ``"autoattack"`` (own implementation only: foolbox has none
            of them).
        model, x, labels, epsilons: as :func:`advsweep.attacks.projected_gradient_descent`.
        implementation: ``"own"`` (this package's attacks) or ``"foolbox"``.
        **params: the attack's hyper-parameters (see :func:`attack_parameters`), each checked by the attack itself.

    Raises:
        ValueError: unknown attack, implementation or parameter, or a bad value.
    """
    function, foolbox_name, fixed_norm = ATTACKS[check_attack(name)]
    implementation = check_implementation(implementation)
    if implementation not in implementations_of(name):
        raise ValueError(f"attack {name!r} has only the own implementation (foolbox has no {name}); "
                         f"use implementation='own'")
    check_keys(name, params)
    if fixed_norm is not None:
        params["norm"] = fixed_norm
    if implementation == "own":
        return function(model, x, labels, epsilons, **params)
    # foolbox runs every step; its result is the any-iterate view, which early stop leaves unchanged (it only
    # skips the steps after an example's first adversarial), and result.last is foolbox's own last iterate
    params.pop("early_stop", None)
    unsupported = sorted(set(params) - _FOOLBOX_PARAMS)
    if unsupported:
        raise ValueError(f"the foolbox implementation of {name!r} does not take {unsupported}")
    assert foolbox_name is not None
    return foolbox_attack(foolbox_name, model, x, labels, epsilons, **params)
