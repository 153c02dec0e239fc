"""The condition-kind interface every condition plugin implements.

A condition kind turns *targets* (what a user asks for: a class id, a set of attributes, a code)
into an encoder input, samples targets from its prior, and owns one head of the supervision block
with its loss. Supervised kinds read their targets from dataset labels and their head is trained on
real and generated latents (paper Eq. 12); unsupervised kinds (codes) have no labels and their head
reconstructs the code from generated latents only (Eq. 13).

Lifecycle: ``Kind.from_dataset(options, dataset)`` when attaching (reads label schema and
statistics), ``kind.state()`` is stored in the heads file, ``Kind(options, state)`` rebuilds it
without the dataset.

Importing this module does not import torch (``flowcond --help`` imports every plugin, and
plugins import it): torch is imported inside the methods that need it. The input modules
(``OneHot``, ``Embedding``) live in :mod:`flowcond.caglow.inputs`; ``flowcond.conditions.OneHot``
still works.
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from flowcond.errors import ConfigError, PluginError, validation_message

if TYPE_CHECKING:
    import torch
    from torch import nn

    from flowcond.caglow.inputs import OneHot

__all__ = [
    "ConditionKind",
    "NoOptions",
    "OneHot",
    "check_kind",
    "label_columns",
    "label_field",
    "malformed_condition",
]


class NoOptions(BaseModel):
    """Options of a kind that takes none."""

    model_config = ConfigDict(extra="forbid")


class ConditionKind(ABC):
    """Base class of condition kinds. Subclasses set ``name``, ``Options``, ``supervised``."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: pydantic model of :meth:`state` (None: not validated). A kind rebuilt from a heads file
    #: gets its state from the file, so bounds belong here (a class count of 10**9 is refused
    #: before an input module of that width is built)
    State: ClassVar[type[BaseModel] | None] = None
    supervised: ClassVar[bool] = True
    #: form of a ``--condition`` value, shown in parse errors, e.g. ``"ids=3"``
    value_help: ClassVar[str] = ""
    #: the kind of dataset label field (``categorical``, ``binary`` or ``continuous``) whose values
    #: this condition takes *as they are* as its targets, chosen with the option ``field``; None
    #: for kinds that derive their targets or need no labels. ``flowcond evaluate`` uses it to
    #: find the condition for a dataset's class field and for its attribute field.
    label_kind: ClassVar[str | None] = None
    #: default weight of this kind's head loss inside ``L_C`` (supervised) or ``L_De``
    #: (unsupervised); ``--lambda C.NAME=W`` / ``--lambda De.NAME=W`` overrides it per attach.
    #: Use it to bring a loss of another scale (a regression MSE) in line with cross-entropy.
    loss_weight: ClassVar[float] = 1.0
    #: the control ``flowcond demo`` shows: ``"dropdown"`` or ``"radio"`` (the values ``0, 1,
    #: ...`` that :meth:`parse` accepts), ``"checkboxes"`` or ``"sliders"`` (one per target
    #: component; sliders over :attr:`value_range`), ``"text"`` (a ``--condition`` value). None:
    #: derived from :attr:`label_kind` and :attr:`value_range` (docs/writing-plugins.md).
    widget: ClassVar[str | None] = None

    def __init__(
        self, options: BaseModel | dict[str, Any] | None, state: dict[str, Any] | None = None
    ) -> None:
        self.options = self.parse_options(options)
        self.state_dict_ = self.parse_state(state)

    # ----------------------------------------------------------- construction
    @classmethod
    def parse_options(cls, options: BaseModel | dict[str, Any] | None) -> BaseModel:
        """Validate options (a dict, or an ``Options`` instance); ConfigError naming the plugin."""
        if isinstance(options, cls.Options):
            return options
        if isinstance(options, BaseModel):
            options = options.model_dump()
        try:
            return cls.Options(**(options or {}))
        except ValidationError as e:
            msgs = validation_message(e)
            fields = ", ".join(cls.Options.model_fields) or "none"
            raise ConfigError(
                f"condition plugin {cls.name!r}: invalid options: {msgs} (its options: {fields})"
            ) from None

    @classmethod
    def parse_state(cls, state: dict[str, Any] | None) -> dict[str, Any]:
        """Validate a state with :attr:`State` (if set); ConfigError naming the plugin and field."""
        if state is not None and not isinstance(state, dict):
            raise ConfigError(
                f"condition plugin {cls.name!r}: invalid state: must be an object, not {type(state).__name__}"
            )
        state = dict(state or {})
        if cls.State is None:
            return state
        try:
            model = cls.State.model_validate(state)
        except ValidationError as e:
            msgs = validation_message(e, whole="state")
            raise ConfigError(f"condition plugin {cls.name!r}: invalid state: {msgs}") from None
        return {**state, **model.model_dump(include=set(state))}

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
        """dtype of targets: ``torch.long`` for class ids, ``torch.float32`` (default) otherwise."""
        import torch

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

    @property
    def value_range(self) -> tuple[float, float] | list[tuple[float, float]] | None:
        """What ``flowcond explore`` sweeps: ``(low, high)`` for every target component (e.g.
        ``(-1, 1)`` for uniform codes), or a list of one ``(low, high)`` per component (columns of
        different units); None when the targets are not numbers to sweep (class ids), and then
        ``explore`` refuses the kind. Both ends must be values :meth:`parse` accepts: the sweep's
        ends go through ``parse(format(target))``, so the kind's range checks apply."""
        return None

    @property
    def component_names(self) -> list[str]:
        """Names of the target components (``explore`` labels and ``--code NAME``); default:
        their indices ``"0"``, ``"1"``, ..."""
        width = 1
        for d in self.target_shape:
            width *= int(d)
        return [str(i) for i in range(width)]

    def edit(self, target: torch.Tensor, value: str) -> torch.Tensor:
        """Apply a cumulative edit (``--add name=value``) to one target. Default: replace it."""
        return self.parse(value)

    # ----------------------------------------------------------- encoder side
    @property
    @abstractmethod
    def input_dim(self) -> int:
        """Width of this kind's slice of the encoder input."""

    def input_module(self) -> nn.Module:
        """Module mapping a batch of targets to ``(B, input_dim)`` encoder inputs (may learn).
        Default: the targets as they are, as float (:class:`flowcond.caglow.inputs.AsFloat`)."""
        from flowcond.caglow.inputs import AsFloat

        return AsFloat(self.input_dim)

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

    def agrees(self, head_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Per sample, whether the head's reading agrees with the target: a ``(B,)`` bool
        tensor, or None when this kind cannot say. Checked sampling (``attach --image-check``)
        redraws the samples whose image disagrees. Default: :meth:`predict` equals the target in
        every component for integer targets (class ids); None for float targets (override it
        with a tolerance of your own for regression kinds)."""
        if targets.is_floating_point():
            return None
        n = targets.shape[0]
        return (self.predict(head_out).reshape(n, -1) == targets.reshape(n, -1)).all(dim=1)

    def parse_error(self, value: str, why: str) -> ConfigError:
        """The ConfigError to raise for a malformed ``--condition`` value: names the plugin, the
        problem and the accepted form (:attr:`value_help`)."""
        expected = self.value_help or f"{self.name}=VALUE"
        return ConfigError(
            f"condition plugin {self.name!r}: cannot parse {value!r} ({why}); expected {expected}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r}, state keys={sorted(self.state_dict_)})"


def check_kind(kind: Any, plugin: str) -> str:
    """The name of ``kind``, which ``plugin`` registers; PluginError if it is not a concrete
    ConditionKind subclass with a valid ``name`` (letters, digits, ``_`` and ``-``)."""
    if not (isinstance(kind, type) and issubclass(kind, ConditionKind)):
        raise PluginError(f"plugin {plugin!r} registered {kind!r}, not a ConditionKind subclass")
    name = getattr(kind, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name):
        raise PluginError(
            f"plugin {plugin!r}: condition kind {kind.__qualname__} needs a class attribute "
            f"`name` (letters, digits, '_' or '-'), got {name!r}"
        )
    if inspect.isabstract(kind):
        missing = ", ".join(sorted(kind.__abstractmethods__))
        raise PluginError(f"plugin {plugin!r}: condition kind {name!r} does not implement {missing}")
    return name


def label_field(plugin: str, dataset: Any, kind: str, field: str | None = None) -> Any:
    """The dataset's label field ``field`` (a ``flowcond.datasets.LabelField``) of kind ``kind``
    (``categorical``, ``binary`` or ``continuous``); without ``field``, the first of that kind.

    Raises ConfigError naming the plugin, the dataset's fields and the accepted ones.
    """
    schema = getattr(dataset, "schema", None) or {}
    spec = getattr(dataset, "spec", None) or {}
    where = f"dataset {spec['name']!r}" if "name" in spec else "the dataset"
    fitting = [f.name for f in schema.values() if f.kind == kind]
    listing = ", ".join(f"{f.name} ({f.kind})" for f in schema.values()) or "none"
    if field is None:
        if not fitting:
            raise ConfigError(
                f"condition plugin {plugin!r} needs a {kind} label field; {where} has: {listing}"
            )
        return schema[fitting[0]]
    if field not in schema or schema[field].kind != kind:
        whole = "; it takes a whole field, not FIELD.COLUMN" if "." in field else ""
        raise ConfigError(
            f"condition plugin {plugin!r}: field={field!r} is not a {kind} label field of {where}; "
            f"choose one of: {', '.join(fitting) or 'none'} (its labels: {listing}){whole}"
        )
    return schema[field]


def malformed_condition(item: str, kinds: dict[str, ConditionKind]) -> ConfigError:
    """The error for a ``--condition`` without ``=``: names the one kind at fault (the one it
    names) and its ``value_help``; else lists the kinds, not every kind's help run together."""
    words = item.replace(":", " ").split()
    kind = kinds.get(item.strip()) or (kinds.get(words[0]) if words else None)
    if kind is not None:
        expected = kind.value_help or f"{kind.name}=VALUE"
        return ConfigError(
            f"condition {item!r} must look like NAME=VALUE; condition plugin {kind.name!r} expects {expected}"
        )
    return ConfigError(f"condition {item!r} must look like NAME=VALUE with NAME one of: {', '.join(kinds)}")


def label_columns(plugin: str, dataset: Any, kind: str, field: str | None = None) -> tuple[Any, list[int]]:
    """``label_field`` for a field that may name columns: ``"morphometrics"`` (every column),
    ``"morphometrics.thickness"`` or ``"morphometrics.thickness,slant"`` (columns by name, ignoring
    case, or by index). Returns the ``LabelField`` and the column indices, in the order given.

    Raises ConfigError naming the plugin, the field and its columns.
    """
    if field is not None and field not in (getattr(dataset, "schema", None) or {}) and "." in field:
        name, _, wanted = field.partition(".")
        f = label_field(plugin, dataset, kind, name)
        columns = [f.column_index(c, plugin) for c in wanted.split(",")]
        if len(set(columns)) != len(columns):
            raise ConfigError(f"condition plugin {plugin!r}: field={field!r} names a column twice")
        return f, columns
    f = label_field(plugin, dataset, kind, field)
    return f, list(range(f.size))


def __getattr__(name: str) -> Any:
    # the input modules moved to flowcond.caglow.inputs (they need torch)
    if name in ("OneHot", "Embedding", "AsFloat", "_Float"):
        from flowcond.caglow import inputs

        return getattr(inputs, "AsFloat" if name == "_Float" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
