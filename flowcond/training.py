"""The pieces every trainer uses (backbone, attach, CGlow, evaluator), as plain functions.

Each trainer is its own loop that reads top to bottom; what they share lives here:

* :func:`torch_threads`: run the loop with a chosen number of torch threads;
* :func:`optimizer_step`: backpropagate and step, or skip (and change nothing) when the loss or
  the gradient norm is not finite; :class:`SkipBudget` counts the skips and stops a diverging run
  with the trainer's own message;
* :func:`progress_bar` (tqdm, off with ``progress=False``) and :class:`Stopwatch` (training
  seconds, resumable, with pauses for evaluation);
* :func:`checkpoint_path` and :func:`refuse_changes`, for checkpoints written and read with
  :mod:`flowcond.io.checkpoint`; :func:`dataset_binding`, what a checkpoint records of its data;
  :func:`refuse_shorter`, for a resumed run asked to stop before where its checkpoint is;
* :func:`check_labels`: a dataset's labels against its schema (one-line :class:`ConfigError`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowcond.datasets import ImageDataset, LabelField
from flowcond.errors import ConfigError, FlowcondError
from flowcond.io.outputs import checkpoint_path  # noqa: F401  (part of the trainers' toolkit)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (``None``: leave torch's setting alone).

    Small models on a busy 2-core machine run many times faster on one thread than on two.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def optimizer_step(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    clip: float | None = None,
) -> bool:
    """Backpropagate ``loss`` into ``params``, clip their gradient norm to ``clip`` (``None``: no
    clipping), step ``opt``; returns whether it stepped.

    Returns ``False`` and updates nothing (weights and optimizer state untouched, gradients
    cleared) when the loss or the gradient norm is not finite.
    """
    if not torch.isfinite(loss):
        return False
    params = list(params)
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    norm = torch.nn.utils.clip_grad_norm_(params, math.inf if clip is None else clip)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


class SkipBudget:
    """Counts skipped (non-finite) steps; more than ``limit`` raise ``FlowcondError(message(n))``."""

    def __init__(self, limit: int, message: Callable[[int], str], skipped: int = 0) -> None:
        self.limit = limit
        self.message = message
        self.skipped = skipped

    def skip(self) -> None:
        """Count one skipped step; raise when the budget is spent."""
        self.skipped += 1
        if self.skipped > self.limit:
            raise FlowcondError(self.message(self.skipped))


def progress_bar(total: int, desc: str, progress: bool = True, initial: int = 0, **options: Any) -> tqdm:
    """A tqdm bar of ``total`` steps (drawn only when ``progress``); ``options`` go to tqdm."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not progress, **options)


class Stopwatch:
    """Seconds spent training: ``start``/``stop`` around the loop, ``paused()`` for evaluation.

    Starts from ``seconds`` (those of a resumed checkpoint).
    """

    def __init__(self, seconds: float = 0.0) -> None:
        self._total = seconds
        self._since: float | None = None

    def start(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self) -> float:
        """Stop counting; returns :attr:`seconds`."""
        if self._since is not None:
            self._total += time.perf_counter() - self._since
            self._since = None
        return self._total

    @property
    def seconds(self) -> float:
        """Seconds counted so far, including the running span."""
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self._total + running

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Do not count the block (evaluation, callbacks)."""
        was_running = self._since is not None
        self.stop()
        try:
            yield
        finally:
            if was_running:
                self.start()


def changed_fields(
    old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] | None = None
) -> list[str]:
    """The ``keys`` (default: all of ``old``) whose value in ``old`` differs from ``new``'s.

    A key ``old`` does not have (a checkpoint written before it existed) is not a change.
    """
    return [k for k in (old if keys is None else keys) if k in old and old[k] != new.get(k)]


def refuse_changes(
    path: str | Path,
    what: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    keys: Iterable[str] | None = None,
) -> None:
    """Raise a one-line :class:`ConfigError` naming the fields of ``what`` in which a checkpoint
    (``old``) and this run (``new``) differ; nothing when they agree (see :func:`changed_fields`)."""
    changed = changed_fields(old, new, keys)
    if changed:
        was = ", ".join(f"{k}={old[k]!r}" for k in changed)
        now = ", ".join(f"{k}={new.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{path}: the checkpoint was written for {what} {was} (now {now}); resume with the "
            f"same options or choose another --out"
        )


def refuse_shorter(path: str | Path, option: str, asked: int | None, done: int, unit: str) -> None:
    """A one-line :class:`ConfigError` when a resumed run asks for ``asked`` (``--option``) but its
    checkpoint has already run ``done`` ``unit``: the run could not be what the option says."""
    if asked is not None and asked < done:
        raise ConfigError(
            f"{path}: the checkpoint has already run {done} {unit}, more than {option} {asked}; "
            f"resume with {option} {done} or more, or choose another --out"
        )


def labels_fingerprint(dataset: ImageDataset) -> str:
    """A short content hash of every label tensor of ``dataset``."""
    from flowcond.io.safefile import content_hash

    return content_hash(dict(dataset.labels))[:16]


def dataset_binding(dataset: ImageDataset) -> dict[str, Any]:
    """What a checkpoint records of the data it trains on, compared on resume: name, split, size,
    a fingerprint of the labels and the rest of the spec (less ``root``: data may move)."""
    import json

    spec = {k: v for k, v in dataset.spec.items() if k != "root"}
    binding = {
        "name": spec.pop("name", None),
        "split": spec.pop("split", None),
        "size": len(dataset),
        "labels": labels_fingerprint(dataset),
        "spec": spec,
    }
    return json.loads(json.dumps(binding, default=str))  # as it reads back from a header


def label_problem(values: torch.Tensor, field: LabelField, rows: int) -> str | None:
    """What is wrong with ``rows`` labels ``values`` of ``field`` (``None``: nothing).

    Categorical: integer class indices ``(rows,)`` in ``0 .. size - 1``; binary: ``(rows, size)``
    in {0, 1}; continuous: ``(rows, size)`` (any value: NaN may mean "not measured").
    """
    want = (rows,) if field.kind == "categorical" else (rows, field.size)
    if not torch.is_tensor(values):
        return f"are a {type(values).__name__}, not a tensor"
    if tuple(values.shape) != want:
        return f"have shape {tuple(values.shape)}, expected {want}"
    if values.is_complex():
        return f"are {values.dtype}"
    if field.kind == "categorical":
        if values.is_floating_point() or values.dtype == torch.bool:
            return f"are {values.dtype}, expected integer class indices"
        if rows and (int(values.min()) < 0 or int(values.max()) >= field.size):
            return (
                f"have values {int(values.min())}..{int(values.max())} outside the "
                f"{field.size} classes 0..{field.size - 1}"
            )
    elif field.kind == "binary" and not ((values == 0) | (values == 1)).all():
        return "have values other than 0 and 1"
    return None


def check_labels(dataset: ImageDataset) -> None:
    """A one-line :class:`ConfigError` naming the dataset and field of labels that do not fit the
    dataset's label schema (see :func:`label_problem`)."""
    for name, field in dataset.schema.items():
        values = dataset.labels.get(name)
        problem = "are missing" if values is None else label_problem(values, field, len(dataset))
        if problem:
            raise ConfigError(
                f"dataset {dataset.spec.get('name')!r} ({dataset.spec.get('split')} split): labels "
                f"of field {name!r} ({field.kind}, size {field.size}) {problem}"
            )


def warmup_cosine(total: int, warmup_frac: float = 0.15) -> Callable[[int], float]:
    """Learning-rate factor: linear warmup over ``warmup_frac`` of the steps, then cosine to 0."""
    warmup = max(1, round(warmup_frac * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor
