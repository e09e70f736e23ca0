"""One entry point for every attack and both implementations, so a sweep switches with one word."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import keras

from advsweep.attacks.gradient.apgd import auto_pgd, auto_pgd_targeted
from advsweep.attacks.ensemble.cascade import autoattack
from advsweep.attacks.engine.core import AttackResult
from advsweep.attacks.ensemble.fab import fab_targeted, fab_untargeted
from advsweep.attacks.gradient.fgm import fast_gradient_method
from advsweep.attacks.gradient.foolbox_adapter import foolbox_attack
from advsweep.attacks.gradient.pgd import basic_iterative_method, projected_gradient_descent
from advsweep.attacks.ensemble.square import square_attack
from advsweep.attacks.engine.spec import (  # noqa: F401  (re-exported)
    ATTACK_SPECS,
    IMPLEMENTATIONS,
    attack_parameters,
    check_attack,
    check_implementation,
    check_norm,
    implementations_of,
)

# name → (function of the own implementation, foolbox adapter's attack name, fixed norm or None); the names,
# norms and parameters are `attacks.spec.ATTACK_SPECS`, which the config checks read without TensorFlow
_FUNCTIONS: dict[str, Callable[..., AttackResult]] = {
    "fgsm": fast_gradient_method,
    "fgm": fast_gradient_method,
    "pgd": projected_gradient_descent,
    "bim": basic_iterative_method,
    "apgd-ce": functools.partial(auto_pgd, loss="ce"),
    "apgd-dlr": functools.partial(auto_pgd, loss="dlr"),
    "apgd-t": auto_pgd_targeted,
    "fab-t": fab_targeted,
    "fab": fab_untargeted,
    "square": square_attack,
    "autoattack": autoattack,
}
ATTACKS: dict[str, tuple[Callable[..., AttackResult], str | None, str | None]] = {
    name: (_FUNCTIONS[name], foolbox_name, fixed) for name, (foolbox_name, fixed, _) in ATTACK_SPECS.items()
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
        **params: the attack's hyper-parameters (see :func:`attack_parameters`).

    Raises:
        ValueError: unknown attack, implementation or parameter, or a bad value.
    """
    function, foolbox_name, fixed_norm = ATTACKS[check_attack(name)]
    implementation = check_implementation(implementation)
    if implementation not in implementations_of(name):
        raise ValueError(f"attack {name!r} has only the own implementation (foolbox has no {name}); "
                         f"use implementation='own'")
    allowed = attack_parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"attack {name!r} has no parameter(s) {unknown}; allowed: {allowed}")
    if fixed_norm is not None:
        if check_norm(params.get("norm", fixed_norm)) != fixed_norm:
            raise ValueError(f"attack {name!r} is {fixed_norm} only; use 'fgm' with norm='l2'")
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
