"""Boundary checks on what a condition kind returns: shapes, dtypes and finite scalar losses.

A plugin's mistakes should be one-line errors at the boundary, not silent broadcasting (targets
``(B,)`` against a ``(B, 1)`` head: MSE broadcasts to ``(B, B)`` and trains) or a traceback deep
inside generation (``parse`` returning a 0-d tensor). Each function checks one method's result
and raises :class:`~flowcond.errors.PluginError` naming the plugin, the method, and the expected
against the returned shape or dtype. They are cheap (shapes and dtypes; one ``isfinite`` on a
scalar) and are called once per run where a method runs every step (the first batch of
``attach``: :func:`flowcond.caglow.boundary.check_first_batch`), and on every call where a
method runs once per command (``parse``, ``edit``, ``sample_prior`` when generating).

Importing this module does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcond.errors import PluginError

if TYPE_CHECKING:
    import torch

__all__ = [
    "check_input",
    "check_head",
    "check_loss",
    "check_prior",
    "check_target",
    "check_targets",
    "check_value_range",
]


def _who(kind: Any, method: str) -> str:
    return f"condition plugin {getattr(kind, 'name', type(kind).__name__)!r}: {method}"


def _shape(shape: Any) -> str:
    dims = tuple(int(d) for d in shape)
    return f"({', '.join(str(d) for d in dims)}{',' if len(dims) == 1 else ''})"


def _dtype(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor(kind: Any, method: str, value: Any) -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor):
        raise PluginError(f"{_who(kind, method)} returned {type(value).__name__}, not a torch.Tensor")
    return value


def _expect(
    kind: Any, method: str, value: Any, shape: tuple[int, ...], dtype: Any, note: str = ""
) -> torch.Tensor:
    """``value`` if it is a tensor of ``shape`` and ``dtype``; else a one-line PluginError."""
    t = _tensor(kind, method, value)
    if tuple(t.shape) != tuple(shape):
        raise PluginError(
            f"{_who(kind, method)} returned shape {_shape(t.shape)}, expected {_shape(shape)}{note}"
        )
    if dtype is not None and t.dtype != dtype:
        raise PluginError(
            f"{_who(kind, method)} returned dtype {_dtype(t.dtype)}, expected {_dtype(dtype)} "
            f"(its target_dtype)"
        )
    return t


def _target_note(kind: Any, lead: str) -> str:
    return f" = {lead}*target_shape) with target_shape {_shape(kind.target_shape)}"


def check_targets(kind: Any, targets: Any, batch: int, method: str = "targets()") -> torch.Tensor:
    """Targets of a batch: shape ``(batch, *target_shape)``, dtype ``target_dtype``."""
    shape = (batch, *kind.target_shape)
    return _expect(kind, method, targets, shape, kind.target_dtype, _target_note(kind, "(B, "))


def check_prior(kind: Any, targets: Any, n: int) -> torch.Tensor:
    """``sample_prior(n)``: shape ``(n, *target_shape)``, dtype ``target_dtype``."""
    return check_targets(kind, targets, n, f"sample_prior({n})")


def check_target(kind: Any, target: Any, method: str = "parse()") -> torch.Tensor:
    """One target (``parse``, ``edit``): shape ``target_shape``, dtype ``target_dtype``."""
    return _expect(kind, method, target, tuple(kind.target_shape), kind.target_dtype, " (its target_shape)")


def _width(kind: Any, method: str, out: Any, batch: int, width: int, attr: str) -> torch.Tensor:
    t = _expect(kind, method, out, (batch, width), None, f" = (B, {attr}) with {attr} {width}")
    if not t.is_floating_point():
        raise PluginError(f"{_who(kind, method)} returned dtype {_dtype(t.dtype)}, expected a float dtype")
    return t


def check_input(kind: Any, out: Any, batch: int) -> torch.Tensor:
    """What ``input_module()`` makes of a batch of targets: float ``(B, input_dim)``."""
    return _width(kind, "input_module()", out, batch, kind.input_dim, "input_dim")


def check_head(kind: Any, out: Any, batch: int) -> torch.Tensor:
    """The kind's head outputs on a batch: float ``(B, head_dim)``."""
    return _width(kind, "head output", out, batch, kind.head_dim, "head_dim")


def check_loss(kind: Any, loss: Any, method: str = "loss()", finite: bool = True) -> torch.Tensor:
    """``loss(head_out, targets)``: a 0-d float tensor (a scalar that can be backpropagated),
    finite unless ``finite=False`` (its inputs were not finite: not the plugin's fault)."""
    import torch

    t = _tensor(kind, method, loss)
    if t.dim() != 0:
        raise PluginError(
            f"{_who(kind, method)} returned shape {_shape(t.shape)}, expected a 0-d scalar () "
            f"(reduce it, e.g. .mean(); a shape mismatch may have broadcast)"
        )
    if not t.is_floating_point():
        raise PluginError(f"{_who(kind, method)} returned dtype {_dtype(t.dtype)}, expected a float scalar")
    if finite and not bool(torch.isfinite(t.detach())):
        raise PluginError(f"{_who(kind, method)} returned {float(t.detach()):g}, expected a finite number")
    return t


def check_value_range(kind: Any) -> list[tuple[float, float]] | None:
    """``value_range``: None, finite ``(low, high)`` with ``low < high``, or a list of one such
    pair per target component. Returns one pair per component (None for none)."""
    import math

    value = kind.value_range
    if value is None:
        return None
    width = math.prod(kind.target_shape)
    pairs = list(value) if value and isinstance(next(iter(value)), list | tuple) else [value] * width
    expected = f"expected None, finite (low, high) with low < high, or {width} such pairs"
    if len(pairs) != width:
        raise PluginError(f"{_who(kind, 'value_range')} has {len(pairs)} pairs, {expected}")
    out = []
    for pair in pairs:
        try:
            low, high = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise PluginError(f"{_who(kind, 'value_range')} is {value!r}, {expected}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise PluginError(f"{_who(kind, 'value_range')} is {value!r}, {expected}")
        out.append((low, high))
    return out
