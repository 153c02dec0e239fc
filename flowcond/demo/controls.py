"""One control per attached condition, derived from the condition kind's declared contract.

The widget of a kind is its ``widget`` attribute when it declares one, else:

- ``label_kind == "categorical"`` -> ``dropdown`` of its values,
- ``label_kind == "binary"`` -> ``checkboxes``, one per target component,
- a ``value_range`` -> ``sliders``, one per target component over its range,
- anything else -> ``text``: a ``--condition`` value typed as on the command line.

Every control yields the *value string* of a ``--condition NAME=VALUE``: the kind's own
:meth:`~flowcond.conditions.ConditionKind.format` of the target the control shows, so what the
page generates is exactly what the printed command reproduces (the renderer parses it back with
:meth:`~flowcond.conditions.ConditionKind.parse`). No Gradio here; torch only inside functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowcond.errors import ConfigError, PluginError

#: the widgets a kind may declare (``ConditionKind.widget``)
WIDGETS = ("dropdown", "radio", "checkboxes", "sliders", "text")
#: a categorical kind with more values than this gets a text box instead of a dropdown
MAX_CHOICES = 1000
#: a slider of a continuous range moves in this many steps
SLIDER_STEPS = 100


@dataclass(frozen=True)
class Control:
    """The control of one attached condition ``name``.

    ``labels``: the choices (dropdown, radio), checkboxes or sliders shown; ``values``: the
    condition value of each choice; ``ranges`` and ``steps``: one per slider; ``default``: the
    widget's initial value (a list of floats for sliders); ``help``: the kind's ``value_help``.
    """

    name: str
    widget: str
    labels: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    ranges: tuple[tuple[float, float], ...] = ()
    steps: tuple[float, ...] = ()
    default: Any = None
    help: str = ""
    note: str = field(default="", compare=False)

    @property
    def inputs(self) -> int:
        """How many input widgets the control has (one slider per component, else one)."""
        return len(self.ranges) if self.widget == "sliders" else 1


def declared_widget(name: str, kind: Any) -> str | None:
    """The widget ``kind`` declares (its ``widget`` attribute), None if it declares none.

    PluginError naming the plugin when it declares something that is not in :data:`WIDGETS`.
    """
    widget = getattr(kind, "widget", None)
    if widget is not None and widget not in WIDGETS:
        raise PluginError(f"condition plugin {name!r}: widget {widget!r} is not one of {', '.join(WIDGETS)}")
    return widget


def derived_widget(kind: Any) -> str:
    """The widget of a kind that declares none: from its ``label_kind`` and ``value_range``."""
    label_kind = getattr(kind, "label_kind", None)
    if label_kind == "categorical":
        return "dropdown"
    if label_kind == "binary":
        return "checkboxes"
    if kind.value_range is not None:
        return "sliders"
    return "text"


def _width(kind: Any) -> int:
    width = 1
    for d in kind.target_shape:
        width *= int(d)
    return width


def _component_names(kind: Any) -> list[str]:
    names = getattr(kind, "component_names", None)
    if isinstance(names, list | tuple) and len(names) == _width(kind):
        return [str(n) for n in names]
    return [str(i) for i in range(_width(kind))]


def _accepts(kind: Any, target: Any) -> bool:
    """Whether the kind parses its own format of ``target`` back (its range checks pass)."""
    try:
        kind.parse(kind.format(target))
    except (ConfigError, ValueError):
        return False
    return True


def _target(kind: Any, values: Sequence[float]) -> Any:
    import torch

    return torch.tensor([float(v) for v in values], dtype=torch.float32).reshape(kind.target_shape)


def _text(name: str, kind: Any, note: str = "") -> Control:
    return Control(name, "text", default="", help=kind.value_help, note=note)


def _choices(name: str, kind: Any, widget: str) -> Control:
    """Values ``0, 1, ...`` that the kind parses (at most :data:`MAX_CHOICES`), labelled by its
    format; a text box when it has more, or none."""
    count = int(getattr(kind, "head_dim", 0) or 0)
    if count > MAX_CHOICES:
        return _text(name, kind, f"{count:,} values: type one")
    labels, values = [], []
    for i in range(count):
        try:
            target = kind.parse(str(i))
        except (ConfigError, ValueError):
            break
        labels.append(kind.format(target))
        values.append(str(i))
    if not values:
        return _text(name, kind)
    return Control(name, widget, tuple(labels), tuple(values), default=values[0], help=kind.value_help)


def _checkboxes(name: str, kind: Any) -> Control:
    """One checkbox per target component, labelled by the kind's format of that component alone
    (``smiling``), else by the component's name."""
    width = _width(kind)
    names = _component_names(kind)
    labels = []
    for i in range(width):
        one = _target(kind, [1.0 if j == i else 0.0 for j in range(width)])
        text = kind.format(one)
        plain = ",".join(f"{v:g}" for v in one.reshape(-1).tolist())
        labels.append(names[i] if text == plain or "," in text else text)
    if len(set(labels)) != len(labels):
        labels = names
    return Control(name, "checkboxes", tuple(labels), default=[], help=kind.value_help)


def _ranges(name: str, kind: Any) -> list[tuple[float, float]]:
    width = _width(kind)
    rng = kind.value_range
    if rng is None:
        raise PluginError(f"condition plugin {name!r}: widget 'sliders' needs a value_range")
    if isinstance(rng, tuple) and len(rng) == 2 and not isinstance(rng[0], tuple | list):
        pairs = [rng] * width
    else:
        pairs = list(rng)
    if len(pairs) != width:
        raise PluginError(
            f"condition plugin {name!r}: value_range has {len(pairs)} ranges for {width} components"
        )
    return [(float(lo), float(hi)) for lo, hi in pairs]


def _sliders(name: str, kind: Any) -> Control:
    """One slider per target component over its range; starting at the middle of the ranges.
    A kind that refuses the middle (binomial codes: 0 or 1) gets sliders that jump between the
    ends."""
    ranges = _ranges(name, kind)
    middle = [(lo + hi) / 2 for lo, hi in ranges]
    if _accepts(kind, _target(kind, middle)):
        steps = [(hi - lo) / SLIDER_STEPS or 1.0 for lo, hi in ranges]
        default = middle
    else:
        steps = [(hi - lo) or 1.0 for lo, hi in ranges]
        default = [lo for lo, _ in ranges]
    names = _component_names(kind)
    return Control(
        name,
        "sliders",
        tuple(names),
        ranges=tuple(ranges),
        steps=tuple(steps),
        default=default,
        help=kind.value_help,
    )


def control_for(name: str, kind: Any) -> Control:
    """The control of the attached condition ``name`` (a :class:`ConditionKind` instance)."""
    widget = declared_widget(name, kind) or derived_widget(kind)
    if widget in ("dropdown", "radio"):
        return _choices(name, kind, widget)
    if widget == "checkboxes":
        return _checkboxes(name, kind)
    if widget == "sliders":
        return _sliders(name, kind)
    return _text(name, kind)


def controls_for(kinds: Mapping[str, Any]) -> list[Control]:
    """One control per attached condition, in the heads file's order."""
    return [control_for(name, kind) for name, kind in kinds.items()]


def condition_value(control: Control, kind: Any, raw: Sequence[Any]) -> str | None:
    """The ``--condition`` value of the control's widgets ``raw`` (one item per input widget);
    None when a text control is empty (the condition is drawn from its prior)."""
    if control.widget in ("dropdown", "radio"):
        value = raw[0]
        if value not in control.values:
            raise ConfigError(f"{control.name}: {value!r} is not one of its values")
        return str(value)
    if control.widget == "checkboxes":
        on = set(raw[0] or [])
        unknown = on - set(control.labels)
        if unknown:
            raise ConfigError(f"{control.name}: unknown choice(s) {', '.join(sorted(unknown))}")
        return kind.format(_target(kind, [1.0 if label in on else 0.0 for label in control.labels]))
    if control.widget == "sliders":
        if len(raw) != len(control.ranges):
            raise ConfigError(f"{control.name}: {len(raw)} values for {len(control.ranges)} sliders")
        return kind.format(_target(kind, [float(v) for v in raw]))
    text = str(raw[0] or "").strip()
    return text or None


def default_edits(controls: Sequence[Control], kinds: Mapping[str, Any]) -> list[str]:
    """Cumulative edits to show first (the paper's Fig. 4): every checkbox turned on in turn,
    where the kind's ``edit`` takes the checkbox's label (``attributes=smiling``)."""
    edits = []
    for c in controls:
        if c.widget != "checkboxes":
            continue
        kind = kinds[c.name]
        start = _target(kind, [0.0] * len(c.labels))
        for label in c.labels:
            try:
                kind.edit(start, label)
            except (ConfigError, ValueError):
                continue
            edits.append(f"{c.name}={label}")
    return edits
