"""Built-in condition kind ``continuous``: regression on measured quantities (a continuous field).

Targets are one or several columns of a ``continuous`` dataset label field, in the field's units
(``--option continuous.field=morphometrics.thickness``, or ``morphometrics.thickness,slant``, or
``morphometrics`` for every column; default: the first continuous field, every column).

* **Encoder input**: the targets standardized with the training labels' mean and std (kept in the
  state), :class:`flowcond.caglow.inputs.Standardize`.
* **Head**: one output per column, MSE against the standardized targets (so the loss is on the
  scale of a cross-entropy whatever the units); ``predict`` maps back to the field's units.
* **Range checks**: ``parse`` and ``edit`` refuse a value outside the observed training range
  widened by ``margin`` times its width on each side (default 0.1), with a one-line error.
* **Prior**: each column drawn from its empirical quantiles (``quantiles`` levels, default 101),
  independently per column.
* **Values**: ``continuous=2.5`` (one column), ``continuous=2.5,0.1`` (every column, in order),
  ``continuous=thickness:2.5`` (by name; columns not named take the training median). Edits
  (``--add continuous=+0.5``, ``-0.3``, ``thickness:+0.5``) with a sign are relative to the current
  value, in the field's units; ``=V`` or an unsigned ``V`` sets it.
* **Sweeps**: ``value_range`` is, per column, the ``sweep`` and ``1 - sweep`` quantiles of the
  training labels (default 1 % and 99 %).

Non-finite labels (a measure of an empty image) are replaced by the column's mean in
``targets`` and left out of the statistics.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from flowcond import hookimpl
from flowcond.conditions import ConditionKind, label_columns
from flowcond.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: `flowcond --help` imports every plugin
    import torch
    from torch import nn


class ContinuousOptions(BaseModel):
    """Options of ``continuous``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    field: str | None = Field(
        None,
        description="continuous label field, optionally with columns: FIELD, FIELD.COLUMN or "
        "FIELD.COL1,COL2; default: the first continuous field, every column",
    )
    margin: float = Field(
        0.1, ge=0, le=10, description="accepted values: the observed range widened by this many widths"
    )
    quantiles: int = Field(101, ge=3, le=10_001, description="quantile levels kept for the prior")
    sweep: float = Field(0.01, ge=0, lt=0.5, description="explore sweeps the sweep..1-sweep quantiles")


class ContinuousState(BaseModel):
    """State of ``continuous`` (statistics of the training labels; stored in heads files)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    field: str
    columns: list[StrictInt] = Field(min_length=1, max_length=1024)
    names: list[str] = Field(min_length=1, max_length=1024)
    mean: list[float] = Field(max_length=1024)
    std: list[float] = Field(max_length=1024)
    low: list[float] = Field(max_length=1024)
    high: list[float] = Field(max_length=1024)
    quantiles: list[Annotated[list[float], Field(min_length=2, max_length=10_001)]] = Field(max_length=1024)

    @model_validator(mode="after")
    def _consistent(self) -> ContinuousState:
        k = len(self.columns)
        lists = {"names": self.names, "mean": self.mean, "std": self.std, "low": self.low}
        lists.update({"high": self.high, "quantiles": self.quantiles})
        wrong = [name for name, v in lists.items() if len(v) != k]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: need one entry per column ({k})")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be > 0")
        if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError("low must be <= high")
        for q in self.quantiles:
            if len(q) < 2 or any(b < a for a, b in zip(q, q[1:], strict=False)):
                raise ValueError("quantiles must be at least 2 non-decreasing values per column")
        return self


def _column_stats(values: torch.Tensor, levels: int) -> dict[str, list]:
    """Mean, std, min, max and ``levels`` quantiles of each column, ignoring non-finite values."""
    import torch

    out: dict[str, list] = {"mean": [], "std": [], "low": [], "high": [], "quantiles": []}
    q = torch.linspace(0, 1, levels, dtype=torch.float64)
    for j in range(values.shape[1]):
        col = values[:, j].double()
        col = col[torch.isfinite(col)]
        if len(col) < 2:
            raise ValueError(f"column {j} has {len(col)} finite value(s); need at least 2")
        std = float(col.std())
        out["mean"].append(float(col.mean()))
        out["std"].append(std if std > 0 else 1.0)
        out["low"].append(float(col.min()))
        out["high"].append(float(col.max()))
        out["quantiles"].append([float(v) for v in torch.quantile(col, q)])
    return out


class Continuous(ConditionKind):
    """Measured quantities: standardized input, MSE head, quantile prior, range-checked values."""

    name = "continuous"
    Options = ContinuousOptions
    State = ContinuousState
    supervised = True
    label_kind = "continuous"
    value_help = (
        "continuous=2.5 (one column), continuous=2.5,0.1 (every column) or "
        "continuous=thickness:2.5 (by name), in the field's units; edits continuous=+0.5 / -0.3 "
        "(relative) or continuous==-0.3 (set)"
    )

    @classmethod
    def from_dataset(cls, options: BaseModel | dict[str, Any] | None, dataset: Any) -> Continuous:
        opts = cls.parse_options(options)
        f, columns = label_columns(cls.name, dataset, "continuous", opts.field)
        values = dataset.labels[f.name].float().reshape(len(dataset), -1)[:, columns]
        try:
            stats = _column_stats(values, opts.quantiles)
        except ValueError as e:
            raise ConfigError(f"condition plugin {cls.name!r}: field {f.name!r}: {e}") from None
        names = [f.columns[c] for c in columns]
        return cls(opts, {"field": f.name, "columns": columns, "names": names, **stats})

    # ------------------------------------------------------------ statistics
    @property
    def names(self) -> list[str]:
        """Names of the conditioned columns, in target order."""
        return list(self.state_dict_["names"])

    @property
    def component_names(self) -> list[str]:
        return self.names

    def bounds(self, j: int) -> tuple[float, float]:
        """Accepted values of column ``j``: the observed range widened by ``margin`` widths."""
        lo, hi = self.state_dict_["low"][j], self.state_dict_["high"][j]
        pad = self.options.margin * (hi - lo)
        return lo - pad, hi + pad

    def _quantile(self, j: int, level: float) -> float:
        q = self.state_dict_["quantiles"][j]
        x = level * (len(q) - 1)
        i = min(int(x), len(q) - 2)
        return q[i] + (x - i) * (q[i + 1] - q[i])

    @property
    def value_range(self) -> tuple[float, float] | list[tuple[float, float]]:
        """Per column, the ``sweep`` and ``1 - sweep`` quantiles of the training labels."""
        s = self.options.sweep
        ranges = [(self._quantile(j, s), self._quantile(j, 1 - s)) for j in range(len(self.names))]
        return ranges[0] if len(ranges) == 1 else ranges

    # ---------------------------------------------------------------- targets
    @property
    def target_shape(self) -> tuple[int, ...]:
        return (len(self.names),)

    def targets(self, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        values = labels[self.state_dict_["field"]].float()
        values = values.reshape(values.shape[0], -1)[:, self.state_dict_["columns"]]
        mean = torch.tensor(self.state_dict_["mean"], dtype=torch.float32).expand_as(values)
        return torch.where(torch.isfinite(values), values, mean)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Each column from its empirical quantiles (linear between levels), independently."""
        import torch

        q = torch.tensor(self.state_dict_["quantiles"], dtype=torch.float32)  # (k, L)
        x = torch.rand(n, q.shape[0], generator=generator) * (q.shape[1] - 1)
        i = x.floor().long().clamp(max=q.shape[1] - 2)
        cols = torch.arange(q.shape[0])
        lo, hi = q[cols, i], q[cols, i + 1]
        return lo + (x - i) * (hi - lo)

    def _column(self, text: str, raw: str) -> int:
        keys = [n.lower() for n in self.names]
        key = text.strip().lower()
        if key in keys:
            return keys.index(key)
        raise self.parse_error(raw, f"unknown column {text.strip()!r}; columns: {', '.join(self.names)}")

    def _number(self, text: str, raw: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise self.parse_error(raw, f"{text.strip()!r} is not a number") from None
        if not math.isfinite(v):
            raise self.parse_error(raw, f"{text.strip()!r} is not finite")
        return v

    def _checked(self, j: int, v: float, raw: str) -> float:
        lo, hi = self.bounds(j)
        if not lo <= v <= hi:
            obs = f"{self.state_dict_['low'][j]:.4g}..{self.state_dict_['high'][j]:.4g}"
            raise self.parse_error(
                raw,
                f"{self.names[j]} {v:.4g} is outside [{lo:.4g}, {hi:.4g}] (observed {obs} plus "
                f"margin {self.options.margin:g})",
            )
        return v

    def _apply(self, base: list[float], value: str, relative_signs: bool) -> list[float]:
        """``base`` with the values of ``value`` applied (positional or ``name:v``); with
        ``relative_signs`` a signed number is added to the current value."""
        tokens = [t.strip() for t in value.split(",")]
        if not value.strip() or any(not t for t in tokens):
            raise self.parse_error(value, "empty value")
        named = [":" in t for t in tokens]
        if any(named) and not all(named):
            raise self.parse_error(value, "give every value by name (thickness:2.5) or none")
        if not any(named) and len(tokens) != len(base):
            raise self.parse_error(value, f"{len(tokens)} number(s) for {len(base)} column(s)")
        out = list(base)
        seen: set[int] = set()
        for i, token in enumerate(tokens):
            j, text = (i, token)
            if named[i]:
                col, _, text = token.partition(":")
                j = self._column(col, value)
                if j in seen:
                    raise self.parse_error(value, f"column {self.names[j]!r} given twice")
            seen.add(j)
            text = text.strip()
            if relative_signs and text[:1] in "+-":
                out[j] = base[j] + self._number(text, value)
            else:
                out[j] = self._number(text[1:] if text.startswith("=") else text, value)
            self._checked(j, out[j], value)
        return out

    def parse(self, value: str) -> torch.Tensor:
        """Values in the field's units; columns not named take the training median."""
        import torch

        medians = [self._quantile(j, 0.5) for j in range(len(self.names))]
        return torch.tensor(self._apply(medians, value, relative_signs=False), dtype=torch.float32)

    def edit(self, target: torch.Tensor, value: str) -> torch.Tensor:
        """``+0.5`` / ``-0.3`` (or ``thickness:+0.5``) add to the current value; ``=V`` or an
        unsigned ``V`` sets it. The result is range-checked like :meth:`parse`."""
        import torch

        current = [float(v) for v in target.reshape(-1).tolist()]
        return torch.tensor(self._apply(current, value, relative_signs=True), dtype=torch.float32)

    def format(self, target: torch.Tensor) -> str:
        """``thickness:2.51234`` (every column by name, 6 digits: ``parse`` reads it back)."""
        values = target.reshape(-1).tolist()
        return ",".join(f"{n}:{v:.6g}" for n, v in zip(self.names, values, strict=True))

    # ----------------------------------------------------------- encoder side
    @property
    def input_dim(self) -> int:
        return len(self.names)

    def input_module(self) -> nn.Module:
        from flowcond.caglow.inputs import Standardize

        return Standardize(self.state_dict_["mean"], self.state_dict_["std"])

    # -------------------------------------------------------------- head side
    @property
    def head_dim(self) -> int:
        return len(self.names)

    def _standardized(self, targets: torch.Tensor) -> torch.Tensor:
        import torch

        mean = torch.tensor(self.state_dict_["mean"], dtype=torch.float32)
        std = torch.tensor(self.state_dict_["std"], dtype=torch.float32)
        return (targets.float().reshape(-1, len(self.names)) - mean) / std

    def loss(self, head_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """MSE of the head's outputs against the standardized targets."""
        import torch.nn.functional as F

        return F.mse_loss(head_out, self._standardized(targets))

    def predict(self, head_out: torch.Tensor) -> torch.Tensor:
        import torch

        mean = torch.tensor(self.state_dict_["mean"], dtype=torch.float32)
        std = torch.tensor(self.state_dict_["std"], dtype=torch.float32)
        return head_out.float() * std + mean

    def metrics(self, head_out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """``mse`` (standardized), and per column ``mae/<name>`` (field units) and
        ``correlation/<name>`` of predicted against true values."""
        import torch

        pred, true = self.predict(head_out), targets.float().reshape(-1, len(self.names))
        out = {"mse": float((head_out - self._standardized(true)).pow(2).mean())}
        for j, name in enumerate(self.names):
            out[f"mae/{name}"] = float((pred[:, j] - true[:, j]).abs().mean())
            if len(true) > 1:
                out[f"correlation/{name}"] = float(
                    torch.corrcoef(torch.stack([pred[:, j], true[:, j]]))[0, 1]
                )
        return out


@hookimpl
def register_conditions(register):
    register(Continuous)
