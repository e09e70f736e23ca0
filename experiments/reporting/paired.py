"""Paired verdicts: is one model (or run) really more robust than another on the same examples?

Two robust accuracies measured on the same test examples are not independent samples: most examples are robust under
both models or under neither, and only the *discordant* examples, robust under one of the two alone, carry
information about the difference. Two Wilson intervals may overlap while the difference is certain (many shared
examples, a few discordant ones all going one way), so unpaired intervals cannot decide it. This module compares every
two (run, model) pairs that share examples, cell by cell of the summary (attack, implementation, iterate, norm, ε; the
worst case over attacks included), on the examples they share:

* the difference in robust accuracy, first minus second, with its 95% interval for paired proportions: Newcombe's
  square-and-add interval from the two Wilson intervals and the correlation of the pairs (Newcombe 1998, method 10;
  as in Fagerland, Lydersen & Laake, *Statistical Analysis of Contingency Tables*, 2017, ch. 8);
* the exact McNemar test: the two-sided binomial test of the discordant counts at ½ (McNemar 1947), and its
  Holm-adjusted p-value over every comparison of the report (Holm 1979), so that the verdict "holds at 95%" keeps the
  chance of any false verdict in the report at 5%, however many cells are compared.

And the sample-size helper: how many examples a Wilson interval of a given half-width needs at an accuracy.
"""

from __future__ import annotations

import itertools
import math

import pandas as pd

from advsweep.attacks.engine.spec import NORM_LABELS
from advsweep.experiments.reporting.summary import GROUP, Z_95, WORST_CASE, wilson_interval

LEVEL = 0.05  # the verdicts' family-wise error
COLUMNS = ["run_a", "model_a", "run_b", "model_b", *GROUP[2:], "examples", "robust_accuracy_a", "robust_accuracy_b",
           "difference", "ci_low", "ci_high", "only_a", "only_b", "p_value", "p_holm", "holds"]


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """The exact McNemar p-value (two-sided): the chance, were both equally robust, that the discordant examples
    split at least as unevenly as ``only_a`` against ``only_b``: ``min(1, 2 · P(X ≤ min(only_a, only_b)))`` for
    ``X ~ Binomial(only_a + only_b, ½)``; 1 with no discordant example."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)  # integers throughout: exact, then one correctly rounded division


def paired_interval(both: int, only_a: int, only_b: int, neither: int, z: float = Z_95) -> tuple[float, float]:
    """Newcombe's square-and-add interval (1998, method 10) for ``p_a − p_b`` from a paired 2 × 2 table: examples
    robust under both, under the first only, under the second only, under neither. ``(nan, nan)`` for no example.

    The Wilson intervals ``(l, u)`` of the two proportions are combined with the correlation φ of the pairs
    (continuity-corrected as Newcombe's method 10: a positive ``both·neither − only_a·only_b`` is reduced by n/2, to
    no less than 0)::

        L = d − √((p_a − l_a)² − 2φ(p_a − l_a)(u_b − p_b) + (u_b − p_b)²)
        U = d + √((u_a − p_a)² − 2φ(u_a − p_a)(p_b − l_b) + (p_b − l_b)²)
    """
    n = both + only_a + only_b + neither
    if n == 0:
        return math.nan, math.nan
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    l_a, u_a = wilson_interval(both + only_a, n, z)
    l_b, u_b = wilson_interval(both + only_b, n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    product = both * neither - only_a * only_b
    cross = product - n / 2 if product > n / 2 else float(min(product, 0))
    phi = cross / math.sqrt(margins) if margins else 0.0
    d = p_a - p_b
    low = d - math.sqrt(max(0.0, (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2))
    high = d + math.sqrt(max(0.0, (u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2))
    return max(-1.0, low), min(1.0, high)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (1979): the adjusted p-values, in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Every pair of (run, model) with examples in common, in every cell of the summary both have: the paired
    comparison on their common examples (columns :data:`COLUMNS`; ``holds``: the Holm-adjusted p-value is below
    5%). Empty when no two (run, model) share a cell. ``cells``: every example's outcome per summary cell
    (:func:`advsweep.experiments.reporting.summary.outcomes`, the same table the summary counts)."""
    rows = []
    for key, group in cells.groupby(GROUP[2:], sort=False):
        units = {unit: frame.set_index("example")["correct"].astype(bool)
                 for unit, frame in group.groupby(["run", "model"], sort=False)}
        for (unit_a, a), (unit_b, b) in itertools.combinations(units.items(), 2):
            common = a.index.intersection(b.index)
            if common.empty:
                continue
            a, b = a.loc[common], b.loc[common]
            both, only_a, only_b = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
            neither = len(common) - both - only_a - only_b
            low, high = paired_interval(both, only_a, only_b, neither)
            rows.append({"run_a": unit_a[0], "model_a": unit_a[1], "run_b": unit_b[0], "model_b": unit_b[1],
                         **dict(zip(GROUP[2:], key)), "examples": len(common),
                         "robust_accuracy_a": (both + only_a) / len(common),
                         "robust_accuracy_b": (both + only_b) / len(common),
                         "difference": (only_a - only_b) / len(common), "ci_low": low, "ci_high": high,
                         "only_a": only_a, "only_b": only_b, "p_value": mcnemar_exact(only_a, only_b)})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "holds")])
    table["p_holm"] = holm(table["p_value"].tolist())
    table["holds"] = table["p_holm"] < LEVEL
    return table[COLUMNS]


def _who(row: pd.Series, side: str) -> str:
    return f"{row[f'model_{side}']} ({row[f'run_{side}']})" if row["run_a"] != row["run_b"] else row[f"model_{side}"]


def verdicts(table: pd.DataFrame) -> list[str]:
    """One sentence per comparison whose difference holds at 95% (Holm), the more robust first."""
    lines = []
    for _, row in table[table["holds"]].iterrows():
        first, second = (("a", "b") if row["difference"] > 0 else ("b", "a"))
        sign = 1 if first == "a" else -1
        low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
        what = "the worst case over attacks" if row["attack"] == WORST_CASE else \
            f"{row['attack']} ({row['implementation']}, {row['iterate']}-iterate)"
        lines.append(f"{_who(row, first)} is more robust than {_who(row, second)} under {what} at "
                     f"{NORM_LABELS[row['norm']]} ε = {row['eps']:g}: "
                     f"+{100 * sign * row['difference']:.1f} points [{100 * low:.1f}, {100 * high:.1f}] on "
                     f"{row['examples']} examples ({row[f'only_{first}']} against {row[f'only_{second}']} "
                     f"discordant; McNemar p = {row['p_value']:.2g}, Holm {row['p_holm']:.2g})")
    return lines


def markdown(table: pd.DataFrame) -> str:
    """The verdicts, then the table of every comparison (differences and intervals in points)."""
    held = verdicts(table)
    out = [f"**Paired comparisons** on the examples each pair shares: difference in robust accuracy (first − "
           f"second, points) with its 95% interval for paired proportions (Newcombe), the exact McNemar p-value and "
           f"its Holm adjustment over all {len(table)} comparisons.", ""]
    out += [f"- {line}" for line in held] if held else ["No difference holds at 95% (Holm)."]
    out += ["", "| first | second | attack | implementation | iterate | norm | ε | n | first % | second % | "
            "difference [95% CI] | discordant | p | p (Holm) |", "|" + "---|" * 14]
    for _, r in table.iterrows():
        out.append(f"| {_who(r, 'a')} | {_who(r, 'b')} | {r['attack']} | {r['implementation']} | {r['iterate']} | "
                   f"{r['norm']} | {r['eps']:g} | {r['examples']} | {100 * r['robust_accuracy_a']:.1f} | "
                   f"{100 * r['robust_accuracy_b']:.1f} | {100 * r['difference']:+.1f} [{100 * r['ci_low']:.1f}, "
                   f"{100 * r['ci_high']:.1f}] | {r['only_a']} / {r['only_b']} | {r['p_value']:.2g} | "
                   f"{r['p_holm']:.2g} |")
    return "\n".join(out) + "\n"


def examples_needed(accuracy: float, half_width: float, z: float = Z_95) -> int:
    """The fewest examples whose 95% Wilson interval at ``accuracy`` is at most ``half_width`` wide on each side
    (its larger side: the interval is not symmetric near 0 and 1)."""
    if not 0.0 <= accuracy <= 1.0 or not 0.0 < half_width < 0.5:
        raise ValueError("accuracy must lie in [0, 1] and the half-width in (0, 0.5)")

    def wide(n: int) -> bool:  # Wilson's interval at the proportion itself (not rounded to a count of n)
        centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(centre + half - accuracy, accuracy - (centre - half)) > half_width

    high = 1
    while wide(high):
        high *= 2
    low = high // 2
    while high - low > 1:  # the half-width falls as n grows: bisect for the first n that fits
        middle = (low + high) // 2
        low, high = (middle, high) if wide(middle) else (low, middle)
    return high
