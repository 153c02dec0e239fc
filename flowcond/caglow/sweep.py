"""What ``flowcond explore`` sweeps: one target component of one attached condition kind.

Any kind that declares a ``value_range`` (:class:`flowcond.conditions.ConditionKind`) can be swept:
unsupervised codes, attributes, a continuous measured quantity. The kind is chosen by name
(``--condition KIND`` or ``--plugin KIND``; default: the first unsupervised kind), the component by
index (``--code I``) or by name (``--condition KIND.COMPONENT``, names from
``ConditionKind.component_names``). The two ends of the sweep go through the kind's own
``parse(format(target))``, so its range checks apply; the values in between are linear
interpolations of the two ends' targets. A kind without a value range is a one-line ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowcond.caglow.heads import Heads
from flowcond.conditions import ConditionKind
from flowcond.contract import check_value_range
from flowcond.errors import ConfigError

__all__ = ["Sweep", "resolve_sweep", "sweep_ends", "sweep_plugin"]


@dataclass
class Sweep:
    """One component of one kind, and the range to sweep it over."""

    name: str  # the kind, as attached
    index: int  # the component, in the flattened target
    component: str  # its name (``ConditionKind.component_names``)
    low: float
    high: float
    components: int = 1  # how many the kind has

    @property
    def label(self) -> str:
        """``continuous.thickness``, ``codes.0``; the kind's name alone if it has one component."""
        return f"{self.name}.{self.component}" if self.components > 1 else self.name


def _component(kind: ConditionKind, name: str, code: int | str, option: str) -> tuple[int, str]:
    names = kind.component_names
    if isinstance(code, str) and not code.isdigit():
        lowered = [n.lower() for n in names]
        if code.lower() not in lowered:
            raise ConfigError(
                f"{option}: {name!r} has no component {code!r}; its components: {', '.join(names)}"
            )
        i = lowered.index(code.lower())
        return i, names[i]
    i = int(code)
    if not 0 <= i < len(names):
        raise ConfigError(f"{option} {name}: --code {i}: {name!r} has components 0..{len(names) - 1}")
    return i, names[i]


def resolve_sweep(
    heads: Heads,
    plugin: str | None,
    code: int | str = 0,
    value_range: tuple[float, float] | None = None,
    option: str = "--condition",
) -> Sweep:
    """The sweep of ``plugin`` (``KIND`` or ``KIND.COMPONENT``; default: the first unsupervised
    kind) at component ``code``, over ``value_range`` (default: the kind's). One-line ConfigError
    naming ``option`` when the kind is not attached, has no value range or no such component."""
    component: int | str = code
    if plugin is not None and plugin not in heads.kinds and "." in plugin:
        plugin, _, component = plugin.partition(".")
    if plugin is None:
        names = [n for n, k in heads.kinds.items() if not k.supervised]
        if not names:
            sweepable = [n for n, k in heads.kinds.items() if k.value_range is not None]
            hint = f"; kinds with one here: {', '.join(sweepable)}" if sweepable else ""
            raise ConfigError(
                "explore: name the condition to sweep with --condition KIND (this heads file has "
                f"{', '.join(heads.kinds)}, and no unsupervised code){hint}"
            )
        plugin = names[0]
        option = "explore"
    if plugin not in heads.kinds:
        raise ConfigError(
            f"{option} {plugin}: not attached to this heads file (it has {', '.join(heads.kinds)})"
        )
    kind = heads.kinds[plugin]
    ranges = kind.value_range
    if ranges is None:
        sweepable = [n for n, k in heads.kinds.items() if k.value_range is not None]
        hint = f"; plugins with one: {', '.join(sweepable)}" if sweepable else ""
        raise ConfigError(f"{option} {plugin}: condition plugin {plugin!r} has no value range to sweep{hint}")
    index, comp = _component(kind, plugin, component, option)
    # the kind's own ranges are checked like everywhere else (one-line PluginError if malformed)
    low, high = value_range if value_range is not None else check_value_range(kind)[index]
    return Sweep(plugin, index, comp, float(low), float(high), len(kind.component_names))


def sweep_plugin(heads: Heads, plugin: str | None, code: int = 0) -> str:
    """The kind ``explore`` sweeps (see :func:`resolve_sweep`); a one-line ConfigError if none."""
    return resolve_sweep(heads, plugin, code, option="--plugin").name


def _through_parse(kind: ConditionKind, sweep: Sweep, row: torch.Tensor, value: float) -> torch.Tensor:
    target = row.detach().clone()
    flat = target.reshape(-1)
    flat[sweep.index] = value
    target = flat.reshape(row.shape)
    try:
        parsed = kind.parse(kind.format(target))
    except ConfigError as e:
        raise ConfigError(f"explore {sweep.label}: the sweep end {value:g} is refused: {e}") from None
    return torch.as_tensor(parsed).to(row.dtype).reshape(row.shape)


def sweep_ends(heads: Heads, sweep: Sweep, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets ``(rows, ...)`` of both ends of the sweep, each row's other components kept,
    each through the kind's ``parse(format(target))`` (its range checks)."""
    kind = heads.kinds[sweep.name]
    low = torch.stack([_through_parse(kind, sweep, t, sweep.low) for t in targets])
    high = torch.stack([_through_parse(kind, sweep, t, sweep.high) for t in targets])
    return low, high
