"""The training label table of a heads file: the joint prior of the conditions.

Conditions a user does not give (``sample --condition ids=1`` with attributes attached too) are
drawn from the *data's joint distribution given the ones given*: a random training row whose
targets match every given supervised target supplies the others. The table holds the targets of
every supervised kind, one row per training image, stored compactly in the heads file (integer
targets as the smallest integer type that holds them: 162k rows x 41 binary labels is 6.6 MB).
Unsupervised kinds (codes) have no labels and still sample their own prior.

When no training row matches the given conditions (an unseen combination, a continuous value
never seen exactly), those rows fall back to the independent priors; :meth:`LabelTable.sample`
reports how many so that the caller can say so.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

from flowcond.errors import FileFormatError

#: prefix of the table's tensors in a heads file
PREFIX = "label_table."
#: the two priors of un-given conditions
PRIORS = ("joint", "independent")


_noted: set[str] = set()


def note(message: str) -> None:
    """Say ``message`` on stderr, once per process."""
    if message not in _noted:
        _noted.add(message)
        print(message, file=sys.stderr)


def table_specs(specs: Mapping[str, Any]) -> dict[str, Any]:
    """The label-table tensors of a heads file's layout (checked when the table is read)."""
    return {k: v for k, v in specs.items() if k.startswith(PREFIX)}


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the smallest dtype that holds it exactly (uint8 / int16 / int32 for integers)."""
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    if t.is_floating_point() and not (torch.isfinite(t).all() and torch.equal(t, t.round())):
        return t.float()
    if t.numel() == 0:
        return t.to(torch.uint8)
    lo, hi = int(t.min()), int(t.max())
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return t.to(dtype)
    return t.to(torch.int64)


class LabelTable:
    """Targets of the supervised kinds, ``{name: (rows, *target_shape)}``, with matching draws."""

    def __init__(self, targets: Mapping[str, torch.Tensor]) -> None:
        self.targets = dict(targets)
        sizes = {len(t) for t in self.targets.values()}
        if len(sizes) > 1:
            raise ValueError(f"label table columns have different lengths: {sorted(sizes)}")
        self.rows = sizes.pop() if sizes else 0

    @classmethod
    def from_labels(cls, kinds: Mapping[str, Any], labels: Mapping[str, torch.Tensor]) -> LabelTable:
        """The supervised kinds' targets of a dataset's ``labels`` (all rows)."""
        return cls({n: _compact(k.targets(labels)) for n, k in kinds.items() if k.supervised})

    # ----------------------------------------------------------------- files
    def tensors(self) -> dict[str, torch.Tensor]:
        """The table as heads-file tensors (``label_table.NAME``)."""
        return {PREFIX + n: t.contiguous() for n, t in self.targets.items()}

    @classmethod
    def pop_from(
        cls, tensors: dict[str, torch.Tensor], path: Any, kinds: Mapping[str, Any]
    ) -> LabelTable | None:
        """Remove the table's tensors from a heads file's ``tensors``; None if it has none.
        A table naming an unattached or unsupervised kind is a FileFormatError."""
        names = [k for k in tensors if k.startswith(PREFIX)]
        if not names:
            return None
        table = {k[len(PREFIX) :]: tensors.pop(k) for k in names}
        for name, t in table.items():
            kind = kinds.get(name)
            if kind is None or not kind.supervised:
                raise FileFormatError(
                    path, f"label table column {name!r} is not a supervised attached plugin"
                )
            if tuple(t.shape[1:]) != tuple(kind.target_shape):
                raise FileFormatError(
                    path,
                    f"label table column {name!r} has rows of shape {tuple(t.shape[1:])}, "
                    f"expected {tuple(kind.target_shape)}",
                )
        try:
            return cls(table)
        except ValueError as e:
            raise FileFormatError(path, str(e)) from None

    # -------------------------------------------------------------- sampling
    def sample(
        self,
        given: Mapping[str, torch.Tensor],
        n: int,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Targets of the table's kinds not in ``given`` for ``n`` rows, each from a random
        training row matching that row's ``given`` targets of the table's kinds (``(n, ...)``).

        Returns the drawn columns and a boolean mask ``(n,)`` of the rows no training row matched
        (their drawn values are meaningless: the caller falls back to the independent priors).
        """
        keys = [k for k in self.targets if k in given]
        wanted = [k for k in self.targets if k not in given]
        out = {k: torch.empty((n, *self.targets[k].shape[1:]), dtype=self.targets[k].dtype) for k in wanted}
        unmatched = torch.zeros(n, dtype=torch.bool)
        if not wanted or n == 0:
            return out, unmatched
        if self.rows == 0:
            return out, ~unmatched
        # one key per row: the given targets of the table's kinds, flattened
        table_key = (
            torch.cat([self.targets[k].reshape(self.rows, -1).double() for k in keys], 1) if keys else None
        )
        row_key = torch.cat([given[k].reshape(n, -1).double() for k in keys], 1) if keys else None
        if row_key is None:
            combos, inverse = torch.zeros(1, 0, dtype=torch.float64), torch.zeros(n, dtype=torch.long)
        else:
            combos, inverse = torch.unique(row_key, dim=0, return_inverse=True)
        for c in range(len(combos)):
            rows = (inverse == c).nonzero().flatten()
            if table_key is None:
                match = torch.arange(self.rows)
            else:
                match = (table_key == combos[c]).all(1).nonzero().flatten()
            if len(match) == 0:
                unmatched[rows] = True
                continue
            pick = match[torch.randint(len(match), (len(rows),), generator=generator)]
            for k in wanted:
                out[k][rows] = self.targets[k][pick]
        return out, unmatched


def joint_targets(
    kinds: Mapping[str, Any],
    table: LabelTable | None,
    out: dict[str, torch.Tensor],
    n: int,
    generator: torch.Generator | None,
) -> None:
    """Fill ``out`` (the given targets, ``n`` rows each) with the un-given supervised targets
    drawn from ``table``; rows no training row matches get the kinds' own priors, said on stderr."""
    from flowcond import contract

    if not any(kind.supervised and k not in out for k, kind in kinds.items()):
        return
    if table is None:
        note(
            "note: this heads file has no training label table (attached by an older flowcond): "
            "un-given conditions are drawn independently"
        )
        return
    drawn, unmatched = table.sample(out, n, generator)
    for name, t in drawn.items():
        kind = kinds[name]
        t = t.to(kind.target_dtype)
        if unmatched.any():
            t[unmatched] = contract.check_prior(kind, kind.sample_prior(n, generator), n)[unmatched]
        out[name] = t
    if unmatched.any():
        note(
            f"note: {int(unmatched.sum())} of {n} sample(s) ask for conditions no training image "
            f"has; their {', '.join(drawn)} drawn independently"
        )
