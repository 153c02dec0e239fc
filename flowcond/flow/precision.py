"""bf16 where it is safe for a flow: the coupling networks, nothing else.

A flow's log-likelihood is a sum of log-determinants and a prior log-density over thousands of
dimensions; in bfloat16 (8 bits of mantissa) that sum, and the affine maps that must invert
exactly, lose far more than training can afford. The coupling networks (the 3x3/1x1/3x3 convolution
stacks that hold almost all of a Glow's compute) only compute a shift and a scale from the half
of the channels that passes through unchanged, so they can run in bf16 without breaking the
flow's invertibility: the same bf16 network output is used in both directions.

So the backbone reads an enclosing ``torch.autocast`` (the training loop's, or a user's) and
applies it to the coupling networks alone (:func:`flowcond.flow.fast_ops.coupling_net`, whose
output is cast back to float32); ActNorm, the invertible 1x1 convolutions, the coupling's affine
arithmetic, every log-determinant, the prior log-density and the bits/dim reduction run in
float32 with autocast disabled. With ``fast=False`` (normflows' own code) the whole flow runs in
float32 under autocast.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("fp32", "bf16")


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype of the ``torch.autocast`` active for ``device_type`` here, ``None`` if none is."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4: per-device functions
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def full_precision(device_type: str) -> AbstractContextManager:
    """A block in which autocast is off for ``device_type`` (the flow's own arithmetic)."""
    return torch.autocast(device_type, enabled=False)


def training_autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast of a training step: bf16 on ``device`` for ``precision="bf16"``, else none."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
