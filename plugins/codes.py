"""Built-in condition kind ``codes``: unsupervised codes (InfoGAN-style, paper Eq. 13).

No labels: codes are drawn from the prior, fed to the encoder as they are, and the head learns to
recover them from generated latents only. ``distribution='uniform'``: continuous codes in
Uniform(-1, 1), MSE head. ``distribution='binomial'``: discrete codes in {0, 1}, BCE head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flowcond import hookimpl
from flowcond.conditions import ConditionKind

if TYPE_CHECKING:  # torch is imported where it is used: `flowcond --help` imports every plugin
    import torch


class CodesOptions(BaseModel):
    """Options of ``codes``."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(2, ge=1, le=1024, description="number of codes")
    distribution: Literal["uniform", "binomial"] = Field(
        "uniform", description="'uniform': continuous in [-1, 1] (MSE); 'binomial': {0, 1} (BCE)"
    )


class CodesState(BaseModel):
    """State of ``codes``: nothing (codes need no dataset)."""

    model_config = ConfigDict(extra="allow")


class Codes(ConditionKind):
    """Unsupervised codes: Uniform(-1, 1) with an MSE head, or binomial {0, 1} with BCE."""

    name = "codes"
    Options = CodesOptions
    State = CodesState
    supervised = False
    value_help = (
        "codes=0.5,-1 (one number per code: in [-1, 1] for uniform codes, 0 or 1 for binomial), "
        "and for edits codes=I:V to set code I to V"
    )

    @classmethod
    def from_dataset(cls, options: BaseModel | dict[str, Any] | None, dataset: Any = None) -> Codes:
        """Codes need nothing from the dataset."""
        return cls(cls.parse_options(options), {})

    @property
    def continuous(self) -> bool:
        """Whether codes are Uniform(-1, 1) (else binomial {0, 1})."""
        return self.options.distribution == "uniform"

    @property
    def value_range(self) -> tuple[float, float]:
        """Range of one code: (-1, 1) for uniform codes, (0, 1) for binomial ones (for sweeps)."""
        return (-1.0, 1.0) if self.continuous else (0.0, 1.0)

    # ---------------------------------------------------------------- targets
    @property
    def target_shape(self) -> tuple[int, ...]:
        return (self.options.n,)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        if self.continuous:
            return torch.rand(n, self.options.n, generator=generator) * 2 - 1
        return torch.bernoulli(torch.full((n, self.options.n), 0.5), generator=generator)

    def _value(self, text: str, raw: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise self.parse_error(raw, f"{text.strip()!r} is not a number") from None
        if self.continuous and not -1.0 <= v <= 1.0:
            raise self.parse_error(raw, f"{v:g} is outside [-1, 1]")
        if not self.continuous and v not in (0.0, 1.0):
            raise self.parse_error(raw, f"{v:g} is not 0 or 1 (binomial codes)")
        return v

    def parse(self, value: str) -> torch.Tensor:
        parts = value.split(",")
        if len(parts) != self.options.n:
            raise self.parse_error(value, f"{len(parts)} number(s) for {self.options.n} code(s)")
        import torch

        return torch.tensor([self._value(p, value) for p in parts], dtype=torch.float32)

    def edit(self, target: torch.Tensor, value: str) -> torch.Tensor:
        """``I:V`` (comma-separated for several) sets code ``I`` to ``V``; a full list replaces."""
        if ":" not in value:
            return self.parse(value)
        out = target.detach().clone().float()
        for part in value.split(","):
            index, _, v = part.partition(":")
            try:
                i = int(index)
            except ValueError:
                raise self.parse_error(value, f"{index.strip()!r} is not a code index") from None
            if not 0 <= i < self.options.n:
                raise self.parse_error(value, f"code index {i} outside 0..{self.options.n - 1}")
            out[i] = self._value(v, value)
        return out

    # ----------------------------------------------------------- encoder side
    @property
    def input_dim(self) -> int:
        return self.options.n

    # -------------------------------------------------------------- head side
    @property
    def head_dim(self) -> int:
        return self.options.n

    def loss(self, head_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.continuous:
            return F.mse_loss(head_out, targets.float())
        return F.binary_cross_entropy_with_logits(head_out, targets.float())

    def predict(self, head_out: torch.Tensor) -> torch.Tensor:
        if self.continuous:
            return head_out.clamp(-1, 1)
        return (head_out > 0).float()

    def metrics(self, head_out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        import torch.nn.functional as F

        if self.continuous:
            return {"mse": F.mse_loss(self.predict(head_out), targets.float()).item()}
        return {"accuracy": (self.predict(head_out) == targets.float()).float().mean().item()}


@hookimpl
def register_conditions(register):
    register(Codes)
