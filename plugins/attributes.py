"""Built-in condition kind ``attributes``: binary attributes (smiling, eyeglasses) as multi-hot.

Encoder input: the multi-hot vector. Head: one logit per attribute, BCE-with-logits. Prior: each
attribute on with its frequency in the dataset (stored in the kind's state). Metrics: accuracy per
attribute and their mean.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from flowcond import hookimpl
from flowcond.conditions import ConditionKind, label_columns
from flowcond.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: `flowcond --help` imports every plugin
    import torch


def _key(name: str) -> str:
    """Normalized attribute name: case, spaces and dashes do not matter (``black-hair``)."""
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


class AttributesOptions(BaseModel):
    """Options of ``attributes``."""

    model_config = ConfigDict(extra="forbid")

    field: str | None = Field(None, description="binary label field; default: the first one")
    names: list[str] | None = Field(
        None, description="subset of the field's attributes to condition on (default: all)"
    )

    @field_validator("names", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s for s in (p.strip() for p in v.split(",")) if s]
        return v

    @field_validator("names")
    @classmethod
    def _not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("names must list at least one attribute")
        return v


class AttributesState(BaseModel):
    """State of ``attributes`` (from the dataset; stored in heads files)."""

    model_config = ConfigDict(extra="allow")

    field: str
    columns: list[StrictInt] = Field(min_length=1, max_length=100_000)
    names: list[str] = Field(min_length=1, max_length=100_000)
    frequencies: list[float] = Field(min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _consistent(self) -> AttributesState:
        n = len(self.names)
        if len(self.columns) != n or len(self.frequencies) != n:
            raise ValueError(
                f"{n} names, {len(self.columns)} columns and {len(self.frequencies)} frequencies"
            )
        if any(c < 0 for c in self.columns):
            raise ValueError("columns must be >= 0")
        if not all(0.0 <= p <= 1.0 for p in self.frequencies):  # NaN too
            raise ValueError("frequencies must be in [0, 1]")
        return self


class Attributes(ConditionKind):
    """Binary attributes: multi-hot input, BCE head, prior from the dataset's frequencies."""

    name = "attributes"
    Options = AttributesOptions
    State = AttributesState
    supervised = True
    label_kind = "binary"
    value_help = (
        "attributes=smiling,eyeglasses (the attributes that are on; 'none' for all off), "
        "and for edits attributes=-smiling to turn one off"
    )

    @property
    def value_range(self) -> tuple[float, float]:
        """Attributes are 0 (off) to 1 (on); sweeps may go beyond."""
        return (0.0, 1.0)

    @classmethod
    def from_dataset(cls, options: BaseModel | dict[str, Any] | None, dataset: Any) -> Attributes:
        import torch

        opts = cls.parse_options(options)
        f, field_columns = label_columns(cls.name, dataset, "binary", opts.field)  # FIELD.COL,COL too
        all_names = list(f.names) if f.names else [str(i) for i in range(f.size)]
        if opts.names is not None and len(field_columns) < f.size:
            raise cls.parse_options_error(f"field={opts.field!r} names columns: leave out names")
        if opts.names is None:
            columns = field_columns
        else:
            keys = {_key(n): i for i, n in enumerate(all_names)}
            unknown = [n for n in opts.names if _key(n) not in keys]
            if unknown:
                raise cls.parse_options_error(
                    f"names: unknown attribute(s) {', '.join(unknown)} of field {f.name!r}; "
                    f"known: {', '.join(all_names)}"
                )
            columns = [keys[_key(n)] for n in opts.names]
            if len(set(columns)) != len(columns):
                raise cls.parse_options_error("names: an attribute is listed twice")
        values = dataset.labels[f.name].float()
        freq = values[:, columns].mean(dim=0) if len(values) else torch.full((len(columns),), 0.5)
        return cls(
            opts,
            {
                "field": f.name,
                "columns": columns,
                "names": [all_names[c] for c in columns],
                "frequencies": [round(float(p), 6) for p in freq],
            },
        )

    @classmethod
    def parse_options_error(cls, why: str) -> ConfigError:
        """ConfigError for options that are valid alone but do not fit the dataset."""
        return ConfigError(f"condition plugin {cls.name!r}: invalid options: {why}")

    @property
    def names(self) -> list[str]:
        """Names of the conditioned attributes, in target order."""
        return list(self.state_dict_["names"])

    @property
    def component_names(self) -> list[str]:
        """The attribute names: ``explore --plugin attributes --code thick`` sweeps one."""
        return self.names

    @property
    def frequencies(self) -> torch.Tensor:
        """Per-attribute frequency of 'on' in the dataset (the prior)."""
        import torch

        return torch.tensor(self.state_dict_["frequencies"], dtype=torch.float32)

    # ---------------------------------------------------------------- targets
    @property
    def target_shape(self) -> tuple[int, ...]:
        return (len(self.names),)

    def targets(self, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        values = labels[self.state_dict_["field"]].float()
        return values[:, self.state_dict_["columns"]]

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Each attribute independently on with its dataset frequency."""
        import torch

        return torch.bernoulli(self.frequencies.expand(n, -1), generator=generator)

    def _set(self, target: torch.Tensor, value: str, allow_empty: bool) -> torch.Tensor:
        keys = {_key(n): i for i, n in enumerate(self.names)}
        tokens = [t.strip() for t in value.split(",") if t.strip()]
        if not tokens or (len(tokens) == 1 and tokens[0].lower() == "none"):
            if allow_empty:
                return target
            raise self.parse_error(value, "no attribute named")
        for token in tokens:
            on = not token.startswith("-")
            name = token.lstrip("+-")
            if _key(name) not in keys:
                raise self.parse_error(value, f"unknown attribute {name!r}; known: {', '.join(self.names)}")
            target[keys[_key(name)]] = 1.0 if on else 0.0
        return target

    def parse(self, value: str) -> torch.Tensor:
        """Multi-hot with the listed attributes on and all others off."""
        import torch

        return self._set(torch.zeros(self.target_shape), value, allow_empty=True)

    def edit(self, target: torch.Tensor, value: str) -> torch.Tensor:
        """``smiling`` (or ``+smiling``) turns it on, ``-smiling`` off; the others stay."""
        return self._set(target.detach().clone().float(), value, allow_empty=False)

    def format(self, target: torch.Tensor) -> str:
        on = [n for n, v in zip(self.names, target.reshape(-1).tolist(), strict=True) if v > 0.5]
        return ",".join(on) or "none"

    # ----------------------------------------------------------- encoder side
    @property
    def input_dim(self) -> int:
        return len(self.names)

    # -------------------------------------------------------------- head side
    @property
    def head_dim(self) -> int:
        return len(self.names)

    def loss(self, head_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(head_out, targets.float())

    def predict(self, head_out: torch.Tensor) -> torch.Tensor:
        return (head_out > 0).float()

    def metrics(self, head_out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        per = (self.predict(head_out) == (targets > 0.5).float()).float().mean(dim=0)
        out = {"accuracy": per.mean().item()}
        out.update({f"accuracy/{n}": float(a) for n, a in zip(self.names, per.tolist(), strict=True)})
        return out


@hookimpl
def register_conditions(register):
    register(Attributes)
