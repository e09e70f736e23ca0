"""FGSM/FGM, PGD and BIM for logits models on [0, 1] images, with tf.GradientTape and through foolbox.

Every attack takes a list of ε and returns an :class:`AttackResult`: adversarial inputs per ε and a
(K ε × N examples) success matrix, as foolbox does. Labels are always required.
"""

from attacks.checks import Check
from attacks.core import LOSSES, NORMS, AttackResult, predict_logits
from attacks.fgm import fast_gradient_method
from attacks.foolbox_adapter import fmn_minimal_norms, foolbox_attack
from attacks.minimal import MinimalResult, minimal_perturbation, robustness_curve
from attacks.pgd import basic_iterative_method, projected_gradient_descent
from attacks.registry import ATTACKS, IMPLEMENTATIONS, attack_parameters, run_attack

__all__ = [
    "ATTACKS",
    "IMPLEMENTATIONS",
    "LOSSES",
    "NORMS",
    "AttackResult",
    "Check",
    "MinimalResult",
    "attack_parameters",
    "basic_iterative_method",
    "fast_gradient_method",
    "fmn_minimal_norms",
    "foolbox_attack",
    "minimal_perturbation",
    "predict_logits",
    "projected_gradient_descent",
    "robustness_curve",
    "run_attack",
]
