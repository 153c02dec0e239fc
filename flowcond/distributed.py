"""Devices and torch.distributed: one small API every computing command and trainer shares.

Devices:

* :func:`check_device_spec` (torch-free): ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, else a
  one-line :class:`ConfigError` (the CLI's ``--device`` option uses it);
* :func:`resolve_device`: the spec as a ``torch.device`` — ``auto`` is ``cuda`` when a GPU is
  available, else ``cpu``; ``cuda`` where none is (or ``cuda:N`` past the last GPU) is a one-line
  :class:`ConfigError`. Under torchrun, ``auto`` and ``cuda`` mean this process's GPU,
  ``cuda:LOCAL_RANK``.

Processes (``torchrun --nproc-per-node N -m flowcond ...``):

* :func:`launched` (torch-free): whether torchrun started this process (``WORLD_SIZE`` > 1 in
  the environment, with ``RANK`` and ``LOCAL_RANK``);
* :func:`init` joins the process group from torchrun's environment (``gloo`` for CPU devices,
  ``nccl`` for CUDA, chosen from the device) and returns a :class:`World`; one process without
  torchrun gets a world of size 1 and no process group. :func:`session` is the same as a context
  manager that tears the group down at the end (:func:`teardown`);
* :func:`world` (the current world), :func:`is_main` (rank 0: the only process that writes files
  and draws progress bars), :func:`barrier`, :func:`all_reduce_sum` / :func:`all_reduce_mean` of
  metrics, :func:`broadcast_module` (rank 0's parameters and buffers to every rank);
* :func:`sharded_loader`: a ``DataLoader`` over this rank's share of a dataset, through a seeded
  ``DistributedSampler`` (call ``loader.sampler.set_epoch(epoch)`` each epoch when shuffling).

Every function works unchanged in one process (world size 1): collectives are then no-ops.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcond.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str) -> str:
    """``spec`` unchanged when it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else a one-line
    :class:`ConfigError` (torch-free: the CLI checks ``--device`` before importing torch)."""
    if not isinstance(spec, str) or not _DEVICE_RE.match(spec.strip().lower()):
        raise ConfigError(f"--device {spec!r}: expected {DEVICE_CHOICES}")
    return spec.strip().lower()


def resolve_device(spec: str = "auto") -> torch.device:
    """The ``torch.device`` of ``spec`` (see the module docstring); a one-line
    :class:`ConfigError` where CUDA is asked for and not available, or ``cuda:N`` is out of range."""
    import torch

    spec = check_device_spec(spec)
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise ConfigError(
            f"--device {spec}: CUDA is not available here (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda or 'none'}); use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    index = int(spec.split(":")[1]) if ":" in spec else (local_rank() if launched() else None)
    if index is None:
        return torch.device("cuda")
    if index >= count:
        raise ConfigError(f"--device {spec}: cuda:{index} does not exist, this machine has {count} GPU(s)")
    return torch.device("cuda", index)


# ------------------------------------------------------------------ processes
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${name}={value!r}: expected an integer (set by torchrun)") from None


def launched() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 without torchrun)."""
    return _env_int("LOCAL_RANK", 0)


@dataclass(frozen=True)
class World:
    """The processes of this run: ``rank`` of ``size``, on ``device``, over ``backend``
    (``None`` for a single process without a process group)."""

    rank: int
    size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and draws progress bars."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` (every ``size``-th row from ``rank``, as
        ``DistributedSampler`` interleaves a dataset)."""
        return slice(self.rank, n, self.size)


_world: World | None = None
_owns_group = False  # whether init() created the process group (teardown destroys only that one)


def init(device: str = "auto") -> World:
    """Join torchrun's process group (once; later calls return the same :class:`World`).

    ``device`` as :func:`resolve_device`; the backend follows it: ``nccl`` for CUDA (and
    ``torch.cuda.set_device``), ``gloo`` for CPU. Without torchrun: world size 1, no group.
    """
    global _world, _owns_group
    import torch
    import torch.distributed as dist

    dev = resolve_device(device)
    if _world is not None:
        if _world.device.type != dev.type:
            raise ConfigError(f"--device {device}: this process already runs on {_world.device}")
        return _world
    if dist.is_available() and dist.is_initialized():  # a caller's own group: use it as it is
        backend = dist.get_backend()
        _world = World(dist.get_rank(), dist.get_world_size(), local_rank(), dev, backend)
        return _world
    if not launched():
        _world = World(0, 1, 0, dev, None)
        return _world
    if not dist.is_available():
        raise ConfigError("torchrun started several processes but this torch has no torch.distributed")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend)
    _owns_group = True
    _world = World(dist.get_rank(), dist.get_world_size(), local_rank(), dev, backend)
    return _world


def world() -> World:
    """The current :class:`World`; when nothing joined one yet: under torchrun :func:`init` with
    ``auto``, in one process a world of size 1 on ``auto`` (not kept: a later :func:`init` may
    choose another device)."""
    if _world is not None:
        return _world
    if not launched():
        return World(0, 1, 0, resolve_device("auto"), None)
    return init("auto")


def teardown() -> None:
    """Leave the process group (if :func:`init` created it; a caller's own group is left alone)
    and forget the world."""
    global _world, _owns_group
    import torch.distributed as dist

    if _owns_group and dist.is_initialized():
        dist.destroy_process_group()
    _world, _owns_group = None, False


@contextmanager
def session(device: str = "auto") -> Iterator[World]:
    """:func:`init` for a block, :func:`teardown` after it (also on errors)."""
    joined = _world is None
    try:
        yield init(device)
    finally:
        if joined:
            teardown()


def _grouped() -> bool:
    return _world is not None and _world.backend is not None and _world.size > 1


def is_main() -> bool:
    """Whether this is rank 0 (always true in one process; outside :func:`session`, torchrun's
    ``RANK``)."""
    return _world.is_main if _world is not None else _env_int("RANK", 0) == 0


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if _grouped():
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: Mapping[str, float]) -> dict[str, float]:
    """The sum of each named number over all ranks (float64; the same result on every rank)."""
    if not _grouped():
        return {k: float(v) for k, v in values.items()}
    import torch
    import torch.distributed as dist

    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def all_reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """The mean of each named number over all ranks (see :func:`all_reduce_sum`)."""
    n = _world.size if _grouped() else 1
    return {k: v / n for k, v in all_reduce_sum(values).items()}


def global_mean(local_sum: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Of a rank's ``local_sum`` over its ``n`` rows (``size`` ranks): a tensor whose value is the
    mean over every rank's rows and whose gradient, once DDP has averaged it over the ranks, is
    that of this global mean (ranks may hold different numbers of rows)."""
    import torch

    count = local_sum.new_tensor(float(n), dtype=torch.float64)
    totals = all_reduce_tensor(torch.stack([local_sum.detach().double(), count]))
    share = local_sum * (size / float(totals[1]))  # DDP divides the summed gradients by ``size``
    return share + (totals[0] / totals[1] - share.detach()).to(share.dtype)


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all ranks (a new tensor; ``t`` itself in one process)."""
    if not _grouped():
        return t
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank."""
    if not _grouped():
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def _collective_device() -> torch.device:
    import torch

    return _world.device if _world is not None and _world.backend == "nccl" else torch.device("cpu")


def sharded_loader(
    dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = False, **options: Any
) -> DataLoader:
    """A ``DataLoader`` over this rank's share of ``dataset`` (a ``DistributedSampler`` seeded
    with ``seed``; rank ``r`` of ``n`` gets rows ``r, r + n, ...`` of the (shuffled) order, the last
    rows repeated so every rank has as many). ``options`` go to the ``DataLoader``. One process:
    every row, in order (or shuffled with ``seed``)."""
    from torch.utils.data import DataLoader, DistributedSampler

    w = world()
    sampler = DistributedSampler(dataset, num_replicas=w.size, rank=w.rank, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **options)
