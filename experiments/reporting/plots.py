"""Publication-style figures: column width, colour-blind-safe palette, PNG and vector PDF."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from advsweep.assets.files import write_atomic  # noqa: E402
from advsweep.attacks.engine.spec import NORM_LABELS  # noqa: E402

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
        written.append(write_atomic(stem.with_suffix(suffix),
                                    lambda temporary, kind=suffix[1:]: figure.savefig(temporary, format=kind)))
    plt.close(figure)
    return written


def plot_training_curves(history: pd.DataFrame, stem: Path, *, title: str = "") -> list[Path]:
    """Loss and accuracy per epoch side by side: training and validation for natural training; for adversarial
    training (a ``val_robust_accuracy`` column) the loss on the training adversarials, and the accuracy on them, on
    held-out clean images and under held-out PGD. A ``kept`` column marks the epoch whose weights were saved (dotted
    line); a ``collapsed`` column marks catastrophic overfitting (a red cross on the held-out PGD curve)."""
    adversarial = "val_robust_accuracy" in history
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH_INCHES, 2.2))
        epochs = history["epoch"]
        if adversarial:
            loss_axis.plot(epochs, history["loss"], color=OKABE_ITO[0], marker="o", ms=2.5, label="training adversarials")
            loss_axis.set_ylabel("training loss")
            series = (("accuracy", "training adversarials", 0, "o"), ("val_accuracy", "held-out clean", 1, "s"),
                      ("val_robust_accuracy", "held-out PGD", 2, "^"))
            for column, label, colour, marker in series:
                accuracy_axis.plot(epochs, history[column], color=OKABE_ITO[colour], marker=marker, ms=2.5, label=label)
            if "collapsed" in history and history["collapsed"].any():
                at = history["collapsed"] > 0
                accuracy_axis.plot(epochs[at], history["val_robust_accuracy"][at], "x", color="#CC0000", ms=7,
                                   mew=1.5, label="collapse")
        else:
            for column, label, colour, marker in (("loss", "train", 0, "o"), ("val_loss", "validation", 1, "s")):
                loss_axis.plot(epochs, history[column], color=OKABE_ITO[colour], marker=marker, ms=2.5, label=label)
            loss_axis.set_ylabel("cross-entropy loss")
            for column, label, colour, marker in (("accuracy", "train", 0, "o"), ("val_accuracy", "validation", 1, "s")):
                accuracy_axis.plot(epochs, history[column], color=OKABE_ITO[colour], marker=marker, ms=2.5,
                                   label=label)
        accuracy_axis.set_ylabel("accuracy")
        if "kept" in history and history["kept"].any():
            kept = float(epochs[history["kept"] > 0].iloc[0])
            for axis in (loss_axis, accuracy_axis):
                axis.axvline(kept, color="0.4", linestyle=":", linewidth=1.0, label="kept" if axis is accuracy_axis
                             else None)
        for axis in (loss_axis, accuracy_axis):
            axis.set_xlabel("epoch")
            axis.legend(frameon=False)
        if title:
            figure.suptitle(title, fontsize=8)
        figure.tight_layout()
        return save_figure(figure, stem)


def training_curves(history: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """:func:`plot_training_curves` as the model layer's ``draw_curves`` hook of ``train_model``."""
    return plot_training_curves(history, stem, title=title)


def _series_styles(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Colour per (run, attack), line style per implementation; the worst case is black and thick."""
    colours: dict[tuple[str, str], str] = {}
    styles: dict[tuple[Any, ...], dict[str, Any]] = {}
    dashes = {"own": "-", "foolbox": "--", "all": "-"}
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    for run, attack, implementation in keys:
        if attack == "worst case":
            styles[(run, attack, implementation)] = {"color": "#000000", "linestyle": "-", "marker": "x",
                                                     "linewidth": 2.0}
            continue
        colour_key = (run, attack)
        if colour_key not in colours:
            colours[colour_key] = OKABE_ITO[len(colours) % (len(OKABE_ITO) - 1)]
        styles[(run, attack, implementation)] = {"color": colours[colour_key],
                                                 "linestyle": dashes.get(implementation, ":"),
                                                 "marker": markers[list(colours).index(colour_key) % len(markers)]}
    return styles


def plot_accuracy_vs_eps(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """Robust accuracy against ε with 95% bands: one panel per model (rows) and norm (columns), one line per
    attack and implementation (solid own, dashed foolbox, dotted a last-iterate view), the worst case over
    attacks in black."""
    # a last-iterate row is its own series (dotted): "foolbox, last iterate"
    summary = summary.assign(implementation=[f"{i}, last iterate" if t == "last" else i
                                             for i, t in zip(summary["implementation"], summary["iterate"])])
    models = list(dict.fromkeys(summary["model"]))
    norms = list(dict.fromkeys(summary["norm"]))
    multi_run = summary["run"].nunique() > 1
    keys = list(dict.fromkeys(zip(summary["run"], summary["attack"], summary["implementation"])))
    styles = _series_styles(keys)
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, axes = plt.subplots(len(models), len(norms), squeeze=False, sharey=True,
                                    figsize=(COLUMN_WIDTH_INCHES * max(1, len(norms)), 2.3 * len(models)))
        for row, model in enumerate(models):
            for column, norm in enumerate(norms):
                axis = axes[row][column]
                panel = summary[(summary["model"] == model) & (summary["norm"] == norm)]
                for key in keys:
                    run, attack, implementation = key
                    line = panel[(panel["run"] == run) & (panel["attack"] == attack)
                                 & (panel["implementation"] == implementation)].sort_values("eps")
                    if line.empty:
                        continue
                    style = styles[key]
                    label = f"{attack} ({implementation})" if attack != "worst case" else "worst case"
                    if multi_run:
                        label += f" · {run}"
                    axis.plot(line["eps"], line["robust_accuracy"], label=label, markersize=3, **style)
                    axis.fill_between(line["eps"], line["ci_low"], line["ci_high"], color=style["color"],
                                      alpha=0.12, linewidth=0)
                axis.set_ylim(-0.02, 1.02)
                axis.set_xlabel(f"ε ({NORM_LABELS[norm]}, pixel scale [0, 1])")
                if column == 0:
                    axis.set_ylabel("robust accuracy")
                axis.set_title(f"{model}, {NORM_LABELS[norm]}")
                if panel.empty:
                    axis.set_visible(False)
        handles, labels = [], []
        for axis in figure.axes:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        figure.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), frameon=False,
                      bbox_to_anchor=(0.5, -0.02 - 0.045 * math.ceil(len(labels) / 3) / max(1, len(models))))
        figure.tight_layout()
        return save_figure(figure, stem)


def plot_robustness_curve(curve: pd.DataFrame, stem: Path) -> list[Path]:
    """Accuracy under the minimal-perturbation adversary (fraction of examples whose smallest adversarial
    ε exceeds t) against t: one panel per norm, one line per model (and run)."""
    norms = list(dict.fromkeys(curve["norm"]))
    multi_run = curve["run"].nunique() > 1
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, axes = plt.subplots(1, len(norms), squeeze=False, figsize=(COLUMN_WIDTH_INCHES * len(norms), 2.3))
        for column, norm in enumerate(norms):
            axis = axes[0][column]
            panel = curve[curve["norm"] == norm]
            for index, ((run, model), line) in enumerate(panel.groupby(["run", "model"], sort=False)):
                line = line.sort_values("eps")
                label = f"{model} · {run}" if multi_run else model
                axis.step(line["eps"], line["robust_accuracy"], where="post", color=OKABE_ITO[index % 7],
                          label=f"{label} (n = {int(line['examples'].iloc[0])})")
            axis.set_ylim(-0.02, 1.02)
            axis.set_xlabel(f"ε ({NORM_LABELS[norm]}, pixel scale [0, 1])")
            axis.set_ylabel("accuracy at minimal ε")
            axis.set_title(f"robustness curve, {NORM_LABELS[norm]}")
            axis.legend(frameon=False)
        figure.tight_layout()
        return save_figure(figure, stem)


def plot_adversarial_grid(x: Any, x_adv: Any, labels: Any, predictions: Any, epsilons: Any, stem: Path, *,
                          title: str = "") -> list[Path]:
    """Rows: examples. Columns: the original, then for each ε the adversarial and its perturbation
    (diverging map, symmetric around 0). Titles give the true class and each prediction.

    Shapes: ``x (N, H, W, C)``, ``x_adv (K, N, H, W, C)``, ``labels (N,)``, ``predictions (K, N)``. Grey images
    (C = 1) are drawn in grey with the perturbation on a diverging map; colour images (C = 3) in colour, with the
    perturbation of each channel shown as colour around mid-grey (0.5 + δ / 2 max|δ|).
    """
    n, k = len(labels), len(epsilons)
    colour = np.shape(x)[-1] == 3

    def show(axis: Any, image: np.ndarray) -> None:
        if colour:
            axis.imshow(np.clip(image, 0.0, 1.0))
        else:
            axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)

    with plt.rc_context({**STYLE, "axes.grid": False}):  # type: ignore[arg-type,dict-item]
        figure, axes = plt.subplots(n, 1 + 2 * k, squeeze=False, figsize=(2 * COLUMN_WIDTH_INCHES,
                                                                          2 * COLUMN_WIDTH_INCHES * n / (1 + 2 * k) + 0.5))
        for i in range(n):
            show(axes[i][0], x[i])
            axes[i][0].set_title(f"clean: {int(labels[i])}", fontsize=6)
            for j, epsilon in enumerate(epsilons):
                delta = x_adv[j, i] - x[i]
                bound = max(float(np.abs(delta).max()), 1e-6)
                show(axes[i][1 + 2 * j], x_adv[j, i])
                fooled = int(predictions[j, i]) != int(labels[i])
                axes[i][1 + 2 * j].set_title(f"ε={epsilon:g}: {int(predictions[j, i])}", fontsize=6,
                                             color=OKABE_ITO[1] if fooled else "#000000")
                if colour:
                    axes[i][2 + 2 * j].imshow(np.clip(0.5 + delta / (2 * bound), 0.0, 1.0))
                else:
                    axes[i][2 + 2 * j].imshow(delta[..., 0], cmap="PuOr", vmin=-bound, vmax=bound)
                axes[i][2 + 2 * j].set_title(f"δ (±{bound:.2g})", fontsize=6)
        for axis in figure.axes:
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
        if title:
            figure.suptitle(title, fontsize=8)
        figure.tight_layout()
        return save_figure(figure, stem)


def _budget_series(budgets: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(kind, series label, rows) per model of the budget table, in order of training ε."""
    series = []
    multi_run = budgets["run"].nunique() > 1
    for (kind, _, _, run, model), rows in budgets.groupby(["kind", "train_eps", "training", "run", "model"],
                                                           sort=False):
        label = "natural" if rows["training"].iloc[0] == "natural" else rows["training"].iloc[0]
        if multi_run:
            label += f" ({run})"
        series.append((kind, label, rows.sort_values("test_eps")))
    return series


def plot_budget_lines(budgets: pd.DataFrame, stem: Path) -> list[Path]:
    """Robust accuracy (worst case over attacks) against test ε, one line per training budget, one panel per model
    kind: the figure robustness papers draw to compare training budgets. ``budgets`` is
    :func:`advsweep.experiments.reporting.summary.budget_table`'s (one norm)."""
    kinds = list(dict.fromkeys(budgets["kind"]))
    series = _budget_series(budgets)
    colours = plt.get_cmap("viridis")
    top = float(budgets["train_eps"].max()) or 1.0
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, axes = plt.subplots(1, len(kinds), squeeze=False, sharey=True,
                                    figsize=(COLUMN_WIDTH_INCHES * len(kinds), 2.4))
        for index, kind in enumerate(kinds):
            axis = axes[0][index]
            for series_kind, label, rows in series:
                if series_kind != kind:
                    continue
                colour = colours(0.85 * float(rows["train_eps"].iloc[0]) / top)
                axis.plot(rows["test_eps"], rows["robust_accuracy"], marker="o", ms=3, color=colour, label=label)
                axis.fill_between(rows["test_eps"], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15,
                                  linewidth=0)
            axis.set_title(kind)
            axis.set_xlabel(f"test ε ({budgets['norm'].iloc[0]})")
            axis.set_ylim(-0.02, 1.02)
            axis.legend(frameon=False, title="training", title_fontsize=7)
        axes[0][0].set_ylabel("robust accuracy (worst case)")
        figure.tight_layout()
        return save_figure(figure, stem)


def plot_budget_heatmap(budgets: pd.DataFrame, stem: Path) -> list[Path]:
    """Training budget × test ε, robust accuracy (worst case over attacks) in each cell, one panel per model kind."""
    kinds = list(dict.fromkeys(budgets["kind"]))
    series = _budget_series(budgets)
    test_eps = sorted(budgets["test_eps"].unique())
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        rows_per_kind = max(sum(1 for k, _, _ in series if k == kind) for kind in kinds)
        figure, axes = plt.subplots(1, len(kinds), squeeze=False,
                                    figsize=(COLUMN_WIDTH_INCHES * len(kinds), 0.9 + 0.32 * rows_per_kind))
        image = None
        for index, kind in enumerate(kinds):
            axis = axes[0][index]
            labels, grid = [], []
            for series_kind, label, rows in series:
                if series_kind != kind:
                    continue
                labels.append(label)
                by_eps = dict(zip(rows["test_eps"], rows["robust_accuracy"]))
                grid.append([by_eps.get(eps, np.nan) for eps in test_eps])
            values = np.array(grid, dtype=float)
            image = axis.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            for (i, j), value in np.ndenumerate(values):
                if np.isfinite(value):
                    axis.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=7,
                              color="white" if value < 0.6 else "black")
            axis.set_xticks(range(len(test_eps)), [f"{eps:g}" for eps in test_eps])
            axis.set_yticks(range(len(labels)), labels)
            axis.set_xlabel(f"test ε ({budgets['norm'].iloc[0]})")
            axis.set_title(kind)
            axis.grid(False)
        axes[0][0].set_ylabel("training")
        if image is not None:
            figure.colorbar(image, ax=axes[0].tolist(), label="robust accuracy (%)", fraction=0.05,
                            format=matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:.0f}"))
        return save_figure(figure, stem)
