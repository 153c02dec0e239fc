"""The training loss of ``train-backbone``: mean bits/dim of a batch, on one process or many.

:class:`TrainingLoss` is what :func:`flowcond.flow.train.train_step` calls as ``loss_fn(x,
noise)``. It adds, around :meth:`Backbone.bits_per_dim`:

* **precision**: ``bf16`` runs the step under ``torch.autocast``, which the backbone confines to
  its coupling networks (:mod:`flowcond.flow.precision`);
* **torchrun**: in a world of several processes (:mod:`flowcond.distributed`) the model is wrapped
  in ``DistributedDataParallel`` and each rank passes its share of the global batch. The loss each
  rank backpropagates is its share of the *global* mean (``sum of its images' bits/dim x world
  size / global batch size``), so DDP's gradient average is exactly the gradient of the global
  mean, whatever the shares' sizes; the value returned (checked for finiteness, reported) is the
  global mean itself, the same on every rank, so every rank skips or steps together;
* **compile**: ``torch.compile`` of the whole loss, eager from the first failure on (reported
  once).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from flowcond import distributed
from flowcond.distributed import World
from flowcond.flow.backbone import Backbone
from flowcond.flow.precision import training_autocast


class _BitsPerDim(nn.Module):
    """Per-image bits/dim as a module's forward (what DDP wraps)."""

    def __init__(self, model: Backbone) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.model.bits_per_dim(x, noise)


class TrainingLoss:
    """``loss(x, noise)``: the mean bits/dim of the global batch, differentiable (see module doc).

    ``world``: the processes (``None`` or size 1: this process alone, no DDP). ``precision``:
    ``fp32`` or ``bf16``. ``compile``: ``torch.compile`` it (:attr:`compiled` says whether that
    held; :attr:`failed` is the reason when it did not).
    """

    def __init__(
        self, model: Backbone, precision: str = "fp32", compile: bool = False, world: World | None = None
    ) -> None:
        self.model = model
        self.precision = precision
        self.world = world if world is not None and world.size > 1 else None
        self.failed: str | None = None
        self._compile = compile
        module: nn.Module = _BitsPerDim(model)
        if self.world is not None:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [model.device] if model.device.type == "cuda" else None
            # ActNorm's data-dependent init is already the same on every rank (flow/train.py);
            # DDP broadcasts rank 0's parameters and buffers once more here, then never again
            module = DistributedDataParallel(module, device_ids=device_ids, **_no_buffer_sync())
        self.net = module
        self._fn = self._eager
        if compile:
            if model._fast is not None:
                model._fast.fuse_training = False  # inductor fuses by itself
            try:
                self._fn = torch.compile(self._eager)
            except Exception as e:  # noqa: BLE001 - any failure: fall back
                self._fail(e)

    @property
    def compiled(self) -> bool:
        """Whether the loss runs compiled (asked for, and compiling has not failed)."""
        return self._compile and self.failed is None

    def _eager(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with training_autocast(x.device, self.precision):
            return self.net(x, noise)

    def _fail(self, e: Exception) -> None:
        self.failed = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        self._fn = self._eager
        if self.model._fast is not None:
            self.model._fast.fuse_training = True
        warnings.warn(
            f"torch.compile failed, training continues without it ({self.failed})",
            RuntimeWarning,
            stacklevel=3,
        )

    def per_image(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Bits/dim of each image of this rank's share (compiled if asked)."""
        if self._fn is not self._eager:
            try:
                return self._fn(x, noise)
            except Exception as e:  # noqa: BLE001 - any failure: fall back
                self._fail(e)
        return self._eager(x, noise)

    def __call__(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        bpd = self.per_image(x, noise)
        if self.world is None:
            return bpd.mean()
        return distributed.global_mean(bpd.sum(), len(x), self.world.size)


def _no_buffer_sync() -> dict[str, bool]:
    """DDP's option for "buffers synced at construction only" (its name changed in torch 2.10)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    new = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if new else {"broadcast_buffers": False}


def CompiledLoss(model: Backbone) -> TrainingLoss:  # noqa: N802 - the name benchmarks import
    """The compiled loss of ``train-backbone --compile`` on one process (``TrainingLoss``)."""
    return TrainingLoss(model, compile=True)
