"""Read a Glow trained with normflows from its ``state_dict``: what shape it has, and the same
model rebuilt with normflows' own classes (the reference the import is checked against).

normflows' Glow example builds ``MultiscaleFlow(q0, flows, merges)``: level ``i`` holds ``K``
``GlowBlock(C * 2**(L+1-i), hidden)`` then a ``Squeeze``, levels after the first a ``Merge``,
and each level a prior (``GlowBase``, ``DiagGaussian`` or ``ClassCondDiagGaussian``). Its
state dict names ``flows.I.J.flows.*`` (coupling net, 1x1 convolution, ActNorm) and ``q0.I.*``;
:func:`infer_glow` reads L, K, hidden, C, coupling type, LU and prior type from those names and
shapes, :func:`build_reference` builds that model, and :func:`check_keys` refuses a state dict
whose tensors differ from it, naming the keys.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

import normflows as nf
import torch

from flowcond.errors import FileFormatError
from flowcond.flow.import_config import NormflowsImportConfig
from flowcond.io.safefile import one_line

_FLOW_KEY = re.compile(r"flows\.(\d+)\.(\d+)\.")
_PRIOR_KEY = re.compile(r"q0\.(\d+)\.")
_GLOW_BASE = {"loc", "loc_logs", "log_scale", "log_scale_logs"}


@dataclass(frozen=True)
class GlowShape:
    """What a normflows Glow state dict says about its model."""

    levels: int
    steps: int
    hidden: int
    channels: int
    height: int
    width: int
    coupling: str  # "affine" or "additive"
    lu: bool
    prior: str  # "glow" (GlowBase) or "diag" (DiagGaussian / ClassCondDiagGaussian)
    num_classes: int | None  # class-conditional prior: its number of classes


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` on the CPU: a dict of tensors, or a one-line
    FileFormatError naming the file (a pickled object other than tensors is refused by torch)."""
    if os.path.isdir(path):
        raise FileFormatError(path, "is a folder, expected a torch.save file of a state dict")
    if not os.path.isfile(path):
        raise FileFormatError(path, "no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here; all mean "not loadable"
        raise FileFormatError(
            path, f"not loadable with torch.load(weights_only=True): {_load_reason(e)}"
        ) from None
    if not isinstance(data, dict):
        raise FileFormatError(path, f"holds a {type(data).__name__}, not a state dict (model.state_dict())")
    bad = [str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise FileFormatError(path, f"not a state dict of tensors: {_names(bad)} not tensors")
    return dict(data)


def _load_reason(e: BaseException) -> str:
    """The informative part of torch's (long) weights-only refusal."""
    found = re.search(r"Unsupported (?:global|operand)[^.]*?(GLOBAL [\w.]+)?(?: was not|\.|$)", str(e))
    if found:
        what = found.group(1) or one_line(e)
        return f"it holds a pickled object other than tensors ({what}), which is never unpickled"
    if isinstance(e, KeyError | EOFError) or len(str(e)) < 8:  # torch's reply to a non-pickle
        return f"not a torch.save file ({type(e).__name__}{': ' + str(e) if str(e) else ''})"
    return one_line(e)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def infer_glow(
    path: str | os.PathLike,
    sd: dict[str, torch.Tensor],
    cfg: NormflowsImportConfig,
    dataset_shape: tuple[int, int, int] | None = None,
) -> GlowShape:
    """The Glow shape of normflows state dict ``sd`` (options fill in what it does not record)."""
    flow_ids = [tuple(map(int, m.groups())) for k in sd if (m := _FLOW_KEY.match(k))]
    prior_ids = [int(m.group(1)) for k in sd if (m := _PRIOR_KEY.match(k))]
    if not flow_ids or not prior_ids:
        raise FileFormatError(
            path,
            "not a normflows Glow state dict (a MultiscaleFlow has flows.I.J.* and q0.I.* keys); "
            f"it holds {len(sd)} tensor(s): {_names(sorted(sd))}",
        )
    L = max(max(i for i, _ in flow_ids), max(prior_ids)) + 1
    K = max(j for i, j in flow_ids if i == 0) + 1 if any(i == 0 for i, _ in flow_ids) else 0
    p = "flows.0.0.flows."
    net_in, net_out = f"{p}0.flows.1.param_map.net.0.weight", f"{p}0.flows.1.param_map.net.4.weight"
    actnorm = next((f"{p}{n}.s" for n in (2, 1) if f"{p}{n}.s" in sd), None)
    net_keys = sorted(k for k in sd if k.startswith(f"{p}0.flows.1.param_map."))
    if net_in not in sd or net_out not in sd or f"{net_in[:-6]}bias" not in sd:
        raise FileFormatError(
            path,
            "the coupling network of flows.0.0 is not GlowBlock's (3x3, 1x1, 3x3 convolutions with "
            f"biases, no ActNorm): unmapped keys: {_names(net_keys) or 'none'}",
        )
    if actnorm is None:
        raise FileFormatError(path, f"not a normflows GlowBlock layout: missing keys: {p}2.s")
    c0 = int(sd[actnorm].shape[1])  # channels of the first level's steps: C * 2**(L+1)
    hidden, c_in = int(sd[net_in].shape[0]), int(sd[net_in].shape[1])
    if c_in == c0 or cfg.split_mode != "channel":
        mode = "checkerboard" if c_in == c0 else cfg.split_mode
        raise FileFormatError(
            path,
            f"split_mode {mode!r} ({net_in} has {c_in} input channels): flowcond's backbone couples "
            "channel halves (GlowBlock split_mode='channel') and cannot represent it",
        )
    n_out = int(sd[net_out].shape[0])
    if n_out == 2 * (c0 // 2):
        coupling = "affine"
    elif n_out == c0 // 2:
        coupling = "additive"
    else:
        raise FileFormatError(
            path, f"{net_out}: {n_out} output channels fit neither affine nor additive coupling"
        )
    if coupling == "affine" and cfg.scale_map == "sigmoid_inv":
        raise FileFormatError(path, "scale_map 'sigmoid_inv' cannot be represented (sigmoid and exp can)")
    if c0 % 2 ** (L + 1):
        raise FileFormatError(path, f"{actnorm}: {c0} channels is not C * 2**(levels+1) for {L} levels")
    C = c0 // 2 ** (L + 1)
    prior, classes, spatial = _infer_prior(path, sd, c0)
    H, W = _image_size(path, cfg, C, L, spatial, dataset_shape)
    lu = f"{p}1.L" in sd if c0 > 1 else True
    return GlowShape(L, K, hidden, C, H, W, coupling, lu, prior, classes)


def _infer_prior(
    path: str | os.PathLike, sd: dict[str, torch.Tensor], c0: int
) -> tuple[str, int | None, tuple[int, int] | None]:
    """Prior type of level 0, its number of classes and its spatial size (when it records one)."""
    q = {k[len("q0.0.") :]: v for k, v in sd.items() if k.startswith("q0.0.")}
    names = set(q)
    if names == _GLOW_BASE:
        return "glow", None, None
    if names == _GLOW_BASE | {"loc_cc", "log_scale_cc"}:
        return "glow", int(q["loc_cc"].shape[0]), None
    if names == {"loc", "log_scale"} and q["loc"].dim() == 4:
        loc = q["loc"]
        if loc.shape[0] == 1 and loc.shape[1] == c0:  # DiagGaussian: (1, C, h, w)
            return "diag", None, (int(loc.shape[2]), int(loc.shape[3]))
        if loc.shape[0] == c0:  # ClassCondDiagGaussian: (C, h, w, classes)
            return "diag", int(loc.shape[3]), (int(loc.shape[1]), int(loc.shape[2]))
    shapes = ", ".join(f"q0.0.{k} {tuple(v.shape)}" for k, v in sorted(q.items()))
    raise FileFormatError(
        path, f"q0.0 is not a GlowBase, DiagGaussian or ClassCondDiagGaussian prior: {shapes or 'no tensors'}"
    )


def _image_size(
    path: str | os.PathLike,
    cfg: NormflowsImportConfig,
    C: int,
    L: int,
    spatial: tuple[int, int] | None,
    dataset_shape: tuple[int, int, int] | None,
) -> tuple[int, int]:
    f = 2**L
    found = {}
    if spatial is not None:
        found["the prior q0.0"] = (C, spatial[0] * f, spatial[1] * f)
    if cfg.image_shape is not None:
        found["--image-shape"] = tuple(cfg.image_shape)
    if dataset_shape is not None:
        found[f"dataset {cfg.dataset!r}"] = tuple(dataset_shape)
    if not found:
        raise FileFormatError(
            path,
            f"GlowBase priors do not record the image size: pass --image-shape {C},H,W (or --dataset)",
        )
    want = (C, *next(iter(found.values()))[1:])
    for where, shape in found.items():
        if shape != want:
            raise FileFormatError(path, f"{where} gives images {shape}, the state dict implies {want}")
    return want[1], want[2]


def build_reference(shape: GlowShape, cfg: NormflowsImportConfig) -> nf.MultiscaleFlow:
    """The normflows model of ``shape``, built as normflows' Glow example builds it."""
    C, L, H, W = shape.channels, shape.levels, shape.height, shape.width
    q0, merges, flows = [], [], []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.lu is deprecated.*")
        for i in range(L):
            c = C * 2 ** (L + 1 - i)
            level = [
                nf.flows.GlowBlock(
                    c,
                    shape.hidden,
                    scale=shape.coupling == "affine",
                    scale_map=cfg.scale_map,
                    split_mode="channel",
                    use_lu=shape.lu,
                )
                for _ in range(shape.steps)
            ]
            flows.append([*level, nf.flows.Squeeze()])
            f = 2 ** (L - i) if i > 0 else 2**L
            latent = (C * 2 ** (L - i) if i > 0 else C * 2 ** (L + 1), H // f, W // f)
            if i > 0:
                merges.append(nf.flows.Merge())
            q0.append(_prior(shape, latent, cfg))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=shape.num_classes is not None)


def _prior(shape: GlowShape, latent: tuple[int, int, int], cfg: NormflowsImportConfig) -> torch.nn.Module:
    if shape.prior == "glow":
        return nf.distributions.GlowBase(latent, shape.num_classes, logscale_factor=cfg.logscale_factor)
    if shape.num_classes is None:
        return nf.distributions.DiagGaussian(latent)
    return nf.distributions.ClassCondDiagGaussian(latent, shape.num_classes)


def check_keys(
    path: str | os.PathLike, sd: dict[str, torch.Tensor], reference: torch.nn.Module, shape: GlowShape
) -> None:
    """``sd`` has exactly the tensors of ``reference`` (names and shapes), all finite, and its
    ActNorms were initialized; else a one-line FileFormatError naming the keys."""
    want = reference.state_dict()
    missing = sorted(set(want) - set(sd))
    unmapped = sorted(set(sd) - set(want))
    wrong = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(want[k].shape)})"
        for k in want
        if k in sd and sd[k].shape != want[k].shape
    ]
    if missing or unmapped or wrong:
        parts = [
            f"{what}: {_names(keys)}"
            for what, keys in (
                ("missing keys", missing),
                ("unmapped keys", unmapped),
                ("wrong shapes", wrong),
            )
            if keys
        ]
        raise FileFormatError(
            path, f"cannot map it onto a normflows Glow ({describe(shape)}): {'; '.join(parts)}"
        )
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise FileFormatError(path, f"non-finite values (NaN or infinite) in {_names(bad)}")
    uninit = [k for k, v in sd.items() if k.endswith("data_dep_init_done") and not float(v) > 0]
    if uninit:
        raise FileFormatError(
            path, f"ActNorm layers never initialized ({_names(uninit)} = 0): save the model after training"
        )


def describe(shape: GlowShape) -> str:
    prior = {"glow": "GlowBase", "diag": "DiagGaussian"}[shape.prior]
    if shape.num_classes is not None:
        name = "ClassCondDiagGaussian" if shape.prior == "diag" else "GlowBase"
        prior = f"{name} with {shape.num_classes} classes"
    return (
        f"levels {shape.levels}, steps {shape.steps}, hidden {shape.hidden}, images "
        f"{shape.channels}x{shape.height}x{shape.width}, {shape.coupling} coupling, "
        f"{'LU' if shape.lu else 'plain'} 1x1 convolutions, {prior} prior"
    )


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def to_plain_dict(value: Any) -> Any:
    """A JSON-friendly copy (tuples -> lists)."""
    if isinstance(value, dict):
        return {k: to_plain_dict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain_dict(v) for v in value]
    return value
