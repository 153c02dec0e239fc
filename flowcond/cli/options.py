"""click options built from pydantic model fields, so that defaults live only in the models.

``model_option(TrainConfig, "epochs")`` is ``--epochs`` with the field's default (shown in
``--help``), its type (``Literal`` fields become a ``click.Choice``, ``bool`` fields flags) and its
``Field(description=...)`` as help. Keyword arguments override what is derived (e.g. a help text
worded for the command line), except that the default always comes from the model.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import click
from pydantic import BaseModel


def _without_none(annotation: Any) -> Any:
    """``int | None`` -> ``int``; other annotations unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def sentence(text: str | None) -> str | None:
    """A field description as help text: capitalized, ending with a full stop."""
    if not text:
        return None
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", ")", "]")) else f"{text}."


def field_default(model: type[BaseModel], name: str) -> Any:
    """The default of ``model.name`` (None for a required field)."""
    info = model.model_fields[name]
    return None if info.is_required() else info.get_default(call_default_factory=True)


def model_option(model: type[BaseModel], name: str, *decls: str, **kwargs: Any) -> Callable:
    """A click option for the field ``name`` of ``model``: its default, type and description.

    ``decls`` default to ``--field-name``. A ``bool`` field whose default is True becomes
    ``--x/--no-x``, one whose default is False a flag ``--x``. ``kwargs`` go to ``click.option``.
    """
    if "default" in kwargs:
        raise TypeError("the default of a model option comes from the model")
    info = model.model_fields[name]
    decls = decls or (f"--{name.replace('_', '-')}",)
    default = field_default(model, name)
    base = _without_none(info.annotation)
    if base is bool and "is_flag" not in kwargs and not any("/" in d for d in decls):
        if default:
            first = decls[0]
            decls = (f"{first}/--no-{first.lstrip('-')}", *decls[1:])
        else:
            kwargs["is_flag"] = True
    elif typing.get_origin(base) is Literal:
        kwargs.setdefault("type", click.Choice([str(a) for a in typing.get_args(base)]))
    elif base in (int, float, str):
        kwargs.setdefault("type", base)
    kwargs.setdefault("help", sentence(info.description))
    kwargs.setdefault("show_default", default is not None and not (base is bool and not default))
    if info.is_required():
        kwargs.setdefault("required", True)
    return click.option(*decls, default=default, **kwargs)


DEVICE_HELP = (
    "Where to compute: auto (cuda if available, else cpu), cpu, cuda or cuda:N; under torchrun "
    "auto and cuda mean cuda:LOCAL_RANK."
)


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from flowcond.distributed import check_device_spec
    from flowcond.errors import ConfigError

    try:
        return check_device_spec(value)
    except ConfigError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def _store_device(ctx: click.Context, param: click.Parameter, value: str) -> None:
    ctx.meta["flowcond.device"] = _check_device(ctx, param, value)


def device_option(default: str = "auto", help: str = DEVICE_HELP, expose_value: bool = True) -> Callable:
    """``--device auto|cpu|cuda|cuda:N`` (checked without importing torch; resolved by
    :func:`flowcond.distributed.resolve_device` when the command runs). ``expose_value=False``:
    not a parameter of the command; read it with :func:`current_device`."""
    return click.option(
        "--device",
        default=default,
        show_default=True,
        callback=_check_device if expose_value else _store_device,
        expose_value=expose_value,
        metavar="DEVICE",
        help=help,
    )


def current_device(default: str = "auto") -> str:
    """The ``--device`` of the running command (a :func:`device_option` with ``expose_value=False``)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("flowcond.device", default) if ctx is not None else default


def options(*decorators: Callable) -> Callable:
    """Apply several option decorators in the order listed (first = first in ``--help``)."""

    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def weights_help(model: type[BaseModel], what: str) -> str:
    """Help listing every field of ``model`` as ``NAME (description, default)``: for options
    such as ``--lambda NAME=VALUE`` whose names are the fields of a model."""
    parts = []
    for name, info in model.model_fields.items():
        default = field_default(model, name)
        desc = f"{info.description}, " if info.description else ""
        if isinstance(default, float):
            parts.append(f"{name} ({desc}default {default:g})")
        elif not isinstance(default, dict):  # a dict field (Lambdas.kinds) is described by the caller
            parts.append(name)
    return f"{what} NAME=VALUE (repeatable); NAME is one of: {'; '.join(parts)}."
