"""FGSM/FGM, PGD and BIM for logits models on [0, 1] images, with tf.GradientTape and through foolbox.

Every attack takes a list of ε and returns an :class:`AttackResult`: adversarial inputs per ε and a
(K ε × N examples) success matrix, as foolbox does. Labels are always required.

The package imports lazily: ``import attacks.spec`` (what the attacks are, and the checks of their
hyper-parameters) does not import TensorFlow, so that a config is checked before TensorFlow starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as mypy and editors see them
    from attacks.checks import Check
    from attacks.core import AttackResult, predict_logits
    from attacks.fgm import fast_gradient_method
    from attacks.foolbox_adapter import fmn_minimal_norms, foolbox_attack
    from attacks.minimal import MinimalResult, minimal_perturbation, robustness_curve
    from attacks.pgd import basic_iterative_method, projected_gradient_descent
    from attacks.registry import ATTACKS, run_attack
    from attacks.spec import IMPLEMENTATIONS, LOSSES, NORMS, attack_parameters

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    "ATTACKS": "attacks.registry",
    "IMPLEMENTATIONS": "attacks.spec",
    "LOSSES": "attacks.spec",
    "NORMS": "attacks.spec",
    "AttackResult": "attacks.core",
    "Check": "attacks.checks",
    "MinimalResult": "attacks.minimal",
    "attack_parameters": "attacks.spec",
    "basic_iterative_method": "attacks.pgd",
    "fast_gradient_method": "attacks.fgm",
    "fmn_minimal_norms": "attacks.foolbox_adapter",
    "foolbox_attack": "attacks.foolbox_adapter",
    "minimal_perturbation": "attacks.minimal",
    "predict_logits": "attacks.core",
    "projected_gradient_descent": "attacks.pgd",
    "robustness_curve": "attacks.minimal",
    "run_attack": "attacks.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
