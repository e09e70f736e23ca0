"""Evaluation checks that run with every evaluation and are reported with it.

After N. Carlini et al., "On Evaluating Adversarial Robustness" (arXiv:1902.06705, 2019), and the
sanity checks of AutoAttack (Croce & Hein, ICML 2020). A failed check does not stop an evaluation; it
is logged at WARNING level with what it suggests, and written next to the results.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from advsweep.attacks.engine.core import (
    BALL_TOLERANCE,
    BLOCK,
    AttackResult,
    check_example_ids,
    example_stream,
    gradient_fn,
    input_gradients,
    predict_logits,
)
from advsweep.attacks.engine.geometry import l2_norms, sizes_of, to_box
from advsweep.attacks.engine.spec import ENSEMBLE

logger = logging.getLogger(__name__)

STABILITY_DRAWS = 100  # Pintor et al.'s γ: random perturbations per example
STABILITY_RADIUS = 8 / 255  # and their size: each pixel moved uniformly within ± radius / 2
STABILITY_THRESHOLD = 0.1  # an example whose loss moves by more than this, relatively, on average is unstable
STABILITY_MAX_SHARE = 0.5  # the check fails where more than this share of the examples is unstable, else a note
UNBOUNDED_EPS = 0.5
UNBOUNDED_MAX_ACCURACY = 0.01
ZERO_GRADIENT_MAX_FRACTION = 0.01


@dataclasses.dataclass(frozen=True)
class Check:
    """One check's verdict. ``detail`` says what was measured; ``suggestion`` what a failure means.

    An ``informational`` check reports something worth knowing that does not make the evaluation unreliable
    (a single-step attack's curve that is not monotone, foolbox's last iterate oscillating, cross-entropy
    saturating where the margin loss is used): it is shown as "note", never as a failure.
    """

    name: str
    passed: bool
    detail: str
    suggestion: str = ""
    informational: bool = False

    @property
    def verdict(self) -> str:
        """``"pass"``, ``"note"`` (informational, not passed) or ``"FAIL"``."""
        return "pass" if self.passed else "note" if self.informational else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_result_validity(result: AttackResult, x: np.ndarray, *, label: str = "") -> Check:
    """No adversarial input leaves [0, 1] or its ε-ball, and none contains NaN."""
    delta = (result.x_adv - x[None]).reshape(len(result.epsilons), len(x), -1)
    sizes = sizes_of(delta.reshape(len(result.epsilons) * len(x), -1), result.norm).reshape(delta.shape[:2])
    excess = float(np.max(sizes - result.epsilons[:, None], initial=-np.inf)) if delta.size else 0.0
    nan = bool(np.isnan(result.x_adv).any())
    low, high = (float(result.x_adv.min()), float(result.x_adv.max())) if result.x_adv.size else (0.0, 1.0)
    passed = not nan and low >= 0.0 and high <= 1.0 and excess <= BALL_TOLERANCE
    return Check(
        name=f"valid adversarials{f' ({label})' if label else ''}",
        passed=passed,
        detail=f"range [{low:.6g}, {high:.6g}], largest excess over ε {max(excess, 0.0):.3g} "
               f"({result.norm}), NaN: {nan}",
        suggestion="" if passed else "the attack leaves the threat model: its numbers are not robust accuracies",
    )


def check_monotone(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                   informational: Sequence[str] = (), reasons: Mapping[str, str] | None = None) -> list[Check]:
    """Robust accuracy does not rise with ε, for each attack ``name → (epsilons, accuracies)``.

    Curves named in ``informational`` (single-step attacks, last-iterate views) are reported as notes, with
    ``reasons[name]`` saying why a rise there does not make the evaluation unreliable.
    """
    checks = []
    for name, (epsilons, accuracies) in curves.items():
        order = np.argsort(epsilons)
        acc = np.asarray(accuracies, dtype=float)[order]
        rises = np.diff(acc)
        worst = float(rises.max()) if len(rises) else 0.0
        passed = worst <= 0.0
        note = name in informational
        suggestion = "" if passed else (reasons or {}).get(name) if note else (
            "a stronger budget doing worse means the attack is not converging (too few steps, a step size too "
            "small or too large) or gradients are masked; try more steps, restarts or the margin loss")
        checks.append(Check(name=f"accuracy falls with ε ({name})", passed=passed,
                            detail=f"largest rise between neighbouring ε: {max(worst, 0.0):.4f}",
                            suggestion=suggestion or "", informational=note))
    return checks


def check_pgd_beats_fgsm(epsilons: Sequence[float], pgd: Sequence[float], fgsm: Sequence[float], *,
                         examples: int, label: str = "", informational: bool = False) -> Check:
    """PGD is at least as strong as FGSM at every ε (tolerance: one example)."""
    gap = np.asarray(pgd, dtype=float) - np.asarray(fgsm, dtype=float)
    tolerance = 1.0 / max(examples, 1)
    worst = int(np.argmax(gap)) if len(gap) else 0
    passed = bool(np.all(gap <= tolerance + 1e-12))
    return Check(
        name=f"PGD at least as strong as FGSM{f' ({label})' if label else ''}",
        passed=passed,
        detail=(f"largest excess of PGD over FGSM accuracy: {gap[worst]:+.4f} at ε={epsilons[worst]}"
                if len(gap) else "no common ε"),
        suggestion="" if passed else ("the last iterate oscillates: the any-iterate view of the same run is "
                                      "what to report" if informational else
                                      "an iterative attack losing to a single step points to gradient masking "
                                      "or a broken step size"),
        informational=informational,
    )


def check_unbounded(model: keras.Model, x: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                    example_ids: Any = None) -> list[Check]:
    """L∞ PGD-40 at ε = 0.5 with the margin loss (it cannot saturate) must bring accuracy to (near) zero.

    The same attack with the cross-entropy loss is reported beside it as a note: where it leaves many
    examples correct while the margin loss does not, the softmax saturates on this model (zero gradients
    at confident points) and cross-entropy attacks understate its vulnerability.
    """
    from advsweep.attacks.gradient.pgd import projected_gradient_descent

    def accuracy(loss: str, n: int) -> float:
        result = projected_gradient_descent(model, x[:n], labels[:n], [UNBOUNDED_EPS], norm="linf", early_stop=True,
                                            loss=loss, seed=seed,
                                            example_ids=None if example_ids is None else np.asarray(example_ids)[:n])
        return float(result.robust_accuracy[0])

    # the cross-entropy note runs on one block of examples: where the softmax saturates, every step of every
    # example is run, and a note needs no more
    n_note = min(len(x), BLOCK)
    margin, cross_entropy = accuracy("margin", len(x)), accuracy("ce", n_note)
    passed = margin <= UNBOUNDED_MAX_ACCURACY
    saturates = cross_entropy > UNBOUNDED_MAX_ACCURACY
    return [
        Check(name="unbounded attack wins", passed=passed,
              detail=f"L∞ PGD-40 (margin loss) at ε={UNBOUNDED_EPS}: accuracy {margin:.4f} on {len(x)} examples "
                     f"(must be ≤ {UNBOUNDED_MAX_ACCURACY})",
              suggestion="" if passed else "an attack that cannot win with an unbounded budget is broken or the "
                                           "model masks its gradients; the reported robustness is not trustworthy"),
        Check(name="cross-entropy does not saturate", passed=not saturates, informational=True,
              detail=f"L∞ PGD-40 (cross-entropy) at ε={UNBOUNDED_EPS}: accuracy {cross_entropy:.4f} on the first "
                     f"{n_note} examples (margin loss: {margin:.4f} on {len(x)})",
              suggestion="" if not saturates else "the softmax saturates on this model (zero gradients at confident "
                                                  "points): use loss='margin'; cross-entropy numbers overstate "
                                                  "robustness here"),
    ]


def check_logits(model: keras.Model, x: np.ndarray) -> Check:
    """The model's outputs are logits, not probabilities (attacks on softmax outputs saturate)."""
    outputs = predict_logits(model, x)
    sums = outputs.sum(axis=1)
    probability_like = bool(np.all(outputs >= 0) and np.all(outputs <= 1) and np.allclose(sums, 1.0, atol=1e-3))
    return Check(
        name="model returns logits",
        passed=not probability_like,
        detail=f"outputs in [{outputs.min():.3g}, {outputs.max():.3g}], row sums in [{sums.min():.3g}, {sums.max():.3g}]",
        suggestion="" if not probability_like else "the model ends in a softmax: the loss saturates and gradients "
                                                    "vanish; attack the logits (drop the softmax)",
    )


def check_deterministic(model: keras.Model, x: np.ndarray, *, example_ids: Any = None) -> Check:
    """The model's logits are the same in two calls on the same inputs (the unstable-predictions indicator of Pintor
    et al., NeurIPS 2022, in its exact form; AutoAttack's own check before choosing its ``rand`` version). A
    randomized model (noise layers, random transforms, dropout at inference) defeats single-draw attacks and every
    number measured with them."""
    first = predict_logits(model, x, example_ids=example_ids)
    second = predict_logits(model, x, example_ids=example_ids)
    differ = np.any(first != second, axis=tuple(range(1, first.ndim)))
    flips = int(np.sum(first.argmax(-1) != second.argmax(-1)))
    passed = not differ.any()
    return Check(
        name="logits are the same in two calls",
        passed=passed,
        detail=f"{int(differ.sum())} of {len(x)} examples got other logits in a second call on the same input "
               f"(largest change {float(np.abs(first - second).max()) if len(x) else 0.0:.3g}; {flips} changed class)",
        suggestion="" if passed else "the model is randomized: single-draw attacks (AutoAttack's standard version, "
                                     "PGD) misjudge it and its records cannot be reproduced; run AutoAttack's rand "
                                     "version (`version = \"rand\"` in the autoattack table: gradients averaged over "
                                     "20 draws, each success confirmed by a fresh call) or make inference "
                                     "deterministic",
    )


# An example is rough where its loss moves more than this many times what its gradient predicts. Measured on the
# quick sweep's 100 balanced test images (`python benchmarks/failure_indicators.py MODEL --parts stability
# --selection balanced`, AMD EPYC, AVX2, 2 cores, 2026-12-07; the ratio's median, 90th and 99th percentile, and its
# largest among the examples whose loss moves by more than 10% of itself): the small CNN 1.16 / 1.9 / 2.22, 1.02;
# the frozen VGG16 (ReLU kinks crossed within ± 2/255) 1.44 / 3.88 / 5.62, 6.77; the small CNN behind Gaussian
# input noise of σ = 0.3 (`--noise 0.3`) 19.4 / 37.7 / 71.1 (82 of 100 flagged). 10 lies above every deterministic
# example.
ROUGHNESS_THRESHOLD = 10.0


def _loss_changes(model: keras.Model, x: np.ndarray, labels: np.ndarray, *, seed: int, example_ids: Any,
                  draws: int, radius: float, gradients: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per example: the margin loss at the input, the mean absolute change of the loss under ``draws`` random
    perturbations (uniform within ± radius / 2 per pixel, clipped to [0, 1]), and, given the loss's input
    ``gradients``, the mean absolute change the gradient predicts for the same perturbations (``|∇L · δ|``, δ as
    clipped); zeros without them."""
    ids = check_example_ids(example_ids, len(x))

    def margin_loss(logits: np.ndarray) -> np.ndarray:
        z = logits.astype(np.float64)
        rows = np.arange(len(z))
        others = z.copy()
        others[rows, labels] = -np.inf
        return others.max(axis=1) - z[rows, labels]

    reference = margin_loss(predict_logits(model, x, example_ids=ids))
    streams = [example_stream(seed, int(i), "loss-variation", radius, 0) for i in ids]
    total, predicted = np.zeros(len(x)), np.zeros(len(x))
    flat = None if gradients is None else gradients.reshape(len(x), -1).astype(np.float64)
    for _ in range(draws):
        noise = np.stack([(rng.random(x.shape[1:], dtype=np.float32) - np.float32(0.5)) * np.float32(radius)
                          for rng in streams]) if len(x) else np.zeros_like(x)
        moved_x = to_box(x + noise).astype(np.float32)
        total += np.abs(reference - margin_loss(predict_logits(model, moved_x, example_ids=ids)))
        if flat is not None:
            delta = (moved_x.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
            predicted += np.abs(np.sum(flat * delta, axis=1))
    return reference, total / draws, predicted / draws


def loss_variation(model: keras.Model, x: np.ndarray, labels: np.ndarray, *, seed: int, example_ids: Any = None,
                   draws: int = STABILITY_DRAWS, radius: float = STABILITY_RADIUS) -> np.ndarray:
    """``(N,)``: Pintor et al.'s unstable-predictions measure per example (``unstable_predictions_indicator`` of
    their code): the loss's change under ``draws`` random perturbations of each pixel, uniform within ± radius / 2,
    relative to the loss at the input (divided by 1 where that is 0), averaged over the draws and capped at 1. The
    loss is the margin (best other logit minus the true one, what the harness's PGD ascends by default), where theirs
    is the attack's: the relative change of a cross-entropy near 0 (a confident example) measures rounding more than
    the model. The perturbed inputs are clipped to [0, 1], theirs are not. Each example draws its perturbations from
    its own stream (keyed by the seed and its test-set index), so the measure does not depend on its chunk."""
    reference, change, _ = _loss_changes(model, x, labels, seed=seed, example_ids=example_ids, draws=draws,
                                         radius=radius)
    scale = np.where(reference == 0, 1.0, np.abs(reference))
    return np.minimum(change / scale, 1.0)


def check_loss_stability(model: keras.Model, x: np.ndarray, labels: np.ndarray, *, seed: int,
                         example_ids: Any = None, shown: int = 8) -> Check:
    """Pintor et al.'s unstable predictions in their loss form (:func:`loss_variation`), held against what the
    loss's own gradient predicts: an example is flagged where its margin loss moves by more than 10% of itself on
    average (their threshold) under perturbations far smaller than any attack budget, **and** by more than
    :data:`ROUGHNESS_THRESHOLD` times the change its input gradient predicts for the same perturbations
    (``|∇L · δ|``). The first condition alone flags a smooth model's examples that sit near the decision boundary,
    where a small margin moves by much of itself along its gradient (7 of the quick sweep's VGG16's 100 images, a
    deterministic model, with at most 6.77 times the predicted change); the second keeps only the changes a gradient
    does not explain: a randomized model (the noise of each call: 82 of 100 behind Gaussian noise of σ = 0.3), or a
    loss that is flat or stepped at that scale (a quantizer: zero gradient, changes of whole steps). The check fails where more than half the examples are flagged and is a note where some
    are; the exact check of randomness is :func:`check_deterministic`."""
    ids = check_example_ids(example_ids, len(x))
    gradients = input_gradients(gradient_fn(model, "margin"), x, labels.astype(np.int64), ids)
    reference, change, predicted = _loss_changes(model, x, labels, seed=seed, example_ids=ids,
                                                 draws=STABILITY_DRAWS, radius=STABILITY_RADIUS, gradients=gradients)
    scale = np.where(reference == 0, 1.0, np.abs(reference))
    variation = np.minimum(change / scale, 1.0)
    roughness = change / np.maximum(predicted, 1e-12)
    flagged = (variation > STABILITY_THRESHOLD) & (roughness > ROUGHNESS_THRESHOLD)
    share = float(flagged.mean()) if len(x) else 0.0
    named = ", ".join(str(int(i)) for i in ids[flagged][:shown]) + (" …" if flagged.sum() > shown else "")
    return Check(
        name="loss is stable under small random noise",
        passed=not flagged.any(),
        detail=f"{int(flagged.sum())} of {len(x)} examples change their margin loss by more than "
               f"{STABILITY_THRESHOLD:g} of itself and more than {ROUGHNESS_THRESHOLD:g}× what its gradient predicts, "
               f"on average under {STABILITY_DRAWS} uniform perturbations of ± {STABILITY_RADIUS / 2:.3g} per pixel "
               f"(median change {float(np.median(variation)) if len(x) else 0.0:.3g} of the loss, "
               f"{float(np.median(roughness)) if len(x) else 0.0:.3g}× the gradient's prediction)"
               + (f"; examples {named}" if flagged.any() else ""),
        informational=bool(flagged.any()) and share <= STABILITY_MAX_SHARE,
        suggestion="" if not flagged.any() else (
            "the loss is erratic at the scale of one attack step, beyond what its gradient says (a randomized model, "
            "or a loss that is flat or stepped there): gradient attacks misjudge it; EOT (AutoAttack's rand version) "
            "for a randomized model, BPDA or a gradient-free attack (Square) for a non-differentiable one"),
    )


def check_gradients(model: keras.Model, x: np.ndarray, labels: np.ndarray, *, example_ids: Any = None) -> Check:
    """Input gradients of the loss are not zero (a zero gradient hides examples from every gradient attack)."""
    ids = check_example_ids(example_ids, len(x))
    gradients = input_gradients(gradient_fn(model, "ce"), x, labels.astype(np.int64), ids)
    all_norms = l2_norms(gradients.reshape(len(x), -1))
    zero = float(np.mean(all_norms < 1e-12)) if len(all_norms) else 0.0
    nan = bool(np.isnan(all_norms).any())
    passed = zero <= ZERO_GRADIENT_MAX_FRACTION and not nan
    return Check(
        name="input gradients are not zero",
        passed=passed,
        detail=f"{zero:.2%} of {len(all_norms)} examples have a zero gradient; median L2 norm "
               f"{float(np.median(all_norms)) if len(all_norms) else 0.0:.3g}; NaN: {nan}",
        suggestion="" if passed else "zero or NaN gradients are gradient masking (saturated softmax, "
                                     "non-differentiable preprocessing): use the margin loss or a gradient-free attack",
    )


def check_silent_success(found: Mapping[float, int], examples: int, *, label: str = "") -> Check:
    """Silent success (Pintor et al., "Indicators of Attack Failure", NeurIPS 2022): points on an attack's path were
    adversarial but the point it returns is not. ``found``: per ε, the examples the any-iterate view counts fooled
    and the returned (last-iterate) point does not. The harness's any-iterate rows already count them fooled, so it
    is a note, not a failure: it says how much a library that returns the last iterate would overstate robustness."""
    silent = {eps: count for eps, count in found.items() if count}
    return Check(
        name=f"no silent success{f' ({label})' if label else ''}",
        passed=not silent,
        detail=f"examples whose path held an adversarial that the returned point lost, per ε: "
               f"{ {float(e): int(c) for e, c in found.items()} } of {examples}",
        suggestion="" if not silent else "the last iterate loses adversarials the attack found (an oscillating "
                                         "step): report the any-iterate view (the harness's `any` rows), never the "
                                         "returned point alone",
        informational=True,
    )


INCOMPLETE_NOTE_SHARE = 0.05  # up to this share of the robust examples flagged, incomplete optimization is a note


def check_incomplete_optimization(flagged: Mapping[float, Sequence[int]], robust: Mapping[float, int], *,
                                  label: str = "", shown: int = 8,
                                  closed: Mapping[float, Sequence[int]] | None = None,
                                  examples: Mapping[float, int] | None = None) -> Check:
    """Incomplete optimization (Pintor et al., "Indicators of Attack Failure", NeurIPS 2022): among the examples
    an attack left robust at ε, those with a run whose loss was still rising when it ended (``loss_rise`` above
    :data:`advsweep.attacks.engine.programme.INCOMPLETE_THRESHOLD`: the best loss rose more than 5% of its range over the
    run's last 10 evaluations, their definition). ``flagged``: per ε, those examples' test-set indices that nothing
    else in the evaluation settles; ``closed``: per ε, the flagged examples another attack of the same evaluation
    settles (it fooled them, or its own run left them robust with a loss that had stopped rising); ``robust``: per
    ε, how many examples the attack left robust.

    Pintor et al. flag one attack run on one sample; over an evaluation, a flagged example's robustness rests on a
    run that had not converged unless another attack settles it. The check fails where more than
    :data:`INCOMPLETE_NOTE_SHARE` of an ε's robust examples are flagged and open (an attack stopped too early and
    nothing stronger ran: PGD-40 with a fixed step on an adversarially trained CNN left 21 of 95 flagged on the
    first 100 test images, any attack of 10 steps or fewer flags every example whose loss rose at all) and, given
    ``examples`` (per ε, the examples attacked), more than the 95% Wilson interval's half-width of the robust
    accuracy, in examples (so that a run whose open examples could move its number by less than the number's own
    sampling uncertainty is not at risk: 2 open of 3 robust among 100 examples, ±3.2 examples); it is a note below
    that, or where the rest of the evaluation closes them (the quick sweep's PGD-10 beside AutoAttack)."""
    closed = {float(e): list(v) for e, v in (closed or {}).items() if len(v)}
    check = _flagged_check(
        f"optimization complete{f' ({label})' if label else ''}", flagged, robust, note_share=INCOMPLETE_NOTE_SHARE,
        shown=shown, measured="robust examples whose attack loss was still rising at the end of a run, and that no "
                              "other attack settles",
        suggestion="the attack stopped while its loss was still improving on these examples: run more steps (or "
                   "restarts) and see whether they stay robust", examples=examples)
    if not closed:
        return check
    counts = {e: len(v) for e, v in closed.items()}
    return dataclasses.replace(
        check, passed=False, informational=check.passed or check.informational,
        detail=check.detail + f"; still rising but settled by another attack of the evaluation (fooled by it, or "
                              f"robust after its converged run), per ε: {counts}",
        suggestion=check.suggestion or "the evaluation's other attacks settle these examples: the worst case does not "
                                       "rest on this attack's unfinished runs")


TRANSFER_NOTE_SHARE = 0.05  # up to this share of the surrogate's adversarials failing to transfer, a note


def check_transfer(failed: Mapping[float, Sequence[int]], fooled: Mapping[float, int], *, label: str = "",
                   shown: int = 8) -> Check:
    """Transfer failure (Pintor et al., "Indicators of Attack Failure", NeurIPS 2022): adversarials found on a
    surrogate that fool the surrogate but not the model they are evaluated on. ``failed``: per ε, the test-set
    indices of those examples (correct on the model, fooled on the surrogate); ``fooled``: per ε, how many of the
    surrogate's points fooled it. Where more than :data:`TRANSFER_NOTE_SHARE` of them fail to transfer, the check
    fails: the transfer row's robust accuracy then measures the distance between the two models more than the
    model's robustness; below, a note naming the examples."""
    return _flagged_check(
        f"adversarials transfer from the surrogate{f' ({label})' if label else ''}", failed, fooled,
        note_share=TRANSFER_NOTE_SHARE, shown=shown,
        measured="of the surrogate's adversarials (those that fool it), how many leave this model correct",
        suggestion="the surrogate's adversarials do not fool this model: its transfer row overstates its "
                   "robustness; report a white-box attack on the model itself (or the worst case), or choose a "
                   "surrogate closer to it")


def wilson_half_width(successes: int, trials: int, z: float = 1.959963984540054) -> float:
    """Half the width of the 95% Wilson interval of ``successes`` of ``trials`` (0 for no trials)."""
    if trials <= 0:
        return 0.0
    p = successes / trials
    return float(z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials))


def _flagged_check(name: str, flagged: Mapping[float, Sequence[int]], of: Mapping[float, int], *, note_share: float,
                   shown: int, measured: str, suggestion: str, examples: Mapping[float, int] | None = None) -> Check:
    """A check over examples flagged per ε (their test-set indices) out of ``of`` per ε: passed where none is
    flagged, a note where at most ``note_share`` of an ε's are, a failure above; the detail counts them per ε and
    names the first ``shown`` of each. With ``examples`` (per ε, the examples the count is a share of), an ε fails
    only where its flagged examples are also more than the 95% interval's half-width of ``of`` among ``examples``:
    a number that those examples could move by less than its own sampling uncertainty is not at risk."""
    counts = {float(e): len(v) for e, v in flagged.items()}
    failing = {float(e): sorted(int(i) for i in v) for e, v in flagged.items() if len(v)}
    share = {e: counts[e] / max(int(of.get(e, 0)), 1) for e in failing}
    if examples is not None:
        share = {e: v if counts[e] > wilson_half_width(int(of.get(e, 0)), int(examples.get(e, 0)))
                 * int(examples.get(e, 0)) else 0.0 for e, v in share.items()}
    named = "; ".join(f"ε {e:g}: {', '.join(map(str, v[:shown]))}{' …' if len(v) > shown else ''}"
                      for e, v in failing.items())
    return Check(
        name=name,
        passed=not failing,
        detail=f"{measured}, per ε: { {e: f'{counts[e]} of {int(of.get(e, 0))}' for e in counts} }"
               + (f" (examples {named})" if named else ""),
        suggestion=suggestion if failing else "",
        informational=bool(failing) and all(v <= note_share for v in share.values()),
    )


def check_curve_below_worst_case(epsilons: Sequence[float], curve: Sequence[float], worst_case: Sequence[float], *,
                                 examples: int, tolerance: float, label: str = "") -> Check:
    """The minimal-perturbation curve is not above the worst case over the grid's attacks, on the same examples.

    Both measure the same thing (the fraction of examples no attack fooled within ε): a curve above the
    worst-case row means the bisection's attack is weaker than the grid's. The curve is read at
    ``ε + tolerance`` (the bisection's final interval width) so that its resolution is not counted
    against it.
    """
    excess = np.asarray(curve, dtype=float) - np.asarray(worst_case, dtype=float)
    worst = int(np.argmax(excess)) if len(excess) else 0
    passed = bool(np.all(excess <= 1e-12))
    return Check(
        name=f"robustness curve not above the worst case{f' ({label})' if label else ''}",
        passed=passed,
        detail=(f"largest excess of the curve (at ε + {tolerance:.4g}) over the worst-case accuracy: "
                f"{excess[worst]:+.4f} at ε={epsilons[worst]} on {examples} examples" if len(excess)
                else "no common ε"),
        suggestion="" if passed else "the minimal-ε search is weaker than the grid's attacks (a saturating loss, "
                                     "too few steps, or it ignores the grid's adversarials): its curve overstates "
                                     "robustness",
    )


def check_ensemble(result: AttackResult, *, label: str = "autoattack",
                   members: Sequence[str] = ENSEMBLE) -> list[Check]:
    """What an ensemble's ``found_by`` says about the model's gradients, after AutoAttack's own checks.

    - Square needs no gradient; when it fools examples the gradient attacks left robust, the gradients mislead
      (AutoAttack's ``check_square_sr``): a failure, the white-box numbers of this model are not to be trusted.
    - APGD-T's DLR loss and FAB-T are invariant to the logits' scale, APGD-CE's cross-entropy is not: when the
      former fool more examples than APGD-CE did, the softmax saturates (cross-entropy gradients vanish), and
      every cross-entropy attack of the run (PGD, FGSM with ``loss = "ce"``) overstates robustness. A note: the
      ensemble's own number does not depend on it. APGD-DLR (the ``rand`` and ``plus`` versions) and untargeted FAB
      (``plus``) count with the scale-invariant.

    ``members``: the attacks the ensemble ran; the Square check needs Square among them.
    """
    if result.found_by is None:
        return []
    by = np.asarray(result.found_by)
    eps = [f"{e:g}" for e in result.epsilons]
    per_eps = {name: [int(c) for c in (by == name).sum(axis=1)]
               for name in ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "fab", "square")}
    n = by.shape[1]
    square = sum(per_eps["square"])
    checks = [] if "square" not in members else [Check(
        name=f"no gradient masking: Square adds nothing to the gradient attacks ({label})",
        passed=square == 0,
        detail=f"examples fooled only by Square, per ε {eps}: {per_eps['square']} of {n}",
        suggestion="" if square == 0 else "a score-based attack beat the gradient attacks: the gradients are masked "
                                          "or obfuscated; trust only the ensemble's number, and check the model",
    )]
    if (by == "apgd-ce").any() or (by == "").any():
        ce = per_eps["apgd-ce"]
        scale_free = [sum(counts) for counts in zip(per_eps["apgd-t"], per_eps["apgd-dlr"], per_eps["fab-t"],
                                                    per_eps["fab"], strict=True)]
        passed = all(s <= c for s, c in zip(scale_free, ce, strict=True))
        checks.append(Check(
            name=f"cross-entropy gradients carry the attack ({label})",
            passed=passed,
            detail=f"fooled first by APGD-CE per ε {eps}: {ce}; then by the scale-invariant APGD-DLR, APGD-T, FAB-T "
                   f"and FAB: {scale_free} (of {n})",
            suggestion="" if passed else "APGD-CE's cross-entropy missed what the scale-invariant losses found: the "
                                         "softmax saturates (large logits) and cross-entropy gradients vanish; "
                                         "cross-entropy attacks (PGD, FGSM) overstate this model's robustness",
            informational=True,
        ))
    return checks
