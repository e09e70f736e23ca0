"""What the benchmark scripts share: the reduced AutoAttack budgets (the same on both sides of a comparison) and
the machine line every timing prints. A script imports it by name (``from presets import REDUCED``): Python puts a
script's own folder first on its path, and the tests' ``pythonpath`` setting does the same for them."""

from __future__ import annotations

import os
from typing import Any

# A smaller budget, the same on both sides: 3 target classes for APGD-T and FAB-T, 1000 queries for Square (the
# quick sweep's AutoAttack, and the VGG16's on a CPU)
REDUCED: dict[str, dict[str, Any]] = {"apgd-t": {"target_classes": 3}, "fab-t": {"target_classes": 3},
                                      "square": {"queries": 1000}}


def machine() -> str:
    """The CPU's model name, whether it has AVX-512, and the cores: the line each timing is reported with."""
    from advsweep.attacks.engine.plan import cpu_name

    name = cpu_name()
    avx512 = name.endswith("+avx512")
    return f"{name.removesuffix('+avx512')}, {'AVX-512' if avx512 else 'no AVX-512'}, {os.cpu_count()} cores"
