"""The Glow backbone: a normflows ``MultiscaleFlow`` with exact encode/decode and its file format.

Directions follow normflows: the flow's ``forward`` maps latents to images, ``inverse`` maps images
to latents. Here ``encode`` = image -> latent and ``decode`` = latent -> image.

Latent layout. normflows gives one tensor per level, coarsest first. Every level is kept (split-off
levels are never resampled). Each level is standardized by its learned prior, ``eps = (z - mu) /
sigma``, so that the prior of the latent is ``N(0, I)``. The *flat* latent ``(B, D)`` concatenates
the standardized levels, coarsest first. The *spatial* latent squeezes every level down to the
coarsest grid and concatenates channels: ``(B, C * 4**N, H / 2**N, W / 2**N)``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import normflows as nf
import torch
from torch import nn

from flowcond.errors import FlowcondError
from flowcond.flow.config import BackboneConfig, check_temperature
from flowcond.flow.coupling import SoftClampedParams
from flowcond.flow.fast import FastGlow, supported
from flowcond.flow.header import RESERVED as HEADER_RESERVED
from flowcond.flow.header import check_backbone_header, expected_weights
from flowcond.flow.precision import autocast_dtype, full_precision
from flowcond.flow.priors import prior_params, prior_type
from flowcond.io import safefile

KIND = "backbone"


def _build_flow(cfg: BackboneConfig) -> nf.MultiscaleFlow:
    """The Glow of normflows' own example, for a ``cfg.channels x H x W`` image."""
    C, H, W = cfg.image_shape
    L, K = cfg.levels, cfg.steps
    q0, merges, flows = [], [], []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.lu is deprecated.*")
        for i in range(L):
            level = [_glow_block(cfg, C * 2 ** (L + 1 - i)) for _ in range(K)]
            level.append(nf.flows.Squeeze())
            flows.append(level)
            if i > 0:
                merges.append(nf.flows.Merge())
                shape = (C * 2 ** (L - i), H // 2 ** (L - i), W // 2 ** (L - i))
            else:
                shape = (C * 2 ** (L + 1), H // 2**L, W // 2**L)
            q0.append(prior_type(cfg.prior)(shape))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def _glow_block(cfg: BackboneConfig, channels: int) -> nf.flows.GlowBlock:
    """One Glow step (actnorm, 1x1 conv, coupling), optionally with a soft-clamped affine scale."""
    softclamp = cfg.coupling == "affine" and cfg.scale_map == "softclamp"
    block = nf.flows.GlowBlock(
        channels,
        cfg.hidden,
        scale=cfg.coupling == "affine",
        scale_map="sigmoid" if cfg.scale_map == "sigmoid" else "exp",
        split_mode="channel",
        use_lu=cfg.lu,
    )
    if softclamp:
        coupling = block.flows[0].flows[1]
        coupling.param_map = SoftClampedParams(coupling.param_map, cfg.scale_clamp)
    return block


class Backbone(nn.Module):
    """A multi-scale Glow ``F``: exact, deterministic ``encode``/``decode`` of images in [0, 1]."""

    def __init__(self, config: BackboneConfig, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.metadata: dict[str, Any] = dict(metadata or {})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.flow = _build_flow(config)
        #: Use the channels-last fast path (:mod:`flowcond.flow.fast`) for image -> latent; set to
        #: ``False`` for normflows' own ``inverse_and_log_det`` (the reference; same results up to
        #: float rounding, and the weights are the same either way).
        self.fast = True
        self._fast = FastGlow(self.flow) if supported(self.flow) else None
        self.latent_shapes: list[tuple[int, int, int]] = [tuple(q.shape) for q in self.flow.q0]
        C, H, W = config.image_shape
        f = 2**config.levels
        self.spatial_shape = (C * f * f, H // f, W // f)
        self.bins = 2**config.n_bits

    # ---------------------------------------------------------------- sizes
    @property
    def latent_dim(self) -> int:
        """D: length of the flat latent (equals the number of image dimensions)."""
        return self.config.dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.image_shape

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def initialized(self) -> bool:
        """Whether every ActNorm has seen data (or was loaded from a file)."""
        return all(bool(m.data_dep_init_done > 0) for m in self.modules() if isinstance(m, nf.flows.ActNorm))

    # ---------------------------------------------------- image <-> flow input
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> integer levels in ``[0, 2**n_bits - 1]`` (as float)."""
        return torch.round(x.clamp(0, 1) * (self.bins - 1))

    def preprocess(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] -> flow input in [-0.5, 0.5].

        ``noise`` in [0, 1) is the dequantization; ``None`` means the fixed midpoint 0.5, so that
        the same image always gives the same latent.
        """
        self._check_images(x)
        u = 0.5 if noise is None else noise
        return (self.quantize(x) + u) / self.bins - 0.5

    def postprocess(self, y: torch.Tensor) -> torch.Tensor:
        """Flow input -> images in [0, 1] (inverse of :meth:`preprocess`, fixed dequantization)."""
        return (((y + 0.5) * self.bins - 0.5) / (self.bins - 1)).clamp(0, 1)

    def _check_images(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}"
            )

    @staticmethod
    def _count_nonfinite(t: torch.Tensor) -> int:
        """How many samples (rows of the first dimension) of ``t`` hold a NaN or infinity."""
        if t.numel() == 0:
            return 0
        return int((~torch.isfinite(t.detach().reshape(len(t), -1))).any(dim=1).sum())

    def _check_finite(self, t: torch.Tensor, what: str, hint: str) -> None:
        bad = self._count_nonfinite(t)
        if bad:
            raise FlowcondError(f"{bad} of {len(t)} {what} non-finite (NaN or infinite) values; {hint}")

    # ------------------------------------------------------------ prior
    def _prior_params(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        return prior_params(self.flow.q0[level])

    # ---------------------------------------------------------- flat <-> levels
    def flatten_levels(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([z.reshape(z.shape[0], -1) for z in levels], dim=1)

    def split_levels(self, z: torch.Tensor) -> list[torch.Tensor]:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected a flat latent of shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        sizes = [math.prod(s) for s in self.latent_shapes]
        chunks = torch.split(z, sizes, dim=1)
        return [c.reshape(z.shape[0], *s) for c, s in zip(chunks, self.latent_shapes, strict=True)]

    def standardize(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, z in enumerate(levels):
            loc, log_scale = self._prior_params(i)
            out.append((z - loc) * torch.exp(-log_scale))
        return out

    def unstandardize(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, e in enumerate(levels):
            loc, log_scale = self._prior_params(i)
            out.append(loc + torch.exp(log_scale) * e)
        return out

    def to_spatial(self, z: torch.Tensor) -> torch.Tensor:
        """Flat latent ``(B, D)`` -> spatial latent ``(B, C*4**N, H/2**N, W/2**N)``."""
        squeeze = nf.flows.Squeeze()
        parts = []
        for level in self.split_levels(z):
            while level.shape[-1] > self.spatial_shape[-1]:
                level, _ = squeeze.inverse(level)
            parts.append(level)
        return torch.cat(parts, dim=1)

    def to_flat(self, s: torch.Tensor) -> torch.Tensor:
        """Spatial latent -> flat latent (inverse of :meth:`to_spatial`)."""
        squeeze = nf.flows.Squeeze()
        parts, start = [], 0
        for shape in self.latent_shapes:
            n_sq = int(round(math.log2(shape[-1] // self.spatial_shape[-1])))
            c = shape[0] * 4**n_sq
            level = s[:, start : start + c]
            start += c
            for _ in range(n_sq):
                level, _ = squeeze.forward(level)
            parts.append(level.reshape(s.shape[0], -1))
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------ encode / decode
    def _inverse(
        self, y: torch.Tensor, log_det: bool = True
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        self._require_initialized()
        amp = autocast_dtype(y.device.type)  # bf16 for the coupling networks only
        with full_precision(y.device.type):
            if self.fast and self._fast is not None:
                return self._fast.inverse_and_log_det(y, log_det=log_det, amp=amp)
            return self.flow.inverse_and_log_det(y)

    def encode_levels(self, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Flow input -> (raw per-level latents, log|det dz/dy|). Gradients flow if enabled."""
        levels, log_det = self._inverse(y, log_det=True)
        return levels, log_det

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] ``(B, C, H, W)`` -> standardized flat latents ``(B, D)``, deterministic.

        With a frozen backbone (or under ``torch.no_grad``) this runs the cached, folded fast
        path; wrap calls in ``torch.inference_mode()`` for bulk encoding.
        """
        self._check_images(x)
        self._check_finite(x, "images to encode hold", "images must be finite values in [0, 1]")
        levels, _ = self._inverse(self.preprocess(x), log_det=False)
        return self.flatten_levels(self.standardize(levels))

    def decode(self, z: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Standardized flat latents ``(B, D)`` -> images in [0, 1]; inverse of :meth:`encode`.

        ``check``: non-finite latents, and latents so large that decoding overflows (infinite or
        NaN flow outputs, which would be clamped or written as garbage), are a
        :class:`FlowcondError` saying how many of how many; never silent.
        """
        if check:
            self._check_latents(z)
        y = self._decode_flow(z)
        if check:
            self._check_decoded(y, z)
        return self.postprocess(y)

    def _decode_flow(self, z: torch.Tensor) -> torch.Tensor:
        """Standardized flat latents -> flow output ``y`` (images before :meth:`postprocess`)."""
        self._require_initialized()
        amp = autocast_dtype(z.device.type)  # bf16 for the coupling networks only
        with full_precision(z.device.type):
            levels = self.unstandardize(self.split_levels(z))
            y = None
            if self.fast and self._fast is not None:
                y = self._fast.forward(levels, amp=amp)  # None when gradients are needed
            if y is None:
                y, _ = self.flow.forward_and_log_det(levels)
        return y

    def _check_latents(self, z: torch.Tensor) -> None:
        self._check_finite(z, "latents to decode hold", "latents must be finite")

    def _check_decoded(self, y: torch.Tensor, z: torch.Tensor) -> None:
        bad = self._count_nonfinite(y)
        if bad:
            big = float(z.detach().abs().max()) if z.numel() else 0.0
            raise FlowcondError(
                f"decoding overflowed (non-finite pixels) for {bad} of {len(y)} latents (largest "
                f"|z| = {big:.3g}): the latents are too large for this backbone (lower the temperature)"
            )

    @torch.no_grad()
    def decode_in_batches(self, z: torch.Tensor, batch_size: int = 256, check: bool = True) -> torch.Tensor:
        """:meth:`decode` of many latents, ``batch_size`` at a time, without gradients (``check``
        as there, counted over all of ``z``)."""
        if check:
            self._check_latents(z)
        if len(z) == 0:
            return z.new_zeros((0, *self.image_shape))
        dev = self.device  # latents may live elsewhere (on the CPU, the backbone on a GPU)
        starts = range(0, len(z), batch_size)
        y = torch.cat([self._decode_flow(z[i : i + batch_size].to(dev)).to(z.device) for i in starts])
        if check:
            self._check_decoded(y, z)
        return self.postprocess(y)

    def sample(
        self, n: int, temperature: float = 0.7, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` images from the prior at ``temperature`` (the standard deviation of the latent;
        finite, in ``[0, MAX_TEMPERATURE]``)."""
        check_temperature(temperature, allow_zero=True)
        # drawn on the CPU (the same numbers for a seed on every device), decoded on the backbone's
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device) * temperature
        return self.decode(z)

    # -------------------------------------------------------- likelihood
    def log_prob_input(self, y: torch.Tensor) -> torch.Tensor:
        """log-density of flow inputs ``y``: ``sum_level log p(z_level) + log|det|``, per sample."""
        levels, log_det = self.encode_levels(y)
        log_p = log_det
        with full_precision(y.device.type):  # the prior in fp32 under autocast too
            for q, z in zip(self.flow.q0, levels, strict=True):
                log_p = log_p + q.log_prob(z)
        return log_p

    def bits_per_dim_input(self, y: torch.Tensor) -> torch.Tensor:
        """Bits per dimension (per sample) of dequantized flow inputs ``y``."""
        D = self.latent_dim
        return (-self.log_prob_input(y) + D * math.log(self.bins)) / (D * math.log(2.0))

    def bits_per_dim(
        self,
        x: torch.Tensor,
        noise: torch.Tensor | None = None,
        draws: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Bits per dimension (per sample) of images in [0, 1], at ``n_bits`` quantization: the
        standard figure, the variational bound with uniform dequantization noise ``u ~ U[0, 1)``
        (``noise`` fixes one draw; else the mean over ``draws`` draws from ``generator``).

        The bin midpoint (``bits_per_dim_input(preprocess(x))``) is not a bound and reads lower
        (test median 0.85 against 1.35 on the shipped backbone): never report it as bits/dim.
        """
        if noise is not None:
            return self.bits_per_dim_input(self.preprocess(x, noise))
        total = torch.zeros(len(x), device=x.device)
        for _ in range(max(draws, 1)):
            u = torch.rand(x.shape, generator=generator).to(x.device)
            total = total + self.bits_per_dim_input(self.preprocess(x, u))
        return total / max(draws, 1)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent ActNorm initialization from one real batch (needed before training)."""
        self.flow.inverse_and_log_det(self.preprocess(x))

    def _require_initialized(self) -> None:
        if not self.initialized:
            raise RuntimeError(
                "the backbone's ActNorm layers are not initialized: call Backbone.initialize(x) "
                "with a real data batch (training does this) or load a trained backbone with "
                "Backbone.load()"
            )

    # ------------------------------------------------------------ files
    def freeze(self) -> Backbone:
        """Eval mode, no gradients for the weights. Returns self."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.flow.state_dict().items()}

    @property
    def content_hash(self) -> str:
        """SHA-256 of the weights: identifies this backbone (heads files and latent caches)."""
        return safefile.content_hash(self.flow.state_dict())

    def save(self, path: str | os.PathLike, **metadata: Any) -> str:
        """Write weights + config (+ ``metadata``: dataset, bits/dim) atomically; return the hash.

        ``metadata`` cannot override ``kind``, ``config``, ``content_hash`` or ``format_version``.
        """
        weights = self.weights()
        digest = safefile.content_hash(weights)
        meta = {**self.metadata, **metadata}
        header = {**meta, "kind": KIND, "config": self.config.model_dump(), "content_hash": digest}
        safefile.write(path, weights, header)
        self.metadata = meta
        return digest

    @classmethod
    def read_config(cls, path: str | os.PathLike) -> tuple[BackboneConfig, dict[str, Any]]:
        """Validate a backbone file's header; return its config and header (no weights read).

        The config is checked with its bounds, the metadata fields flowcond reads with their
        types, and the tensors the config implies against the ones the file holds (names, dtypes
        and shapes from the safetensors header): a FileFormatError names the file and the field.
        """
        header, specs = safefile.read_layout(path, KIND)
        config = check_backbone_header(path, header)
        safefile.check_layout(path, specs, expected_weights(config))
        return config, header

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", frozen: bool = True
    ) -> Backbone:
        """Validate, build and load a backbone file; frozen (eval, no grad) by default."""
        config, header = cls.read_config(path)
        tensors, _ = safefile.read(path, KIND, expected_weights(config))
        meta = {k: v for k, v in header.items() if k not in HEADER_RESERVED}
        model = cls(config, metadata=meta)
        safefile.load_weights(model.flow, tensors, path)
        model.to(map_location)
        return model.freeze() if frozen else model
