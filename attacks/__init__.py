"""The attack layer: every attack of a sweep on a logits model of [0, 1] images, and what is asked of its results.
FGSM/FGM, PGD and BIM with tf.GradientTape and through foolbox; AutoAttack's APGD-CE, APGD-DLR, APGD-T, FAB, FAB-T
and Square and their ensemble (standard, plus, rand; L∞, L2, L1); the attack-failure checks and the minimal-ε
search; EOT and BPDA for the defenses that call for them. One room per job (docs/development.md): ``engine/``
(checks, losses, gradients, the batching loop and its plan), ``gradient/``, ``ensemble/``, ``evaluation/``,
``adaptive/``; here, the entry (:mod:`.registry`: ``run_attack``) and the attacks' parameters (:mod:`.spec`).

Every attack takes a list of ε and returns an :class:`AttackResult`: adversarial inputs per ε and a
(K ε × N examples) success matrix, as foolbox does. Labels are always required.

The package imports lazily: ``import advsweep.attacks.engine.spec`` (what the attacks are, and the checks of their
hyper-parameters) does not import TensorFlow, so that a config is checked before TensorFlow starts.
"""

from __future__ import annotations

if __name__ != "advsweep.attacks":  # the folder imported by its bare name, from the repository root
    raise ImportError(f"{__name__!r} is the folder of advsweep.attacks: import advsweep.attacks (after `pip install -e .`), "
                      "so that one copy of the code runs")

from typing import TYPE_CHECKING

from advsweep.lazy import lazy_exports

if TYPE_CHECKING:  # the names as mypy and editors see them
    from advsweep.attacks.gradient.apgd import auto_pgd, auto_pgd_targeted
    from advsweep.attacks.ensemble.cascade import autoattack
    from advsweep.attacks.evaluation.checks import Check
    from advsweep.attacks.engine.core import AttackResult, predict_logits
    from advsweep.attacks.ensemble.fab import fab_targeted, fab_untargeted
    from advsweep.attacks.gradient.fgm import fast_gradient_method
    from advsweep.attacks.gradient.foolbox_adapter import fmn_minimal_norms, foolbox_attack
    from advsweep.attacks.evaluation.minimal import MinimalResult, minimal_perturbation, robustness_curve
    from advsweep.attacks.gradient.pgd import basic_iterative_method, projected_gradient_descent
    from advsweep.attacks.registry import ATTACKS, run_attack
    from advsweep.attacks.ensemble.square import square_attack
    from advsweep.attacks.engine.spec import IMPLEMENTATIONS, LOSSES, NORMS, attack_parameters

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    "ATTACKS": "advsweep.attacks.registry",
    "IMPLEMENTATIONS": "advsweep.attacks.engine.spec",
    "LOSSES": "advsweep.attacks.engine.spec",
    "NORMS": "advsweep.attacks.engine.spec",
    "AttackResult": "advsweep.attacks.engine.core",
    "Check": "advsweep.attacks.evaluation.checks",
    "MinimalResult": "advsweep.attacks.evaluation.minimal",
    "attack_parameters": "advsweep.attacks.engine.spec",
    "auto_pgd": "advsweep.attacks.gradient.apgd",
    "auto_pgd_targeted": "advsweep.attacks.gradient.apgd",
    "autoattack": "advsweep.attacks.ensemble.cascade",
    "fab_targeted": "advsweep.attacks.ensemble.fab",
    "fab_untargeted": "advsweep.attacks.ensemble.fab",
    "square_attack": "advsweep.attacks.ensemble.square",
    "basic_iterative_method": "advsweep.attacks.gradient.pgd",
    "fast_gradient_method": "advsweep.attacks.gradient.fgm",
    "fmn_minimal_norms": "advsweep.attacks.gradient.foolbox_adapter",
    "foolbox_attack": "advsweep.attacks.gradient.foolbox_adapter",
    "minimal_perturbation": "advsweep.attacks.evaluation.minimal",
    "predict_logits": "advsweep.attacks.engine.core",
    "projected_gradient_descent": "advsweep.attacks.gradient.pgd",
    "robustness_curve": "advsweep.attacks.evaluation.minimal",
    "run_attack": "advsweep.attacks.registry",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
