"""Stage 2 of CAGlow: attach condition heads to a frozen backbone (paper Eq. 10-15).

Reads top to bottom: load the frozen backbone, resolve the condition plugins against the dataset,
encode the dataset once into the latent cache, then alternate

* a supervision-block step: ``L_Di`` (Eq. 11, real ``F(x)`` vs fake ``E(c, eps)``), ``L_C`` on real
  latents (Eq. 12) and the code decoders' ``L_De`` on generated latents (Eq. 13);
* an encoder step: ``L_E`` (Eq. 10, non-saturating), ``L_C`` on generated latents, ``L_De``, and the
  pairwise feature matching ``L_FM`` (Eq. 14) between each real latent and a latent generated with
  the same conditions;

weighted by ``lambdas`` (Eq. 15). Checkpoints every ``checkpoint_every`` steps hold the weights,
both optimizers and the random generator, so ``resume`` continues exactly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from flowcond import registry
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.caglow.latents import LatentCache
from flowcond.datasets import load_dataset
from flowcond.errors import ConfigError, FlowcondError
from flowcond.flow.backbone import Backbone
from flowcond.io import safefile
from flowcond.training import torch_threads

CHECKPOINT_KIND = "heads-checkpoint"


def checkpoint_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".ckpt.safetensors")


def build_kinds(config: AttachConfig, dataset: Any) -> dict:
    unknown = set(config.plugin_options) - set(config.plugins)
    if unknown:
        raise ConfigError(f"options given for plugin(s) not selected: {', '.join(sorted(unknown))}")
    if len(set(config.plugins)) != len(config.plugins):
        raise ConfigError(f"a plugin is selected twice: {config.plugins}")
    kinds = {}
    for name in config.plugins:
        cls = registry.get_condition_kind(name)
        try:
            kinds[name] = cls.from_dataset(config.plugin_options.get(name), dataset)
        except FlowcondError:
            raise
        except Exception as e:
            raise ConfigError(
                f"condition plugin {name!r} failed on dataset "
                f"{dataset.spec.get('name')!r}: {type(e).__name__}: {e}"
            ) from e
    return kinds


def _losses(heads: Heads, outs: dict, targets: dict, supervised: bool) -> torch.Tensor:
    """Sum of the heads' losses of the supervised (Eq. 12) or unsupervised (Eq. 13) kinds."""
    total = torch.zeros(())
    for name, kind in heads.kinds.items():
        if kind.supervised == supervised:
            total = total + kind.loss(outs[name], targets[name])
    return total


def supervision_losses(
    heads: Heads, z_real: torch.Tensor, fake: torch.Tensor, targets: dict
) -> dict[str, torch.Tensor]:
    """Losses of the supervision block's step: ``Di`` (Eq. 11: real vs generated), ``C`` (Eq. 12 on
    real latents, supervised kinds) and ``De`` (Eq. 13: code decoders on generated latents)."""
    _, d_real, h_real = heads.supervise(z_real, targets)
    _, d_fake, h_fake = heads.supervise(fake, targets)
    l_di = F.binary_cross_entropy_with_logits(
        d_real, torch.ones_like(d_real)
    ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    return {
        "Di": l_di,
        "C": _losses(heads, h_real, targets, supervised=True),
        "De": _losses(heads, h_fake, targets, supervised=False),
    }


def encoder_losses(
    heads: Heads, z_real: torch.Tensor, fake: torch.Tensor, targets: dict
) -> dict[str, torch.Tensor]:
    """Losses of the encoder's step: ``E`` (Eq. 10, non-saturating ``-log D(E(c, eps))``), ``C``
    and ``De`` on generated latents (Eq. 12, 13), and ``FM`` (Eq. 14): squared L2 between trunk
    features of each real latent and of the latent generated with the same conditions."""
    with torch.no_grad():
        f_real = heads.supervise(z_real, targets)[0]
    f_fake, d_fake, h_fake = heads.supervise(fake, targets)
    return {
        "E": F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake)),
        "C": _losses(heads, h_fake, targets, supervised=True),
        "De": _losses(heads, h_fake, targets, supervised=False),
        "FM": _feature_matching(f_fake, f_real, heads.config.feature_matching),
        "MM": (fake.mean(0) - z_real.mean(0)).pow(2).mean() + (fake.std(0) - z_real.std(0)).pow(2).mean(),
    }


def _feature_matching(f_fake: torch.Tensor, f_real: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "mean":
        return (f_fake.mean(0) - f_real.mean(0)).pow(2).mean()
    return (f_fake - f_real).pow(2).sum(1).mean() / f_fake.shape[1]


def _finite_step(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    params: list,
    state: dict,
    config: AttachConfig,
    ckpt: Path,
) -> bool:
    """Backpropagate ``loss`` into ``params`` and step, unless it is non-finite (then count a skip)."""
    if not torch.isfinite(loss):
        state["skipped"] += 1
        if state["skipped"] > max(10, config.steps // 10):
            raise FlowcondError(
                f"attach diverged: {state['skipped']} non-finite steps; lower --lr; "
                f"the last good checkpoint is {ckpt}"
            )
        return False
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    opt.step()
    return True


def _save_checkpoint(path: Path, heads: Heads, opt_e, opt_d, g: torch.Generator, state: dict) -> None:
    tensors = {f"heads.{k}": v for k, v in heads.state_dict().items()}
    groups = {}
    for tag, opt in (("e", opt_e), ("d", opt_d)):
        sd = opt.state_dict()
        groups[tag] = sd["param_groups"]
        for idx, st in sd["state"].items():
            for key, val in st.items():
                tensors[f"optim_{tag}.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    tensors["rng"] = g.get_state()
    safefile.write(path, tensors, {"kind": CHECKPOINT_KIND, "param_groups": groups, **state})


def _load_checkpoint(path: Path, heads: Heads, opt_e, opt_d, g: torch.Generator) -> dict:
    tensors, header = safefile.read(path, CHECKPOINT_KIND)
    heads.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("heads.")})
    for tag, opt in (("e", opt_e), ("d", opt_d)):
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith(f"optim_{tag}."):
                _, idx, key = k.split(".", 2)
                state.setdefault(int(idx), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": header["param_groups"][tag]})
    g.set_state(tensors["rng"])
    return header


@torch.no_grad()
def evaluate_heads(
    heads: Heads, z: torch.Tensor, labels: dict, n_fake: int = 1000, seed: int = 1
) -> dict[str, Any]:
    """Head metrics on real latents (supervised kinds) and on generated latents (all kinds)."""
    heads.eval()
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    real_targets = {n: k.targets(labels) for n, k in heads.kinds.items() if k.supervised}
    _, d_real, h_real = heads.supervise(z, real_targets)
    for name, kind in heads.kinds.items():
        if kind.supervised:
            out[f"{name}/real"] = kind.metrics(h_real[name], real_targets[name])
    targets = heads.sample_targets(n_fake, None, g)
    fake = heads.generate(targets, 1.0, g)
    _, d_fake, h_fake = heads.supervise(fake, targets)
    for name, kind in heads.kinds.items():
        out[f"{name}/generated"] = kind.metrics(h_fake[name], targets[name])
    out["disc/real_mean_prob"] = float(torch.sigmoid(d_real).mean())
    out["disc/generated_mean_prob"] = float(torch.sigmoid(d_fake).mean())
    heads.train()
    return out


def attach(
    backbone: Backbone | str | os.PathLike,
    config: AttachConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
) -> tuple[Heads, dict[str, Any]]:
    """Train heads for ``config.plugins`` on a frozen backbone; write ``out``; return (heads, summary)."""
    t_start = time.perf_counter()
    backbone_path = None
    if not isinstance(backbone, Backbone):
        backbone_path = str(backbone)
        backbone = Backbone.load(backbone)
    backbone.freeze()
    dataset_name = config.dataset or (backbone.metadata.get("dataset") or {}).get("name")
    if not dataset_name:
        raise ConfigError("the backbone file names no training dataset: pass --dataset")
    train = load_dataset(dataset_name, "train", root=config.root, download=config.download)
    test = load_dataset(dataset_name, "test", root=config.root, download=config.download)
    if tuple(train.image_shape) != backbone.image_shape:
        raise ConfigError(
            f"dataset {dataset_name!r} has images {tuple(train.image_shape)}, the backbone "
            f"expects {backbone.image_shape}"
        )
    kinds = build_kinds(config, train)

    # the latent cache: the real samples p*(z) = F(x), computed once per backbone and dataset
    t0 = time.perf_counter()
    cache = LatentCache.build(backbone, train, config.cache_dir, progress=progress)
    test_cache = LatentCache.build(backbone, test, config.cache_dir, progress=progress)
    encode_seconds = time.perf_counter() - t0
    z_all, labels_all = cache.load_all()
    z_test, labels_test = test_cache.load_all()
    if not torch.isfinite(z_all).all():
        raise FlowcondError(f"the latent cache {cache.folder} holds non-finite latents; delete it and retry")

    torch.manual_seed(config.seed)
    heads = Heads(backbone, kinds, config)
    enc_params = list(heads.encoder.parameters()) + list(heads.inputs.parameters())
    opt_e = torch.optim.Adam(enc_params, lr=config.lr, betas=(config.beta1, 0.999))
    sup_params = list(heads.supervision.parameters())
    opt_d = torch.optim.Adam(sup_params, lr=config.lr, betas=(config.beta1, 0.999))
    g = torch.Generator().manual_seed(config.seed)
    ckpt = checkpoint_path(out)
    state: dict[str, Any] = {"step": 0, "skipped": 0, "train_seconds": 0.0}
    if resume and ckpt.exists():
        header = _load_checkpoint(ckpt, heads, opt_e, opt_d, g)
        state = {k: header[k] for k in state}

    lam = config.lambdas
    n, B = len(z_all), config.batch_size
    heads.train()
    bar = tqdm(
        range(state["step"], config.steps),
        initial=state["step"],
        total=config.steps,
        desc="attach",
        disable=not progress,
    )
    t_loop = time.perf_counter()
    with torch_threads(config.threads):
        for step in bar:
            idx = torch.randint(n, (B,), generator=g)
            z_real = z_all[idx]
            targets = {}
            for name, kind in kinds.items():
                targets[name] = (
                    kind.targets({k: v[idx] for k, v in labels_all.items()})
                    if kind.supervised
                    else kind.sample_prior(B, g)
                )
            c = heads.condition_input(targets)
            eps, eps_res = heads.noise(B, 1.0, g)

            fake = heads.generate_from_input(c, eps, eps_res)
            ld = supervision_losses(heads, z_real, fake.detach(), targets)
            loss_d = lam.Di * ld["Di"] + lam.C * ld["C"] + lam.De * ld["De"]
            if not _finite_step(loss_d, opt_d, sup_params, state, config, ckpt):
                continue
            le = encoder_losses(heads, z_real, fake, targets)  # against the updated block
            loss_e = (
                lam.E * le["E"] + lam.C * le["C"] + lam.De * le["De"] + lam.FM * le["FM"] + lam.MM * le["MM"]
            )
            if not _finite_step(loss_e, opt_e, enc_params, state, config, ckpt):
                continue
            state["step"] = step + 1
            if step % 25 == 0:
                bar.set_postfix(
                    Di=f"{ld['Di'].item():.3f}",
                    E=f"{le['E'].item():.3f}",
                    C=f"{ld['C'].item():.3f}/{le['C'].item():.3f}",
                    De=f"{le['De'].item():.3f}",
                    FM=f"{le['FM'].item():.3f}",
                )
            if state["step"] % config.checkpoint_every == 0 or state["step"] == config.steps:
                state["train_seconds"] += time.perf_counter() - t_loop
                t_loop = time.perf_counter()
                _save_checkpoint(
                    ckpt, heads, opt_e, opt_d, g, {**state, "attach_config": config.model_dump()}
                )
        bar.close()
    state["train_seconds"] += time.perf_counter() - t_loop

    heads.eval()
    metrics = evaluate_heads(heads, z_test, labels_test, seed=config.seed + 1)
    summary = {
        "dataset": train.spec,
        "steps": state["step"],
        "skipped_steps": state["skipped"],
        "encode_seconds": round(encode_seconds, 2),
        "train_seconds": round(state["train_seconds"], 2),
        "total_seconds": round(time.perf_counter() - t_start, 2),
        "metrics": metrics,
    }
    heads.save(out, backbone_path=_relative_backbone_path(backbone_path, out), summary=summary)
    return heads, summary


def _relative_backbone_path(backbone_path: str | None, out: str | os.PathLike) -> str | None:
    """Backbone path as recorded in the heads file: relative to the heads file's folder if possible."""
    if backbone_path is None:
        return None
    try:
        return os.path.relpath(os.path.abspath(backbone_path), os.path.dirname(os.path.abspath(out)))
    except ValueError:
        return os.path.abspath(backbone_path)
