"""Built-in condition kind ``ids``: a categorical label (digit class, person identity).

Encoder input: one-hot for up to ``embedding_threshold`` classes, a learned embedding above
(CelebA has 10,177 identities). Head: ``classes`` logits with cross-entropy. Metric: accuracy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from flowcond import hookimpl
from flowcond.conditions import ConditionKind, label_field

if TYPE_CHECKING:  # torch is imported where it is used: `flowcond --help` imports every plugin
    import torch
    from torch import nn


class IdsOptions(BaseModel):
    """Options of ``ids``."""

    model_config = ConfigDict(extra="forbid")

    field: str | None = Field(None, description="categorical label field; default: the first one")
    embedding_threshold: int = Field(
        256, ge=1, description="more classes than this use a learned embedding instead of one-hot"
    )
    embedding_dim: int = Field(64, ge=1, description="width of the learned embedding")


class IdsState(BaseModel):
    """State of ``ids`` (from the dataset; stored in heads files)."""

    model_config = ConfigDict(extra="allow")

    field: str
    classes: StrictInt = Field(ge=1, le=10_000_000, description="number of classes")
    names: list[str] = Field(default_factory=list, description="class names (may be empty)")

    @model_validator(mode="after")
    def _names_fit(self) -> IdsState:
        if len(self.names) > self.classes:
            raise ValueError(f"{len(self.names)} class names for {self.classes} classes")
        return self


class Ids(ConditionKind):
    """Categorical ids (class, identity): one-hot or embedding input, cross-entropy head."""

    name = "ids"
    Options = IdsOptions
    State = IdsState
    supervised = True
    label_kind = "categorical"
    value_help = "ids=3 (a class index) or ids=NAME (a class name, if the dataset names them)"
    #: checked sampling keeps a sample when the image check gives the requested class at least
    #: this probability (0.8 rather than the most probable class: on six heads on the shipped
    #: MNIST backbone it raised the evaluator's accuracy of checked samples by 0.003-0.016 for
    #: 0.01-0.09 px of within-class diversity)
    agree_probability = 0.8

    @classmethod
    def from_dataset(cls, options: BaseModel | dict[str, Any] | None, dataset: Any) -> Ids:
        opts = cls.parse_options(options)
        f = label_field(cls.name, dataset, "categorical", opts.field)
        return cls(opts, {"field": f.name, "classes": int(f.size), "names": list(f.names)})

    @property
    def classes(self) -> int:
        """Number of classes."""
        return int(self.state_dict_["classes"])

    @property
    def names(self) -> list[str]:
        """Class names (may be empty)."""
        return list(self.state_dict_.get("names") or [])

    @property
    def embedded(self) -> bool:
        """Whether targets go through a learned embedding rather than one-hot."""
        return self.classes > self.options.embedding_threshold

    # ---------------------------------------------------------------- targets
    @property
    def target_shape(self) -> tuple[int, ...]:
        return ()

    @property
    def target_dtype(self) -> torch.dtype:
        import torch

        return torch.long

    def targets(self, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        t = labels[self.state_dict_["field"]].long().reshape(-1)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.classes):
            raise ValueError(
                f"condition plugin {self.name!r}: labels of {self.state_dict_['field']!r} "
                f"outside 0..{self.classes - 1}"
            )
        return t

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform over the classes."""
        import torch

        return torch.randint(0, self.classes, (n,), generator=generator)

    def parse(self, value: str) -> torch.Tensor:
        import torch

        v = value.strip()
        if not v:
            raise self.parse_error(value, "empty value")
        try:
            i = int(v)
        except ValueError:
            i = self._index_of_name(value, v)
        else:
            if not 0 <= i < self.classes:
                raise self.parse_error(value, f"class index out of range 0..{self.classes - 1}")
        return torch.tensor(i, dtype=torch.long)

    def _index_of_name(self, value: str, v: str) -> int:
        names = self.names
        if v in names:
            return names.index(v)
        lowered = [n.lower() for n in names]
        if v.lower() in lowered:
            return lowered.index(v.lower())
        if not names:
            raise self.parse_error(
                value, f"not an integer, and field {self.state_dict_['field']!r} has no class names"
            )
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise self.parse_error(value, f"unknown class name; known: {shown}")

    def format(self, target: torch.Tensor) -> str:
        i = int(target)
        return self.names[i] if i < len(self.names) else str(i)

    # ----------------------------------------------------------- encoder side
    @property
    def input_dim(self) -> int:
        return self.options.embedding_dim if self.embedded else self.classes

    def input_module(self) -> nn.Module:
        from flowcond.caglow.inputs import Embedding, OneHot

        if self.embedded:
            return Embedding(self.classes, self.options.embedding_dim)
        return OneHot(self.classes)

    # -------------------------------------------------------------- head side
    @property
    def head_dim(self) -> int:
        return self.classes

    def loss(self, head_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(head_out, targets.long().reshape(-1))

    def predict(self, head_out: torch.Tensor) -> torch.Tensor:
        return head_out.argmax(dim=-1)

    def agrees(self, head_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The head gives the target class a probability of at least :attr:`agree_probability`."""
        p = head_out.float().softmax(dim=-1)
        return p.gather(1, targets.long().reshape(-1, 1)).squeeze(1) >= self.agree_probability

    def metrics(self, head_out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        correct = self.predict(head_out) == targets.long().reshape(-1)
        return {"accuracy": correct.float().mean().item()}


@hookimpl
def register_conditions(register):
    register(Ids)
