"""flowcond plugin: condition kind ``parity``, whether a categorical label is even or odd.

A derived binary attribute: targets are ``label % 2`` (1 = odd) of a categorical label field
(``digit`` for the MNIST datasets). Supervised, one logit with BCE-with-logits, accuracy metric.

torch is imported inside the methods that use it: every ``flowcond`` command (``--help`` too)
imports every installed plugin, so a plugin module should be cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

import flowcond
from flowcond.conditions import ConditionKind, label_field

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"


class ParityOptions(BaseModel):
    """Options of ``parity``."""

    model_config = ConfigDict(extra="forbid")

    field: str | None = Field(None, description="categorical label field; default: the first one")


class Parity(ConditionKind):
    """Parity of a categorical label (even/odd): one binary input, BCE head."""

    name = "parity"
    Options = ParityOptions
    supervised = True
    value_help = "parity=even or parity=odd (or 0 / 1)"

    @classmethod
    def from_dataset(cls, options: BaseModel | dict[str, Any] | None, dataset: Any) -> Parity:
        opts = cls.parse_options(options)
        field = label_field(cls.name, dataset, "categorical", opts.field)
        labels = dataset.labels[field.name].long()
        odd = float((labels % 2).float().mean()) if len(labels) else 0.5
        return cls(opts, {"field": field.name, "odd_frequency": round(odd, 6)})

    @property
    def target_shape(self) -> tuple[int, ...]:
        return (1,)

    def targets(self, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        return (labels[self.state_dict_["field"]].long() % 2).float().reshape(-1, 1)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        p = torch.full((n, 1), float(self.state_dict_.get("odd_frequency", 0.5)))
        return torch.bernoulli(p, generator=generator)

    def parse(self, value: str) -> torch.Tensor:
        import torch

        v = value.strip().lower()
        if v in ("even", "0"):
            return torch.zeros(1)
        if v in ("odd", "1"):
            return torch.ones(1)
        raise self.parse_error(value, "not even, odd, 0 or 1")

    def format(self, target: torch.Tensor) -> str:
        return "odd" if float(target.reshape(-1)[0]) > 0.5 else "even"

    @property
    def input_dim(self) -> int:
        return 1

    @property
    def head_dim(self) -> int:
        return 1

    def loss(self, head_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(head_out, targets.float())

    def predict(self, head_out: torch.Tensor) -> torch.Tensor:
        return (head_out > 0).float()

    def metrics(self, head_out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"accuracy": (self.predict(head_out) == targets.float()).float().mean().item()}


@flowcond.hookimpl
def register_conditions(register):
    """Register the ``parity`` condition kind."""
    register(Parity)
