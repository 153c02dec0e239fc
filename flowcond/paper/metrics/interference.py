"""Table 3: interference of (cumulative) attribute edits on the attributes left alone.

Editing one attribute should leave the others unchanged. Interference is the mean absolute change
of the AMP of the *untouched* attributes between two states: ``mean_a |AMP_after[a] -
AMP_before[a]|`` over attributes ``a`` not edited. AMPs are vectors (A,) (e.g. the evaluator's
mean probabilities over a batch) or per-identity arrays (K, A) (then averaged over identities
too). Lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from flowcond.paper.metrics._util import to_numpy


def _indices(edited: int | Sequence[int], n: int) -> set[int]:
    idx = {int(edited)} if np.isscalar(edited) else {int(i) for i in edited}
    bad = [i for i in idx if not -n <= i < n]
    if bad:
        raise ValueError(f"edited attribute index {bad[0]} out of range for {n} attributes")
    return {i % n for i in idx}


def interference(amp_before: Any, amp_after: Any, edited_index: int | Sequence[int]) -> float:
    """Mean |AMP change| over the attributes not in ``edited_index`` (one index or several)."""
    before, after = to_numpy(amp_before, np.float64), to_numpy(amp_after, np.float64)
    if before.shape != after.shape or before.ndim not in (1, 2):
        raise ValueError(
            f"expected two AMP arrays of the same shape (A,) or (K, A), got {before.shape} and {after.shape}"
        )
    n = before.shape[-1]
    untouched = [a for a in range(n) if a not in _indices(edited_index, n)]
    if not untouched:
        return float("nan")
    return float(np.abs(after[..., untouched] - before[..., untouched]).mean())


def cumulative_interference(
    amps: Sequence[Any], edits: Sequence[int], relative_to: Literal["start", "previous"] = "start"
) -> list[float]:
    """Interference after each of a sequence of cumulative edits (Table 3: after 1, 2, 3, 4 edits).

    ``amps[0]`` is the AMP before any edit and ``amps[t]`` after edits ``edits[0..t-1]`` are all
    applied; so ``len(amps) == len(edits) + 1``. Step ``t`` compares ``amps[t]`` with ``amps[0]``
    (``relative_to="start"``, the default) or with ``amps[t-1]`` (``"previous"``), over the
    attributes not edited in steps ``1..t``. NaN once every attribute has been edited.
    """
    if len(amps) != len(edits) + 1:
        raise ValueError(
            f"need one AMP per state: {len(edits)} edits give {len(edits) + 1} states, got {len(amps)} AMPs"
        )
    if relative_to not in ("start", "previous"):
        raise ValueError(f"relative_to must be 'start' or 'previous', got {relative_to!r}")
    out = []
    for t in range(1, len(amps)):
        ref = amps[0] if relative_to == "start" else amps[t - 1]
        out.append(interference(ref, amps[t], list(edits[:t])))
    return out
