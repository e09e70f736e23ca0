"""The row scheduler the iterative attacks share: every example runs its own programme in a fixed row of
fixed-shape model calls.

An attack's state lives in ``(block, …)`` arrays, one row per example being attacked, ``block`` being
:func:`advsweep.attacks.core.row_block` of the model (32, or 1 for a heavy model on a CPU). Example ``i`` always
sits in row ``example_ids[i] mod block``, and every model call has ``block`` rows, so the floats an example sees
do not depend on which other examples share its chunk, its batch or its call. When an example's programme ends
(fooled, or every run done), the next example waiting for that row takes it over in the same round, so calls stay
full while there is work.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np


def run_rows(example_ids: np.ndarray, begin: Callable[[int, int], bool], evaluate: Callable[[], Any],
             advance: Callable[[int, int, Any], bool], block: int) -> int:
    """Drive the attack's programmes to their end; returns the model evaluations spent on examples (busy rows
    over all calls; the idle rows of a call are not counted).

    Args:
        example_ids: ``(N,)`` test-set indices; example ``i`` runs in row ``example_ids[i] % block``.
        begin: ``begin(row, example)`` sets the row up for the example's programme; ``False`` when the
            example has nothing to do (the row then takes the next waiting example).
        evaluate: one model call on the rows' current points; its value is handed to ``advance``.
        advance: ``advance(row, example, outputs)`` moves the example's programme on by one call; ``False``
            when the programme has ended.
        block: rows per model call.
    """
    slots = np.asarray(example_ids) % block
    queues = [deque(np.flatnonzero(slots == s).tolist()) for s in range(block)]
    active = np.full(block, -1, dtype=np.int64)

    def fill(row: int) -> None:
        active[row] = -1
        while queues[row]:
            example = int(queues[row].popleft())
            if begin(row, example):
                active[row] = example
                return

    for row in range(block):
        fill(row)
    spent = 0
    while (active >= 0).any():
        outputs = evaluate()
        busy = np.flatnonzero(active >= 0).tolist()
        spent += len(busy)
        for row in busy:
            if not advance(row, int(active[row]), outputs):
                fill(row)
    return spent


def fooled_from(found: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``(N,)``: per example, the position in the ascending ε ``order`` of the smallest budget at which
    ``found`` ``(K, N)`` has it fooled (so it is fooled from there on: an adversarial found at ε lies inside
    every larger ball); ``K`` where it is fooled nowhere. An attack of a cascade attacks the positions below."""
    fooled = np.logical_or.accumulate(found[order], axis=0)  # (K, N) in ascending ε
    return np.where(fooled.any(axis=0), np.argmax(fooled, axis=0), len(order)).astype(np.int64)
