"""Shared input handling: tensors or array-likes in, float64/int numpy arrays out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu").numpy()
    return np.asarray(x, dtype=dtype)
