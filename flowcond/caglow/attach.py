"""Stage 2 of CAGlow: attach condition heads to a frozen backbone (paper Eq. 10-15).

Reads top to bottom: load the frozen backbone, resolve the condition plugins against the dataset,
encode the dataset once into the latent cache, then alternate

* a supervision-block step: ``L_Di`` (Eq. 11, real ``F(x)`` vs fake ``E(c, eps)``), ``L_C`` on real
  latents (Eq. 12) and the code decoders' ``L_De`` on generated latents (Eq. 13);
* an encoder step: ``L_E`` (Eq. 10, non-saturating), ``L_C`` on generated latents, ``L_De``, and the
  pairwise feature matching ``L_FM`` (Eq. 14) between each real latent and a latent generated with
  the same conditions;

weighted by ``lambdas`` (Eq. 15); the losses are in :mod:`flowcond.caglow.losses`. Batches come
from the plausible training latents only (finite, norm at most 10x the median): those the backbone
explodes on are left out and listed in the summary. Checkpoints
every ``checkpoint_every`` steps hold the weights, both optimizers and the random generator, so
``resume`` continues exactly. A checkpoint records what it trains (the backbone hash, the plugins
with their versions, options and state, the data and the attach options); resuming it with any of
these changed is refused with a one-line error naming the fields, except ``steps``, which may be
raised to train on (the summary lists the segments run).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from flowcond import registry
from flowcond.caglow.boundary import CHECK_HEAD, check_first_batch
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.heads import Heads, plugin_entries
from flowcond.caglow.image_check import check_metrics, train_image_check
from flowcond.caglow.label_table import LabelTable, note
from flowcond.caglow.latents import LatentCache
from flowcond.caglow.losses import (
    encoder_losses,
    loss_weights,
    noise_losses,
    supervision_losses,
    weighted_sum,
)
from flowcond.caglow.metrics import EXPLODING_FACTOR, RULE, heads_metrics, left_out_report, plausible_norms
from flowcond.caglow.shards import LatentRows
from flowcond.conditions import ConditionKind
from flowcond.datasets import ImageDataset, load_dataset
from flowcond.errors import ConfigError, FileFormatError, FlowcondError
from flowcond.flow.backbone import Backbone
from flowcond.io.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from flowcond.io.outputs import check_locations
from flowcond.training import (
    SkipBudget,
    Stopwatch,
    check_labels,
    checkpoint_path,
    dataset_binding,
    optimizer_step,
    progress_bar,
    refuse_changes,
    refuse_shorter,
    torch_threads,
)

__all__ = ["AttachConfig", "attach", "build_kinds", "checkpoint_path", "heads_metrics"]

CHECKPOINT_KIND = "heads-checkpoint"
#: attach options a resumed run may change: the number of steps (raised), checkpointing, threads
#: and where data and cache live; ``dataset`` is checked as the data itself (dataset_binding).
#: Every other one must be the checkpoint's, as must the backbone, plugins and data.
MAY_CHANGE_ON_RESUME = ("steps", "checkpoint_every", "threads", "root", "download", "cache_dir", "dataset")
RESUME_KEYS = tuple(k for k in AttachConfig.model_fields if k not in MAY_CHANGE_ON_RESUME)
#: real test latents scored by heads_metrics (the first ones): bounded memory on large data
METRIC_ROWS = 2000
#: what every checkpoint records of what it trains (and their JSON types), checked on resume
BINDINGS = {"backbone_hash": str, "plugins": dict, "data": dict, "attach_config": dict}


def build_kinds(config: AttachConfig, dataset: Any) -> dict:
    selected = set(config.plugins) | {p.rpartition(":")[2] for p in config.plugins}  # flowcond:ids -> ids
    unknown = set(config.plugin_options) - selected
    if unknown:
        raise ConfigError(f"options given for plugin(s) not selected: {', '.join(sorted(unknown))}")
    if len(set(config.plugins)) != len(config.plugins):
        raise ConfigError(f"a plugin is selected twice: {config.plugins}")
    kinds = {}
    for name in config.plugins:
        reg = registry.find_condition_kind(name)  # a plain or a qualified name (provider:kind)
        if reg.name in kinds:
            raise ConfigError(f"condition kind {reg.name!r} is selected twice: {config.plugins}")
        try:
            options = config.plugin_options.get(name, config.plugin_options.get(reg.name))
            kinds[reg.name] = reg.obj.from_dataset(options, dataset)
        except FlowcondError:
            raise
        except Exception as e:
            raise ConfigError(
                f"condition plugin {name!r} failed on dataset "
                f"{dataset.spec.get('name')!r}: {type(e).__name__}: {e}"
            ) from e
    return kinds


def attach(
    backbone: Backbone | str | os.PathLike,
    config: AttachConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> tuple[Heads, dict[str, Any]]:
    """Train heads for ``config.plugins`` on a frozen backbone; write ``out``; return (heads, summary).

    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``): where the backbone encodes the dataset
    (and later decodes); ``None``: a path is loaded on ``auto``, a ``Backbone`` stays where it is.
    The heads, small networks, train on the CPU.
    """
    from flowcond.distributed import resolve_device

    t_start = time.perf_counter()
    backbone_path = None
    if not isinstance(backbone, Backbone):
        backbone_path = str(backbone)
        check_locations({"out": out, "checkpoint": checkpoint_path(out)}, {"backbone": backbone_path})
        backbone = Backbone.load(backbone, map_location=resolve_device(device or "auto"))
    elif device is not None:
        backbone.to(resolve_device(device))
    backbone.freeze()
    train, test = _datasets(backbone, config)
    kinds = build_kinds(config, train)
    weights = loss_weights(config.lambdas, kinds)  # refuses a --lambda C.NAME that fits no kind

    # the latent cache: the real samples p*(z) = F(x), computed once per backbone and dataset
    t0 = time.perf_counter()
    cache = LatentCache.build(backbone, train, config.cache_dir, progress=progress)
    test_cache = LatentCache.build(backbone, test, config.cache_dir, progress=progress)
    encode_seconds = time.perf_counter() - t0
    z_all = cache.rows()  # every shard checked; batches of latents are then read from disk
    labels_all = z_all.labels
    train_rows, left_out = _plausible_rows(z_all, train)
    test_rows = test_cache.rows()
    z_test = test_rows.head(METRIC_ROWS)
    labels_test = {k: v[: len(z_test)] for k, v in test_rows.labels.items()}
    test_rows.close()

    torch.manual_seed(config.seed)
    heads = Heads(backbone, kinds, config)
    heads.label_table = LabelTable.from_labels(kinds, labels_all)  # the joint prior of sampling
    check_first_batch(heads, z_all.head(CHECK_HEAD), labels_all)  # plugins' shapes, dtypes and losses, once
    enc_params = list(heads.encoder.parameters()) + list(heads.inputs.parameters())
    opt_e = torch.optim.Adam(enc_params, lr=config.lr, betas=(config.beta1, 0.999))
    sup_params = list(heads.supervision.parameters())
    opt_d = torch.optim.Adam(sup_params, lr=config.lr, betas=(config.beta1, 0.999))
    g = torch.Generator().manual_seed(config.seed)
    parts: dict[str, Any] = {
        "modules": {"heads": heads},
        "optimizers": {"optim_e": opt_e, "optim_d": opt_d},
        "generators": {"rng": g},
    }
    ckpt = checkpoint_path(out)
    bb_hash = backbone.content_hash
    binding = {"backbone_hash": bb_hash, "plugins": plugin_binding(kinds), "data": dataset_binding(train)}
    state: dict[str, Any] = {"step": 0, "skipped": 0, "train_seconds": 0.0, "segments": []}
    if resume and ckpt.exists():
        state = _resume(ckpt, config, binding, parts, ("step", "skipped", "train_seconds"))
    segment = {"from": state["step"], "to": state["step"]}  # the steps this run trains
    state["segments"].append(segment)
    budget = SkipBudget(
        max(10, config.steps // 10),
        lambda n: f"attach diverged: {n} non-finite steps; lower --lr; the last good checkpoint is {ckpt}",
        skipped=state["skipped"],
    )

    lam = config.lambdas
    heads.train()
    bar = progress_bar(config.steps, "attach", progress, initial=state["step"])
    clock = Stopwatch(state["train_seconds"])
    clock.start()
    with torch_threads(config.threads):
        for step in range(state["step"], config.steps):
            bar.update()
            z_real, targets = _batch(z_all, train_rows, labels_all, kinds, config.batch_size, g)
            c = heads.condition_input(targets)
            eps, eps_res = heads.noise(config.batch_size, 1.0, g)
            fake = heads.generate_from_input(c, eps, eps_res)
            ld = supervision_losses(heads, z_real, fake.detach(), targets, g)
            if not optimizer_step(weighted_sum(ld, lam), opt_d, sup_params):
                budget.skip()
                continue
            le = encoder_losses(heads, z_real, fake, targets)  # against the updated block
            le.update(noise_losses(heads, c, fake, (eps, eps_res), g))
            if not optimizer_step(weighted_sum(le, lam), opt_e, enc_params):
                budget.skip()
                continue
            state["step"] = segment["to"] = step + 1
            if step % 25 == 0:
                bar.set_postfix(
                    Di=f"{ld['Di'].item():.3f}",
                    E=f"{le['E'].item():.3f}",
                    C=f"{ld['C'].item():.3f}/{le['C'].item():.3f}",
                    De=f"{le['De'].item():.3f}",
                    FM=f"{le['FM'].item():.3f}",
                )
            if state["step"] % config.checkpoint_every == 0 or state["step"] == config.steps:
                state["skipped"], state["train_seconds"] = budget.skipped, clock.seconds
                extra = {"attach_config": config.model_dump(), **binding}
                save_checkpoint(ckpt, CHECKPOINT_KIND, {**state, **extra}, **parts)
        bar.close()
        state["skipped"], state["train_seconds"] = budget.skipped, clock.stop()
        image_check = _train_image_check(heads, train, test, train_rows, g, progress)
    z_all.close()

    heads.eval()
    metrics = heads_metrics(heads, z_test, labels_test, seed=config.seed + 1)
    summary = {
        "dataset": train.spec,
        "steps": state["step"],
        "segments": [s for s in state["segments"] if s["to"] > s["from"]],
        "skipped_steps": state["skipped"],
        "training_latents": left_out,
        "encode_seconds": round(encode_seconds, 2),
        "train_seconds": round(state["train_seconds"], 2),
        "total_seconds": round(time.perf_counter() - t_start, 2),
        "metrics": metrics,
    }
    if image_check is not None:
        summary["image_check"] = image_check
    heads.save(
        out,
        backbone_path=_relative_backbone_path(backbone_path, out),
        summary=summary,
        loss_weights=weights,
    )
    return heads, summary


def _train_image_check(
    heads: Heads,
    train: ImageDataset,
    test: ImageDataset,
    rows: torch.Tensor,
    g: torch.Generator,
    progress: bool,
) -> dict[str, Any] | None:
    """Train the heads' image check (``--image-check STEPS``) on the training images at ``rows``;
    its steps, seconds and metrics on the first :data:`METRIC_ROWS` test images. None when the
    heads have none."""
    if heads.image_check is None:
        return None
    t0 = time.perf_counter()
    steps = heads.config.image_check
    train_image_check(
        heads.image_check, heads.kinds, train, rows, steps, heads.config.batch_size, g, progress
    )
    seconds = time.perf_counter() - t0
    n = min(len(test), METRIC_ROWS)
    labels = {k: v[:n] for k, v in test.labels.items()}
    test_metrics = check_metrics(heads.image_check, heads.kinds, test.images_at(slice(0, n)).float(), labels)
    return {"steps": steps, "seconds": round(seconds, 2), "test": test_metrics}


def _datasets(backbone: Backbone, config: AttachConfig) -> tuple[ImageDataset, ImageDataset]:
    """Train and test split of the dataset to attach on (default: the backbone's)."""
    name = config.dataset or (backbone.metadata.get("dataset") or {}).get("name")
    if not name:
        raise ConfigError("the backbone file names no training dataset: pass --dataset")
    train = load_dataset(name, "train", root=config.root, download=config.download)
    test = load_dataset(name, "test", root=config.root, download=config.download)
    check_labels(train)  # a one-line error, not a traceback mid-training
    check_labels(test)
    if tuple(train.image_shape) != backbone.image_shape:
        raise ConfigError(
            f"dataset {name!r} has images {tuple(train.image_shape)}, the backbone "
            f"expects {backbone.image_shape}"
        )
    return train, test


def plugin_binding(kinds: dict[str, ConditionKind]) -> dict[str, Any]:
    """What a checkpoint records of its plugins (as in the heads file): their order, and for each
    the registering plugin, its version, options and state."""
    out: dict[str, Any] = {"order": list(kinds)}
    for entry in plugin_entries(kinds):
        for key in ("plugin", "version", "options", "state"):
            out[f"{entry['name']}.{key}"] = entry[key]
    return json.loads(json.dumps(out, default=str))  # as it reads back from the header


def _resume(
    ckpt: Path, config: AttachConfig, binding: dict[str, Any], parts: dict[str, Any], keys: tuple[str, ...]
) -> dict[str, Any]:
    """Restore heads, optimizers and generator from ``ckpt``; return its ``keys`` of the state.

    Refuses (one-line :class:`ConfigError`) a checkpoint of another backbone, other plugins, other
    data or other options, one that records none of these (written by an older flowcond), and
    ``steps`` below the step the checkpoint is at.
    """
    old = checkpoint_state(ckpt, CHECKPOINT_KIND)
    missing = [k for k, t in BINDINGS.items() if not isinstance(old.get(k), t)]
    if missing:
        raise ConfigError(
            f"{ckpt}: the checkpoint does not record its {', '.join(missing)} (written by an older "
            f"flowcond), so what it trained cannot be checked; delete it to start over, or choose "
            f"another --out"
        )
    old_hash, new_hash = old["backbone_hash"][:16], binding["backbone_hash"][:16]
    refuse_changes(ckpt, "backbone", {"hash": old_hash}, {"hash": new_hash})
    refuse_changes(ckpt, "attach options", old["attach_config"], config.model_dump(), RESUME_KEYS)
    refuse_changes(ckpt, "plugins", old["plugins"], binding["plugins"])
    refuse_changes(ckpt, "dataset", old["data"], binding["data"])
    if isinstance(old.get("step"), int):
        refuse_shorter(ckpt, "--steps", config.steps, old["step"], "steps")
    header = load_checkpoint(ckpt, CHECKPOINT_KIND, **parts, require=keys)
    state = {k: header[k] for k in keys}
    if not (isinstance(state["step"], int) and isinstance(state["skipped"], int)):
        raise FileFormatError(ckpt, "invalid checkpoint: step and skipped must be integers")
    segments = header.get("segments")
    valid = isinstance(segments, list) and all(
        isinstance(s, dict) and {"from", "to"} <= s.keys() for s in segments
    )
    state["segments"] = segments if valid else [{"from": 0, "to": state["step"]}]
    return state


def _plausible_rows(z_all: LatentRows, train: ImageDataset) -> tuple[torch.Tensor, dict[str, Any]]:
    """The rows attach trains on: the plausible latents (:func:`plausible_norms`: finite, norm at
    most 10x the median). A flow can explode on a few images (norms of 1e8 where the others have
    15), and one such latent in a batch wrecks the heads' training; the rows left out are said on
    stderr and recorded in the summary. A ConfigError when none is left."""
    keep = plausible_norms(z_all.norms())
    report = left_out_report(keep, "used")
    where = f"dataset {train.spec.get('name')!r} ({train.spec.get('split')})"
    if not keep.any():
        raise ConfigError(f"the backbone encodes no image of {where} to a plausible latent ({RULE})")
    if report["left_out"]:
        first = ", ".join(map(str, report["left_out_rows"]))
        more = ", ..." if report["left_out"] > len(report["left_out_rows"]) else ""
        note(
            f"attach: left out {report['left_out']} of {len(keep)} training latents of {where} "
            f"(images {first}{more}): the backbone explodes on them "
            f"(norm > {EXPLODING_FACTOR:g}x the median)"
        )
    return keep.nonzero().flatten(), report


def _batch(
    z_all: LatentRows | torch.Tensor,
    rows: torch.Tensor,
    labels_all: dict,
    kinds: dict,
    n: int,
    g: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` real latents drawn with replacement from ``rows`` (read from the cache's shards), and
    the targets of every plugin: the real labels for supervised kinds, draws from the prior for
    unsupervised ones."""
    idx = rows[torch.randint(len(rows), (n,), generator=g)]
    targets = {}
    for name, kind in kinds.items():
        if kind.supervised:
            targets[name] = kind.targets({k: v[idx] for k, v in labels_all.items()})
        else:
            targets[name] = kind.sample_prior(n, g)
    return z_all[idx], targets


def _relative_backbone_path(backbone_path: str | None, out: str | os.PathLike) -> str | None:
    """Backbone path as recorded in the heads file: relative to the heads file's folder if possible."""
    if backbone_path is None:
        return None
    try:
        return os.path.relpath(os.path.abspath(backbone_path), os.path.dirname(os.path.abspath(out)))
    except ValueError:
        return os.path.abspath(backbone_path)
