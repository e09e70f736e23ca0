"""Publication-style figures: column width, colour-blind-safe palette, PNG and vector PDF."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
COLUMN_WIDTH_INCHES = 3.35  # one column of a two-column paper (IEEE / NeurIPS-like)

STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
    "pdf.fonttype": 42,  # embed TrueType, so the PDF's text stays text
    "ps.fonttype": 42,
    "savefig.bbox": "tight",
    "savefig.dpi": 300,
}


def save_figure(figure: plt.Figure, stem: Path) -> list[Path]:
    """Save ``stem.png`` and ``stem.pdf`` atomically (temporary file, then rename), and close the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        final = stem.with_suffix(suffix)
        handle = tempfile.NamedTemporaryFile(dir=final.parent, prefix=f".{final.name}.", suffix=suffix, delete=False)
        handle.close()
        try:
            figure.savefig(handle.name, format=suffix[1:])
            os.replace(handle.name, final)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
        written.append(final)
    plt.close(figure)
    return written


def plot_training_curves(history: pd.DataFrame, stem: Path, *, title: str = "") -> list[Path]:
    """Loss and accuracy per epoch, training and validation, side by side."""
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH_INCHES, 2.2))
        for axis, metric, label in ((loss_axis, "loss", "cross-entropy loss"), (accuracy_axis, "accuracy", "accuracy")):
            axis.plot(history["epoch"], history[metric], color=OKABE_ITO[0], marker="o", ms=2.5, label="train")
            axis.plot(history["epoch"], history[f"val_{metric}"], color=OKABE_ITO[1], marker="s", ms=2.5,
                      label="validation")
            axis.set_xlabel("epoch")
            axis.set_ylabel(label)
            axis.legend(frameon=False)
        if title:
            figure.suptitle(title, fontsize=8)
        figure.tight_layout()
        return save_figure(figure, stem)
