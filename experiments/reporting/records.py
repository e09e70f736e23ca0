"""Per-example records: the only numbers a sweep keeps, and the only input of its tables and figures.

One row per example × model × attack × implementation × ε, in Parquet (columnar, typed, compressed):

=============== ======= ===========================================================================
column          type    meaning
=============== ======= ===========================================================================
model           string  the model's name in the sweep config
attack          string  the attack's label in the sweep config (``"clean"`` for the clean pass)
implementation  string  ``"own"`` or ``"foolbox"`` (``"-"`` for the clean pass)
iterate         string  which point of the attack the row reports: ``"any"``: the first adversarial among
                        all the points the attack evaluated inside the ε-ball (own and foolbox alike, the
                        same bookkeeping); ``"last"``: the point the attack returns, as foolbox does;
                        ``"single"``: one-step attacks (FGSM), whose only point is both; ``"-"`` clean
norm            string  ``"linf"``, ``"l2"`` or ``"l1"``: the threat model ε is measured in
eps             float64 the budget, in pixel units on [0, 1]
example         int64   index into the sweep's test set (``dataset`` in the run's config)
label           int16   true class
prediction      int16   the model's class for the (adversarial) input
correct         bool    ``prediction == label``: the example is robust at this ε
loss            float32 cross-entropy of the logits at the adversarial input
margin          float32 logit of the true class minus the largest other logit (> 0: correct)
linf            float32 L∞ size of the perturbation ``x_adv − x``
l2              float32 L2 size of the perturbation
l1              float32 L1 size of the perturbation
found_by        string  for an ensemble (``autoattack``), the member attack whose adversarial the row reports
                        (``"clean"``: misclassified as it is; ``"-"`` where the example is robust); for a
                        transfer attack (one with a ``surrogate``), ``"surrogate"`` where the row's point
                        fooled the surrogate it was found on, whether or not it fools this model (where it
                        does not: Pintor et al.'s transfer failure); ``"-"`` for every other attack
loss_rise       float32 for an example the attack left robust, Pintor et al.'s incomplete-optimization measure
                        of the attack's runs at this ε (the largest over them): the rise of the best loss
                        over a run's last 10 evaluations, as a fraction of the loss's range over the run;
                        above 0.05 the run ended while its loss was still rising (more steps might have
                        found an adversarial). NaN where the example is fooled, at ε = 0, for the clean pass,
                        and for attacks whose loss is not traced (FGSM, FAB-T, Square, foolbox's)
=============== ======= ===========================================================================

Files are written under a temporary name and renamed into place, so a file that exists is whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from advsweep.assets.files import write_atomic

COLUMNS: dict[str, str] = {
    "model": "string",
    "attack": "string",
    "implementation": "string",
    "iterate": "string",
    "norm": "string",
    "eps": "float64",
    "example": "int64",
    "label": "int16",
    "prediction": "int16",
    "correct": "bool",
    "loss": "float32",
    "margin": "float32",
    "linf": "float32",
    "l2": "float32",
    "l1": "float32",
    "found_by": "string",
    "loss_rise": "float32",
}
ADDED = {"loss_rise": np.nan, "l1": np.nan}  # columns added since records were first written: their value in older records
CLEAN = "clean"


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example softmax cross-entropy ``(…, N)`` of logits ``(…, N, C)``, in float64 and stable."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    true = np.take_along_axis(shifted, np.broadcast_to(labels[..., None], shifted.shape[:-1] + (1,)), axis=-1)[..., 0]
    return log_norm - true


def logit_margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True-class logit minus the largest other logit ``(…, N)``."""
    index = np.broadcast_to(labels[..., None], logits.shape[:-1] + (1,))
    true = np.take_along_axis(logits, index, axis=-1)[..., 0]
    others = logits.astype(np.float64).copy()
    np.put_along_axis(others, index, -np.inf, axis=-1)
    return true - others.max(axis=-1)


def attack_records(*, model: str, attack: str, implementation: str, iterate: str, norm: str, epsilons: Iterable[float],
                   examples: np.ndarray, labels: np.ndarray, x: np.ndarray, x_adv: np.ndarray,
                   logits: np.ndarray, found_by: np.ndarray | None = None,
                   loss_rise: np.ndarray | None = None) -> pd.DataFrame:
    """Records of one attack on a chunk: ``x (N, H, W, C)``, ``x_adv (K, N, H, W, C)``, ``logits (K, N, classes)``,
    an ensemble's ``found_by (K, N)`` and the attack's ``loss_rise (K, N)``."""
    eps = np.asarray(list(epsilons), dtype=np.float64)
    k, n = len(eps), len(examples)
    delta = (x_adv.astype(np.float64) - x[None].astype(np.float64)).reshape(k, n, -1)
    labels_kn = np.broadcast_to(labels, (k, n))
    prediction = logits.argmax(axis=-1)
    frame = pd.DataFrame({
        "model": model,
        "attack": attack,
        "implementation": implementation,
        "iterate": iterate,
        "norm": norm,
        "eps": np.repeat(eps, n),
        "example": np.tile(examples, k),
        "label": labels_kn.reshape(-1),
        "prediction": prediction.reshape(-1),
        "correct": (prediction == labels_kn).reshape(-1),
        "loss": cross_entropy(logits, labels_kn).reshape(-1),
        "margin": logit_margin(logits, labels_kn).reshape(-1),
        "linf": np.abs(delta).max(axis=-1, initial=0.0).reshape(-1),
        "l2": np.sqrt((delta ** 2).sum(axis=-1)).reshape(-1),
        "l1": np.abs(delta).sum(axis=-1).reshape(-1),
        "found_by": "-" if found_by is None else np.where(found_by == "", "-", found_by).reshape(-1),
        "loss_rise": np.nan if loss_rise is None else np.where(prediction == labels_kn, loss_rise, np.nan).reshape(-1),
    })  # fmt: skip
    return typed(frame)


def clean_records(*, model: str, examples: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> pd.DataFrame:
    """Records of the clean pass (once per model): attack ``"clean"``, ε = 0, no perturbation."""
    zeros = np.zeros(len(examples))
    prediction = logits.argmax(axis=-1)
    return typed(pd.DataFrame({
        "model": model, "attack": CLEAN, "implementation": "-", "iterate": "-", "norm": "-", "eps": zeros, "example": examples,
        "label": labels, "prediction": prediction, "correct": prediction == labels,
        "loss": cross_entropy(logits, labels), "margin": logit_margin(logits, labels), "linf": zeros, "l2": zeros,
        "l1": zeros, "found_by": "-",
        "loss_rise": np.nan,
    }))  # fmt: skip


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with exactly the record columns, in order and with their types."""
    missing = sorted(set(COLUMNS) - set(frame.columns))
    if missing:
        raise ValueError(f"records lack column(s) {missing}")
    return frame[list(COLUMNS)].astype(COLUMNS).reset_index(drop=True)


def write_records(frame: pd.DataFrame, path: Path) -> Path:
    """Write records as Parquet, atomically."""
    frame = typed(frame)
    return write_atomic(path, lambda temporary: frame.to_parquet(temporary, index=False))


def read_records(paths: Iterable[Path]) -> pd.DataFrame:
    """Concatenate record files into one typed frame."""
    frames = [pd.read_parquet(path) for path in paths]
    frames = [frame.assign(**{c: v for c, v in ADDED.items() if c not in frame.columns}) for frame in frames]
    if not frames:
        return typed(pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in COLUMNS.items()}))
    return typed(pd.concat(frames, ignore_index=True))
