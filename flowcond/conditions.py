"""The condition-kind interface every condition plugin implements.

A condition kind turns *targets* (what a user asks for: a class id, a set of attributes, a code)
into an encoder input, samples targets from its prior, and owns one head of the supervision block
with its loss. Supervised kinds read their targets from dataset labels and their head is trained on
real and generated latents (paper Eq. 12); unsupervised kinds (codes) have no labels and their head
reconstructs the code from generated latents only (Eq. 13).

Lifecycle: ``Kind.from_dataset(options, dataset)`` when attaching (reads label schema and
statistics), ``kind.state()`` is stored in the heads file, ``Kind(options, state)`` rebuilds it
without the dataset.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from .errors import ConfigError


class NoOptions(BaseModel):
    """Options of a kind that takes none."""

    model_config = ConfigDict(extra="forbid")


class ConditionKind(ABC):
    """Base class of condition kinds. Subclasses set ``name``, ``Options``, ``supervised``."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    supervised: ClassVar[bool] = True
    #: form of a ``--condition`` value, shown in parse errors, e.g. ``"ids=3"``
    value_help: ClassVar[str] = ""

    def __init__(self, options: BaseModel | dict[str, Any] | None, state: dict[str, Any]) -> None:
        self.options = self.parse_options(options)
        self.state_dict_ = dict(state)

    # ----------------------------------------------------------- construction
    @classmethod
    def parse_options(cls, options: BaseModel | dict[str, Any] | None) -> BaseModel:
        if isinstance(options, cls.Options):
            return options
        try:
            return cls.Options(**(options or {}))
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ConfigError(f"condition plugin {cls.name!r}: invalid options: {msgs}") from None

    @classmethod
    @abstractmethod
    def from_dataset(cls, options: BaseModel | dict[str, Any] | None, dataset: Any) -> ConditionKind:
        """Resolve options against a dataset (``flowcond.datasets.ImageDataset``) and its labels."""

    def state(self) -> dict[str, Any]:
        """JSON-serializable facts needed to rebuild this kind without the dataset."""
        return dict(self.state_dict_)

    # ---------------------------------------------------------------- targets
    @property
    @abstractmethod
    def target_shape(self) -> tuple[int, ...]:
        """Shape of one sample's target: ``()`` for a class id, ``(A,)`` for attributes or codes."""

    @property
    def target_dtype(self) -> torch.dtype:
        return torch.float32

    def targets(self, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Targets of a batch from its dataset labels (supervised kinds only)."""
        raise NotImplementedError(f"condition kind {self.name!r} has no targets in dataset labels")

    @abstractmethod
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` targets drawn from the kind's prior."""

    @abstractmethod
    def parse(self, value: str) -> torch.Tensor:
        """One target from a user's ``--condition name=value`` value; ConfigError if malformed."""

    def format(self, target: torch.Tensor) -> str:
        """Short text for one target (used to label image grids)."""
        return ",".join(f"{v:g}" for v in target.reshape(-1).tolist())

    def edit(self, target: torch.Tensor, value: str) -> torch.Tensor:
        """Apply a cumulative edit (``--add name=value``) to one target. Default: replace it."""
        return self.parse(value)

    # ----------------------------------------------------------- encoder side
    @property
    @abstractmethod
    def input_dim(self) -> int:
        """Width of this kind's slice of the encoder input."""

    def input_module(self) -> nn.Module:
        """Module mapping a batch of targets to ``(B, input_dim)`` encoder inputs (may learn)."""
        return _Float(self.input_dim)

    # -------------------------------------------------------------- head side
    @property
    @abstractmethod
    def head_dim(self) -> int:
        """Output width of this kind's head on the supervision trunk."""

    @abstractmethod
    def loss(self, head_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss of the head's output against targets (CE, BCE, MSE, ...)."""

    def predict(self, head_out: torch.Tensor) -> torch.Tensor:
        """Targets predicted from head outputs (same shape/dtype as targets)."""
        return head_out

    def metrics(self, head_out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Named metrics of head outputs against targets (e.g. accuracy)."""
        return {}

    def parse_error(self, value: str, why: str) -> ConfigError:
        return ConfigError(
            f"condition plugin {self.name!r}: cannot parse {value!r} ({why}); expected {self.value_help}"
        )


class _Float(nn.Module):
    """Default input module: targets used as they are, as float ``(B, width)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.float().reshape(t.shape[0], self.width)
