"""FGSM/FGM, PGD and BIM for logits models on [0, 1] images, with tf.GradientTape and through foolbox; AutoAttack's
APGD-CE, APGD-DLR, APGD-T, FAB-T and Square and their ensemble, with tf.GradientTape.

Every attack takes a list of ε and returns an :class:`AttackResult`: adversarial inputs per ε and a
(K ε × N examples) success matrix, as foolbox does. Labels are always required.

The package imports lazily: ``import advsweep.attacks.spec`` (what the attacks are, and the checks of their
hyper-parameters) does not import TensorFlow, so that a config is checked before TensorFlow starts.
"""

from __future__ import annotations

if __name__ != "advsweep.attacks":  # the folder imported by its bare name, from the repository root
    raise ImportError(f"{__name__!r} is the folder of advsweep.attacks: import advsweep.attacks (after `pip install -e .`), "
                      "so that one copy of the code runs")

from typing import TYPE_CHECKING

from advsweep.lazy import lazy_exports

if TYPE_CHECKING:  # the names as mypy and editors see them
    from advsweep.attacks.apgd import auto_pgd, auto_pgd_targeted
    from advsweep.attacks.ensemble import autoattack
    from advsweep.attacks.checks import Check
    from advsweep.attacks.core import AttackResult, predict_logits
    from advsweep.attacks.fab import fab_targeted, fab_untargeted
    from advsweep.attacks.fgm import fast_gradient_method
    from advsweep.attacks.foolbox_adapter import fmn_minimal_norms, foolbox_attack
    from advsweep.attacks.minimal import MinimalResult, minimal_perturbation, robustness_curve
    from advsweep.attacks.pgd import basic_iterative_method, projected_gradient_descent
    from advsweep.attacks.registry import ATTACKS, run_attack
    from advsweep.attacks.square import square_attack
    from advsweep.attacks.spec import IMPLEMENTATIONS, LOSSES, NORMS, attack_parameters

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    "ATTACKS": "advsweep.attacks.registry",
    "IMPLEMENTATIONS": "advsweep.attacks.spec",
    "LOSSES": "advsweep.attacks.spec",
    "NORMS": "advsweep.attacks.spec",
    "AttackResult": "advsweep.attacks.core",
    "Check": "advsweep.attacks.checks",
    "MinimalResult": "advsweep.attacks.minimal",
    "attack_parameters": "advsweep.attacks.spec",
    "auto_pgd": "advsweep.attacks.apgd",
    "auto_pgd_targeted": "advsweep.attacks.apgd",
    "autoattack": "advsweep.attacks.ensemble",
    "fab_targeted": "advsweep.attacks.fab",
    "fab_untargeted": "advsweep.attacks.fab",
    "square_attack": "advsweep.attacks.square",
    "basic_iterative_method": "advsweep.attacks.pgd",
    "fast_gradient_method": "advsweep.attacks.fgm",
    "fmn_minimal_norms": "advsweep.attacks.foolbox_adapter",
    "foolbox_attack": "advsweep.attacks.foolbox_adapter",
    "minimal_perturbation": "advsweep.attacks.minimal",
    "predict_logits": "advsweep.attacks.core",
    "projected_gradient_descent": "advsweep.attacks.pgd",
    "robustness_curve": "advsweep.attacks.minimal",
    "run_attack": "advsweep.attacks.registry",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
