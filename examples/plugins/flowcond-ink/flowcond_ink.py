"""flowcond plugin: the dataset ``mnist5k-ink`` and the continuous condition kind ``ink``.

Ink is how much of a digit is drawn: the sum of its pixel values (a fully lit pixel counts 1).
``mnist5k-ink`` is ``mnist5k`` plus a continuous label field ``ink``; the condition ``ink``
regresses it: standardized input, MSE head, values range-checked against the training data.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

import flowcond
from flowcond.conditions import ConditionKind, label_columns
from flowcond.datasets import ImageDataset, LabelField, load_dataset
from flowcond.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__version__ = "0.1.0"
#: bump when the measure changes: the dataset spec holds it, and the spec keys the latent cache
INK_VERSION = 1


def ink(images: torch.Tensor) -> torch.Tensor:
    """Ink of each image ``(N, C, H, W)`` in [0, 1]: the sum of its pixels, ``(N,)``."""
    return images.float().sum(dim=(1, 2, 3))


def with_ink(base: str, split: str, root: str | None = None, download: bool = False) -> ImageDataset:
    """Dataset ``base`` plus a continuous label field ``ink`` (one column)."""
    ds = load_dataset(base, split, root=root, download=download)
    labels = {**ds.labels, "ink": ink(ds.all_images()).reshape(-1, 1)}
    schema = [*ds.schema.values(), LabelField("ink", "continuous", 1, ["ink"])]
    spec = {**ds.spec, "name": f"{base}-ink", "base": base, "ink_version": INK_VERSION}
    return ImageDataset(ds.images, labels, schema, spec)


class InkOptions(BaseModel):
    """Options of ``ink``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    field: str = Field("ink", description="continuous label field, FIELD or FIELD.COLUMN")
    margin: float = Field(0.1, ge=0, le=10, description="accept the observed range widened by this")


class Ink(ConditionKind):
    """How much ink a digit holds: standardized input, MSE head, range-checked values."""

    name = "ink"
    Options = InkOptions
    supervised = True
    label_kind = "continuous"
    value_help = "ink=90 (the sum of the pixels); edits ink=+10 or ink=-10"

    @classmethod
    def from_dataset(cls, options: BaseModel | dict[str, Any] | None, dataset: Any) -> Ink:
        import torch

        opts = cls.parse_options(options)
        field, columns = label_columns(cls.name, dataset, "continuous", opts.field)
        if len(columns) != 1:
            raise ConfigError(f"condition plugin 'ink': field={opts.field!r} must name one column")
        values = dataset.labels[field.name].float().reshape(len(dataset), -1)[:, columns[0]]
        sweep = torch.quantile(values, torch.tensor([0.01, 0.99]))
        state = {
            "field": field.name,
            "column": columns[0],
            "mean": float(values.mean()),
            "std": float(values.std()),
            "low": float(values.min()),
            "high": float(values.max()),
            "sweep": [float(sweep[0]), float(sweep[1])],
        }
        return cls(opts, state)

    # ---------------------------------------------------------------- targets
    @property
    def target_shape(self) -> tuple[int, ...]:
        return (1,)

    def targets(self, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        values = labels[self.state_dict_["field"]].float()
        return values.reshape(len(values), -1)[:, [self.state_dict_["column"]]]

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A normal with the data's mean and std, kept inside the observed range."""
        import torch

        s = self.state_dict_
        draws = s["mean"] + s["std"] * torch.randn(n, 1, generator=generator)
        return draws.clamp(s["low"], s["high"])

    def _checked(self, v: float, value: str) -> torch.Tensor:
        import torch

        s = self.state_dict_
        pad = self.options.margin * (s["high"] - s["low"])
        if not s["low"] - pad <= v <= s["high"] + pad:  # NaN fails this test too
            observed = f"{s['low']:.1f}..{s['high']:.1f}"
            raise self.parse_error(value, f"{v:g} is outside the observed {observed} plus the margin")
        return torch.tensor([v], dtype=torch.float32)

    def parse(self, value: str) -> torch.Tensor:
        try:
            v = float(value)
        except ValueError:
            raise self.parse_error(value, "not a number") from None
        return self._checked(v, value)

    def edit(self, target: torch.Tensor, value: str) -> torch.Tensor:
        """``+10`` / ``-10`` add to the current value; a plain number replaces it."""
        if value.strip()[:1] in ("+", "-"):
            try:
                delta = float(value)
            except ValueError:
                raise self.parse_error(value, "not a number") from None
            return self._checked(float(target.reshape(-1)[0]) + delta, value)
        return self.parse(value)

    def format(self, target: torch.Tensor) -> str:
        """6 significant digits: ``parse`` reads back what ``format`` writes."""
        return f"{float(target.reshape(-1)[0]):.6g}"

    @property
    def value_range(self) -> tuple[float, float]:
        """``flowcond explore`` sweeps the 1 % to 99 % quantiles of the training data."""
        low, high = self.state_dict_["sweep"]
        return (low, high)

    # ----------------------------------------------------------- encoder side
    @property
    def input_dim(self) -> int:
        return 1

    def input_module(self) -> nn.Module:
        from flowcond.caglow.inputs import Standardize

        return Standardize([self.state_dict_["mean"]], [self.state_dict_["std"]])

    # -------------------------------------------------------------- head side
    @property
    def head_dim(self) -> int:
        return 1

    def loss(self, head_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        s = self.state_dict_
        return F.mse_loss(head_out, (targets.float() - s["mean"]) / s["std"])

    def predict(self, head_out: torch.Tensor) -> torch.Tensor:
        return head_out * self.state_dict_["std"] + self.state_dict_["mean"]

    def metrics(self, head_out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"mae": float((self.predict(head_out) - targets.float()).abs().mean())}


@flowcond.hookimpl
def register_datasets(register):
    register("mnist5k-ink", functools.partial(with_ink, "mnist5k"), "mnist5k + ink", extends="mnist5k")
    register("digits-ink", functools.partial(with_ink, "digits"), "digits + ink", extends="digits")


@flowcond.hookimpl
def register_conditions(register):
    register(Ink)
