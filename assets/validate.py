"""The one set of value checks every layer uses, so that every refusal reads the same way.

Each check returns the value in its canonical type or raises :class:`Invalid`, a ``ValueError`` whose
message names the argument, what is allowed and what was received::

    `steps` must be an integer ≥ 1. Received: steps=0

A sweep config renders the same refusal under its key (``config key `attacks[0].steps`: must be an integer
≥ 1. Received: 0``) from the exception's parts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np


class Invalid(ValueError):
    """A value outside what an argument allows: ``name``, ``requirement`` ("an integer ≥ 1") and ``value``."""

    def __init__(self, name: str, requirement: str, value: Any, *, hint: str = ""):
        self.name, self.requirement, self.value, self.hint = name, requirement, value, hint
        super().__init__(f"`{name}` must be {requirement}{f' ({hint})' if hint else ''}. Received: {name}={value!r}")

    def under(self, key: str) -> str:
        """The same refusal for a config key: ``config key `key`: must be …. Received: …``."""
        return f"config key `{key}`: must be {self.requirement}{f' ({self.hint})' if self.hint else ''}. " \
               f"Received: {self.value!r}"


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def one_of(name: str, value: Any, allowed: Sequence[str], *, hint: str = "") -> str:
    """``value`` is one of the strings ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise Invalid(name, "one of " + ", ".join(map(repr, allowed)), value, hint=hint)
    return value


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool, not a float) within ``[minimum, maximum]``."""
    if not _is_integer(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            requirement = f"an integer from {minimum} to {maximum}"
        elif minimum is not None:
            requirement = f"an integer ≥ {minimum}"
        else:
            requirement = "an integer" if maximum is None else f"an integer ≤ {maximum}"
        raise Invalid(name, requirement, value)
    return int(value)


def number(name: str, value: Any, *, above: float | None = None, minimum: float | None = None,
           below: float | None = None, maximum: float | None = None) -> float:
    """A finite real number; ``above``/``below`` are exclusive bounds, ``minimum``/``maximum`` inclusive ones."""
    ok = _is_real(value) and math.isfinite(float(value))
    if ok:
        x = float(value)
        ok = ((above is None or x > above) and (minimum is None or x >= minimum)
              and (below is None or x < below) and (maximum is None or x <= maximum))
    if not ok:
        if above == 0 and minimum is None and below is None and maximum is None:
            requirement = "a positive finite number"
        else:
            low = f"({above:g}" if above is not None else f"[{minimum:g}" if minimum is not None else "(-inf"
            high = f"{below:g})" if below is not None else f"{maximum:g}]" if maximum is not None else "inf)"
            requirement = f"a number in {low}, {high}"
        raise Invalid(name, requirement, value)
    return float(value)


def flag(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, (bool, np.bool_)):
        raise Invalid(name, "true or false", value)
    return bool(value)
