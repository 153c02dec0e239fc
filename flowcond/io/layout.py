"""What tensors a file must hold: specs (dtype, shape) from a safetensors header, compared with
what a header's config implies, before any model is built.

:func:`check_layout` compares; :func:`meta_specs` computes what a module would hold by building it
on the ``meta`` device (shapes only, nothing allocated); :func:`specs_of` reads a built module.
torch is imported inside the functions that need it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from flowcond.errors import FileFormatError

if TYPE_CHECKING:
    import torch

#: bytes per element of the safetensors dtypes
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class TensorSpec(NamedTuple):
    """What a safetensors header says of one tensor: dtype (``"F32"``...) and shape."""

    dtype: str
    shape: tuple[int, ...]


def check_layout(
    path: str | os.PathLike,
    specs: Mapping[str, TensorSpec],
    expected: Mapping[str, TensorSpec],
    against: str = "the config",
) -> None:
    """The tensors a file holds (``specs`` from :func:`read_layout`) are exactly the ``expected``
    names, dtypes and shapes (what the header's config implies); FileFormatError naming the first
    difference. Call it before building a model from the header: a header that promises a model
    larger than its tensors is refused before anything is allocated.
    """
    missing = [k for k in expected if k not in specs]
    extra = [k for k in specs if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            parts.append(f"missing tensor {_short(missing[0])}{more}")
        if extra:
            more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
            parts.append(f"unexpected tensor {_short(extra[0])}{more}")
        raise FileFormatError(path, f"weights do not match {against}: {'; '.join(parts)}")
    for name, want in expected.items():
        got = specs[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise FileFormatError(
                path,
                f"weights do not match {against}: tensor {_short(name)} is {got.dtype} "
                f"{list(got.shape)}, {against} needs {want.dtype} {list(want.shape)}",
            )


def specs_of(module: torch.nn.Module, prefix: str = "") -> dict[str, TensorSpec]:
    """The tensor specs of ``module``'s state dict (works on the ``meta`` device)."""
    return {
        prefix + k: TensorSpec(dtype_name(v.dtype), tuple(v.shape)) for k, v in module.state_dict().items()
    }


def meta_specs(build: Callable[[], torch.nn.Module]) -> dict[str, TensorSpec]:
    """The tensor specs of the module ``build()`` returns, built on the ``meta`` device: shapes
    only, nothing allocated, however large the sizes a header asks for. Weight initialization is
    skipped (in-place ops on meta tensors do nothing; some would import torch._dynamo) and the
    global random state is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]), torch.device("meta"), _skip_meta_init():
        return specs_of(build())


_SHAPE_OPS = frozenset(
    {"resize_", "resize_as_", "set_", "as_strided_", "squeeze_", "unsqueeze_", "t_", "transpose_"}
    | {"swapdims_", "swapaxes_"}
)


def _skip_meta_init() -> Any:
    """A torch function mode under which in-place ops on meta tensors (``normal_``,
    ``kaiming_uniform_``...) return the tensor as it is, except those that change its shape."""
    from torch.overrides import TorchFunctionMode

    class SkipMetaInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name.endswith("_") and not name.startswith("_") and name not in _SHAPE_OPS:
                first = _first_tensor(args, kwargs)
                if first is not None and first.is_meta:
                    return first
            return func(*args, **kwargs)

    return SkipMetaInit()


def _first_tensor(args: tuple, kwargs: dict) -> Any:
    import torch

    return next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.float32`` -> ``"F32"``)."""
    import torch

    names = {
        torch.bool: "BOOL",
        torch.uint8: "U8",
        torch.int8: "I8",
        torch.int16: "I16",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int32: "I32",
        torch.float32: "F32",
        torch.int64: "I64",
        torch.float64: "F64",
    }
    return names.get(dtype, str(dtype))


def _short(value: Any, n: int = 60) -> str:
    """``repr`` of a value from a file, cut to ``n`` characters (headers may hold anything)."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."
