"""Training checkpoints: the one save/load of modules, optimizers and random generators.

A checkpoint is a flowcond safetensors file (:mod:`flowcond.io.safefile`, written atomically)
with, for every name given:

* a module: its state dict as tensors ``{name}.{key}``;
* an optimizer: its per-parameter state flattened to tensors ``{name}.{index}.{key}`` (the only
  place optimizer state is flattened) and its ``param_groups`` in the header,
  ``param_groups: {name: groups}``;
* a ``torch.Generator``: its state as the tensor ``{name}``;

plus the trainer's JSON ``state`` (step, epoch, history, configs...) in the header.

Older layouts still load: train-backbone wrote ``param_groups`` as the list of its only
optimizer, attach wrote ``param_groups: {"e": ..., "d": ...}`` for its optimizers ``optim_e``
and ``optim_d``; the tensor names were already the ones above.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from flowcond.errors import FileFormatError
from flowcond.io import safefile

_RESERVED = ("kind", "format_version", "param_groups", "content_hash")
#: loop counters a checkpoint's state may hold: whole numbers >= 0 (seconds: a number >= 0)
_COUNTERS = ("step", "epoch", "skipped")


def save_checkpoint(
    path: str | os.PathLike,
    kind: str,
    state: Mapping[str, Any],
    modules: Mapping[str, nn.Module] | None = None,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> None:
    """Write a ``kind`` checkpoint of ``modules``, ``optimizers``, ``generators`` and ``state``."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in (modules or {}).items():
        tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    groups = {}
    for name, opt in (optimizers or {}).items():
        sd = opt.state_dict()
        groups[name] = sd["param_groups"]
        for idx, st in sd["state"].items():
            for key, val in st.items():
                tensors[f"{name}.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    for name, g in (generators or {}).items():
        tensors[name] = g.get_state()
    extra = {k: v for k, v in state.items() if k not in _RESERVED}
    header = {"kind": kind, "param_groups": groups, **extra}
    header["content_hash"] = safefile.content_hash(tensors)  # checked by safefile.read
    safefile.write(path, tensors, header)


def checkpoint_state(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The JSON state of a ``kind`` checkpoint (header only, no tensors read)."""
    return safefile.read_header(path, kind)


def load_checkpoint(
    path: str | os.PathLike,
    kind: str,
    modules: Mapping[str, nn.Module] | None = None,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    require: Iterable[str] = (),
) -> dict[str, Any]:
    """Restore ``modules``, ``optimizers`` and ``generators`` in place; return the JSON state.

    Anything missing or not fitting (another kind, a module of another shape, a state key in
    ``require`` absent) is a one-line :class:`FileFormatError` naming the file.
    """
    tensors, header = safefile.read(path, kind)
    try:
        for name, module in (modules or {}).items():
            module.load_state_dict(_under(tensors, name), strict=True)
        for name, opt in (optimizers or {}).items():
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, val in _under(tensors, name).items():
                idx, field = key.split(".", 1)
                state.setdefault(int(idx), {})[field] = val
            opt.load_state_dict({"state": state, "param_groups": _param_groups(header, name, optimizers)})
        for name, g in (generators or {}).items():
            g.set_state(tensors[name])
        missing = [k for k in require if k not in header]
        if missing:
            raise KeyError(", ".join(missing))
        _check_counters(header)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise FileFormatError(path, f"invalid checkpoint: {safefile.one_line(e)}") from None
    return header


def _check_counters(header: Mapping[str, Any]) -> None:
    for key in _COUNTERS:
        value = header.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a whole number >= 0, got {value!r}")
    seconds = header.get("train_seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ValueError(f"train_seconds must be a number >= 0, got {seconds!r}")


def _under(tensors: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}


def _param_groups(header: Mapping[str, Any], name: str, optimizers: Mapping[str, Any]) -> Any:
    groups = header["param_groups"]
    if isinstance(groups, list):  # train-backbone's old layout: its only optimizer's groups
        if len(optimizers) != 1:
            raise KeyError(f"param_groups of {name}")
        return groups
    if name not in groups and name.startswith("optim_"):  # attach's old layout: "e", "d"
        return groups[name.removeprefix("optim_")]
    return groups[name]
