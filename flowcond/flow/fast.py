"""A faster image -> latents (and frozen latents -> image) for the backbone's normflows Glow.

Same math as normflows' ``MultiscaleFlow.inverse_and_log_det`` / ``forward_and_log_det`` for the
exact architecture built by ``flowcond.flow.backbone._build_flow`` (GlowBlock: ActNorm, invertible 1x1
conv, affine coupling with Glow's ``sigmoid(s + 2)`` scale or the soft-clamped
``exp(c tanh(s / c))`` scale of :mod:`flowcond.coupling`, or additive coupling, each with a
``3-1-3`` ConvNet2d; Squeeze; channel Merge), read from the same normflows modules and parameters:
the weights, the state dict and the file format are untouched, and any other structure is
refused (:func:`supported`), in which case ``Backbone`` uses normflows' own code. It differs only
in how the work is laid out for the CPU (oneDNN):

* activations stay channels-last (NHWC) from the first squeeze to the last split (normflows'
  NCHW ``3x3`` convolution with 2 input channels is about 10x slower than the NHWC one here);
* ActNorm and the 1x1 convolution are one affine map, ``W diag(exp(-s)) (z - t)``;
* the coupling's shift/scale output channels are reordered into two contiguous halves, and
  ``LeakyReLU(0)`` is a ReLU fused into the convolution (oneDNN post-op, with its own backward);
* frozen passes over big batches run in cache-sized chunks (:data:`CHUNK_BYTES`).

Two modes, chosen per call:

* **autograd** (gradients wanted, i.e. training): the weights are recomputed from the live
  parameters, differentiably (``Backbone.log_prob_input``, ``bits_per_dim``);
* **frozen plan** (no gradient needed: ``torch.no_grad``/``inference_mode`` or a frozen model): the
  folded weights are computed once, in float64, and cached until a parameter changes (tracked by
  tensor version counters and storage); the log-determinant is skipped when not asked for
  (``encode``); the decode direction (``forward``) uses the same plan.

Results equal the normflows path up to float rounding (tests: ``allclose`` at 1e-5).
:func:`retain_freed_memory` is a separate, process-wide malloc setting used by training.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

import normflows as nf
import torch
import torch.nn.functional as F
from torch import nn

from flowcond.flow.coupling import SoftClampedParams

__all__ = ["FastGlow", "retain_freed_memory", "supported"]

_RETAINED = False


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    CPU tensors are plain ``malloc`` blocks: a training step allocates and frees hundreds of
    multi-megabyte activations, and with glibc's default thresholds most of them are fresh
    ``mmap`` pages that the kernel zero-fills on first touch (30-50 thousand page faults per step
    for the 1x32x32 MNIST Glow, batch 64). Keeping freed memory removes them (about 20% faster
    training here) at the price of a process that keeps its peak memory. Process-wide, so it is
    called by long-running jobs (``train_backbone``), not on import. No-op off glibc/Linux or with
    ``FLOWCOND_RETAIN_MEMORY=0``. Returns whether the setting is in effect.
    """
    global _RETAINED
    if _RETAINED:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("FLOWCOND_RETAIN_MEMORY") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    _RETAINED = mallopt(m_mmap_threshold, 256 << 20) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    return _RETAINED


# ------------------------------------------------------------------- structure
@dataclass
class _Block:
    """One GlowBlock, in normflows' module objects (parameters are read live from them)."""

    actnorm: nf.flows.ActNorm
    invconv: nf.flows.Invertible1x1Conv | None
    coupling: nf.flows.AffineCoupling
    conv_a: nn.Conv2d
    conv_b: nn.Conv2d
    conv_c: nn.Conv2d
    channels: int
    mode: str  # "sigmoid", "softclamp" or "additive"
    clamp: float = 0.0


def _parse_block(block: nn.Module) -> _Block | None:
    if type(block) is not nf.flows.GlowBlock:
        return None
    flows = list(block.flows)
    if len(flows) not in (2, 3) or type(flows[0]) is not nf.flows.AffineCouplingBlock:
        return None
    if type(flows[-1]) is not nf.flows.ActNorm:
        return None
    invconv = flows[1] if len(flows) == 3 else None
    if invconv is not None and type(invconv) is not nf.flows.Invertible1x1Conv:
        return None
    split, coupling, merge = list(flows[0].flows)
    if (
        type(split) is not nf.flows.Split
        or type(merge) is not nf.flows.Merge
        or split.mode != "channel"
        or merge.mode != "channel"
        or type(coupling) is not nf.flows.AffineCoupling
    ):
        return None
    net, clamp = coupling.param_map, 0.0
    if not coupling.scale:
        mode = "additive"
    elif coupling.scale_map == "sigmoid":
        mode = "sigmoid"
    elif coupling.scale_map == "exp" and type(net) is SoftClampedParams:
        mode, clamp, net = "softclamp", float(net.clamp), net.net
    else:
        return None
    if type(net) is not nf.nets.ConvNet2d:
        return None
    layers = list(net.net)
    kinds = [type(m) for m in layers]
    if kinds != [nn.Conv2d, nn.LeakyReLU, nn.Conv2d, nn.LeakyReLU, nn.Conv2d]:
        return None
    if any(m.negative_slope != 0.0 for m in layers if isinstance(m, nn.LeakyReLU)):
        return None
    conv_a, conv_b, conv_c = layers[0], layers[2], layers[4]
    for conv, k in ((conv_a, 3), (conv_b, 1), (conv_c, 3)):
        if (
            conv.kernel_size != (k, k)
            or conv.padding != (k // 2, k // 2)
            or conv.stride != (1, 1)
            or conv.dilation != (1, 1)
            or conv.groups != 1
            or conv.bias is None
            or conv.padding_mode != "zeros"
        ):
            return None
    channels = conv_a.in_channels + conv_c.out_channels // (2 if coupling.scale else 1)
    if channels % 2 or conv_a.in_channels != channels // 2:
        return None
    if tuple(flows[-1].s.shape) != (1, channels, 1, 1):
        return None
    return _Block(flows[-1], invconv, coupling, conv_a, conv_b, conv_c, channels, mode, clamp)


def _parse(flow: nn.Module) -> list[list[_Block]] | None:
    if type(flow) is not nf.MultiscaleFlow or flow.transform is not None:
        return None
    levels = []
    for i, level in enumerate(flow.flows):
        mods = list(level)
        if not mods or type(mods[-1]) is not nf.flows.Squeeze:
            return None
        blocks = [_parse_block(b) for b in mods[:-1]]
        if any(b is None for b in blocks):
            return None
        levels.append(blocks)
        if i > 0:
            merge = flow.merges[i - 1]
            if type(merge) is not nf.flows.Merge or merge.mode != "channel":
                return None
    return levels


def supported(flow: nn.Module) -> bool:
    """Whether ``flow`` has exactly the structure the fast path implements."""
    return _parse(flow) is not None


# ------------------------------------------------------------- NHWC helpers
def _squeeze_nhwc(x: torch.Tensor) -> torch.Tensor:
    """normflows ``Squeeze.inverse``: (C, H, W) -> (4C, H/2, W/2), channel ``4c + 2i + j``; NHWC."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def _unsqueeze_nhwc(x: torch.Tensor) -> torch.Tensor:
    """normflows ``Squeeze.forward`` (inverse of :func:`_squeeze_nhwc`), in NHWC."""
    b, h, w, c4 = x.shape
    x = x.reshape(b, h, w, c4 // 4, 2, 2).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, 2 * h, 2 * w, c4 // 4)


def _nchw_to_squeezed_nhwc(y: torch.Tensor) -> torch.Tensor:
    b, c, h, w = y.shape
    y = y.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return y.reshape(b, h // 2, w // 2, 4 * c)


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


_FUSED: bool | None = None
#: Frozen passes over large batches run in chunks whose largest activation (the coupling network's
#: hidden layer at the finest level) is about this size: big enough for efficient GEMMs, small
#: enough to stay in cache (2x faster than one 256-image pass for the 1x32x32 MNIST Glow).
CHUNK_BYTES = 4 << 20


def _fused_available() -> bool:
    """Whether oneDNN's conv + ReLU fused op exists here and agrees with ``conv2d`` + ``relu``."""
    global _FUSED
    if _FUSED is None:
        try:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, 3, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
            w = torch.randn(4, 3, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
            b = torch.randn(4, generator=g)
            with torch.no_grad():
                got = torch.ops.mkldnn._convolution_pointwise(
                    x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], ""
                )
                want = F.conv2d(x, w, b, padding=1).relu()
            _FUSED = torch.backends.mkldnn.is_available() and torch.allclose(got, want, atol=1e-5)
        except Exception:  # noqa: BLE001 - any failure means: not available, use the plain ops
            _FUSED = False
    return _FUSED


class _ConvReLU(torch.autograd.Function):
    """``relu(conv2d(x, w, b))`` in one oneDNN call, with the usual gradients."""

    @staticmethod
    def forward(ctx, x, w, b, pad):  # noqa: D102
        out = torch.ops.mkldnn._convolution_pointwise(x, w, b, [pad, pad], [1, 1], [1, 1], 1, "relu", [], "")
        ctx.save_for_backward(x, w, out)
        ctx.pad = pad
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, w, out = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad, out, 0)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad,
            x,
            w,
            [w.shape[0]],
            [1, 1],
            [ctx.pad, ctx.pad],
            [1, 1],
            False,
            [0, 0],
            1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
        )
        return gx, gw, gb, None


def _conv(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    pad: int,
    relu: bool = False,
    fused: bool = False,
) -> torch.Tensor:
    """``x`` (B, H, W, Cin) -> (B, H, W, Cout): a convolution run channels-last."""
    xc = x.permute(0, 3, 1, 2)
    if relu and fused and x.device.type == "cpu" and x.dtype == torch.float32:
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            out = _ConvReLU.apply(xc, w, b, pad)
        else:
            out = torch.ops.mkldnn._convolution_pointwise(
                xc, w, b, [pad, pad], [1, 1], [1, 1], 1, "relu", [], ""
            )
    else:
        out = F.conv2d(xc, w, b, padding=pad)
        if relu:
            out = F.relu(out)
    return out.permute(0, 2, 3, 1)


def _conv3x3_taps(h: torch.Tensor, w9: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A 3x3, padding-1 convolution with few outputs (the coupling's last layer), no gradients.

    ``h`` (B, H, W, Cin) -> (B, H, W, C): one 1x1 convolution to ``9 C`` channels (the 9 taps),
    then the taps are added at their offsets. oneDNN's channels-last kernel for a 3x3 convolution
    with 4-16 outputs rounds 2-3x worse than the NCHW one (which the trained MNIST Glow's latents
    amplify to ~1e-4); this form is as accurate as NCHW and about as fast as channels-last.
    """
    n, hh, ww, _ = h.shape
    c = b.shape[0]
    g = F.conv2d(h.permute(0, 3, 1, 2), w9).permute(0, 2, 3, 1).reshape(n, hh, ww, 9, c)
    g = F.pad(g, (0, 0, 0, 0, 1, 1, 1, 1))  # zero border: out[y, x] += g[y + dy, x + dx, tap]
    out = g[:, 1 : hh + 1, 1 : ww + 1, 4, :] + b
    for k in (0, 1, 2, 3, 5, 6, 7, 8):
        ky, kx = divmod(k, 3)
        out = out + g[:, ky : ky + hh, kx : kx + ww, k, :]
    return out


# ----------------------------------------------------------------- the flow
class _Step:
    """Weights of one GlowBlock in the form the fast path uses (live or frozen copies)."""

    __slots__ = (
        "lin_w",
        "lin_t",
        "lin_logdet",
        "wa",
        "ba",
        "wb",
        "bb",
        "wc",
        "bc",
        "half",
        "mode",
        "clamp",
        "fwd_w",
        "fwd_b",
        "wc9",
    )


class FastGlow:
    """Fast image -> latents (and, frozen, latents -> image) for the Glow built by ``Backbone``.

    Holds no parameters of its own: it reads the flow's modules, so training, ``load_state_dict``
    and ActNorm initialization of the flow are seen by the next call.
    """

    def __init__(self, flow: nf.MultiscaleFlow) -> None:
        levels = _parse(flow)
        if levels is None:
            raise ValueError("FastGlow supports only the Glow built by flowcond's Backbone")
        self.flow = flow
        self.levels = levels
        self._plan: list[list[_Step]] | None = None
        self._plan_key: tuple | None = None
        #: Fused conv + ReLU (with its own backward) when training too, not only when frozen.
        #: Off under ``torch.compile``, which fuses by itself.
        self.fuse_training = True

    def _needs_grad(self, *inputs: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (
            any(t.requires_grad for t in inputs) or any(p.requires_grad for p in self.flow.parameters())
        )

    # ---------------------------------------------------------------- entry
    def inverse_and_log_det(
        self, y: torch.Tensor, log_det: bool = True
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Same as ``flow.inverse_and_log_det(y)`` (``log_det`` is ``None`` when not asked for)."""
        fused = _fused_available()
        if self._needs_grad(y):
            return self._inverse(y, self._live_steps(), log_det=True, fused=fused and self.fuse_training)
        with torch.no_grad():
            plan = self.frozen_plan(y)
            n = self._chunk_images(y.shape[2] * y.shape[3] // 4, y.element_size())
            if len(y) <= n:
                return self._inverse(y, plan, log_det=log_det, fused=fused)
            parts = [self._inverse(c, plan, log_det=log_det, fused=fused) for c in y.split(n)]
            levels = [torch.cat([p[0][i] for p in parts]) for i in range(len(plan))]
            ld = torch.cat([p[1] for p in parts]) if log_det else None
            return levels, ld

    def _chunk_images(self, finest_pixels: int, element_size: int) -> int:
        """Images per pass so the largest hidden activation (the coupling networks' hidden layer
        at the finest level, ``finest_pixels`` = H/2 * W/2) stays about :data:`CHUNK_BYTES`."""
        hidden = max((b.conv_a.out_channels for b in self.levels[-1]), default=1)
        return max(1, CHUNK_BYTES // max(hidden * finest_pixels * element_size, 1))

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor | None:
        """``flow.forward_and_log_det(levels)[0]``, no gradients (``None`` if they are needed)."""
        if self._needs_grad(*levels):
            return None
        with torch.no_grad():
            plan, fused = self.frozen_plan(levels[0]), _fused_available()
            coarsest = levels[0].shape[2] * levels[0].shape[3]
            n = self._chunk_images(coarsest * 4 ** (len(levels) - 1), levels[0].element_size())
            if len(levels[0]) <= n:
                return self._forward(levels, plan, fused)
            chunks = zip(*(z.split(n) for z in levels), strict=True)
            return torch.cat([self._forward(list(c), plan, fused) for c in chunks])

    # ------------------------------------------------------------ weights
    @staticmethod
    def _linear(blk: _Block, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
        """ActNorm.inverse then Invertible1x1Conv.inverse as ``W' (z - t)`` with
        ``W' = W diag(exp(-s))``: returns ``W'``, ``t``, the log|det| per pixel and ``W``.

        The shift stays before the matrix, as in normflows: folding it into a bias ``-W' t``
        would cancel large terms in float32 and lose precision.
        """

        def cast(v: torch.Tensor) -> torch.Tensor:
            return v if dtype is None else v.to(dtype)

        s = cast(blk.actnorm.s).reshape(-1)
        t = cast(blk.actnorm.t).reshape(-1)
        ic = blk.invconv
        if ic is None:
            W = torch.eye(len(s), dtype=s.dtype, device=s.device)
            ld = -s.sum()
        elif ic.use_lu:  # normflows' _assemble_W(inverse=False)
            log_S = cast(ic.log_S)
            L = torch.tril(cast(ic.L), diagonal=-1) + cast(ic.eye)
            U = torch.triu(cast(ic.U), diagonal=1) + torch.diag(cast(ic.sign_S) * torch.exp(log_S))
            W = cast(ic.P) @ L @ U
            ld = log_S.sum() - s.sum()
        else:
            W = cast(ic.W)
            ld = torch.slogdet(W)[1] - s.sum()
        return W * torch.exp(-s)[None, :], t, ld, W

    @staticmethod
    def _coupling_weights(blk: _Block) -> tuple[torch.Tensor, torch.Tensor]:
        """conv_c's weight and bias with output channels reordered to [shift..., scale...]."""
        wc, bc = blk.conv_c.weight, blk.conv_c.bias
        if blk.mode != "additive":
            n = wc.shape[0]
            perm = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2)]).to(wc.device)
            wc, bc = wc.index_select(0, perm), bc.index_select(0, perm)
        return wc, bc

    def _live_steps(self) -> list[list[_Step]]:
        """Differentiable weights, recomputed from the parameters (training)."""
        out = []
        for blocks in self.levels:
            level = []
            for blk in blocks:
                p = _Step()
                p.lin_w, p.lin_t, p.lin_logdet, _ = self._linear(blk)
                p.wa, p.ba = blk.conv_a.weight, blk.conv_a.bias
                p.wb, p.bb = blk.conv_b.weight, blk.conv_b.bias
                p.wc, p.bc = self._coupling_weights(blk)
                p.wc9 = None
                p.half, p.mode, p.clamp = blk.channels // 2, blk.mode, blk.clamp
                level.append(p)
            out.append(level)
        return out

    def _state_key(self, like: torch.Tensor) -> tuple | None:
        tensors = [*self.flow.parameters(), *self.flow.buffers()]
        if any(t.is_inference() for t in tensors):  # no version counters: do not cache
            return None
        return (like.device, like.dtype, *((t.data_ptr(), t._version) for t in tensors))

    def frozen_plan(self, like: torch.Tensor) -> list[list[_Step]]:
        """Folded weights for the device and dtype of ``like``; cached until a weight changes."""
        key = self._state_key(like)
        if key is not None and self._plan is not None and key == self._plan_key:
            return self._plan
        cl = torch.channels_last
        dt = like.dtype
        plan = []
        with torch.no_grad():
            for blocks in self.levels:
                level = []
                for blk in blocks:
                    p = _Step()
                    w, t, ld, W = self._linear(blk, torch.float64)
                    p.lin_w, p.lin_t, p.lin_logdet = w.to(dt), t.to(dt), ld.to(dt)
                    # forward (decode) direction: ActNorm.forward(Invertible1x1Conv.forward(z))
                    e = torch.exp(blk.actnorm.s.reshape(-1).double())
                    p.fwd_w = (e[:, None] * torch.linalg.inv(W)).to(dt)
                    p.fwd_b = blk.actnorm.t.reshape(-1).to(dt).clone()
                    p.wa = blk.conv_a.weight.to(dt).contiguous(memory_format=cl)
                    p.ba = blk.conv_a.bias.to(dt).clone()
                    p.wb = blk.conv_b.weight.to(dt).contiguous(memory_format=cl)
                    p.bb = blk.conv_b.bias.to(dt).clone()
                    wc, bc = self._coupling_weights(blk)
                    p.wc = wc.to(dt).contiguous(memory_format=cl)
                    p.bc = bc.to(dt).clone()
                    # the 3x3 conv as a 1x1 conv to 9 taps x C channels, row (ky * 3 + kx) * C + o
                    n_out, n_in = wc.shape[:2]
                    p.wc9 = (
                        wc.to(dt)
                        .permute(2, 3, 0, 1)
                        .reshape(9 * n_out, n_in, 1, 1)
                        .contiguous(memory_format=cl)
                    )
                    p.half, p.mode, p.clamp = blk.channels // 2, blk.mode, blk.clamp
                    level.append(p)
                plan.append(level)
        if key is not None:
            self._plan, self._plan_key = plan, key
        return plan

    # ---------------------------------------------------------------- run
    def _inverse(
        self, y: torch.Tensor, plan: list[list[_Step]], log_det: bool, fused: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        n_levels = len(plan)
        ld = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device) if log_det else None
        z: list[torch.Tensor] = [y] * n_levels
        x = _nchw_to_squeezed_nhwc(y)
        for i in range(n_levels - 1, -1, -1):
            if i < n_levels - 1:
                x = _squeeze_nhwc(x)
            hw = x.shape[1] * x.shape[2]
            for p in reversed(plan[i]):
                x = F.linear(x - p.lin_t, p.lin_w)
                if ld is not None:
                    ld = ld + p.lin_logdet * hw
                x, ld = self._coupling_inverse(x, p, ld, fused)
            if i == 0:
                z[0] = _to_nchw(x)
            else:
                c = x.shape[-1] // 2
                z[i] = _to_nchw(x[..., c:])
                x = x[..., :c]
        return z, ld

    @staticmethod
    def _net(x1: torch.Tensor, p: _Step, fused: bool) -> torch.Tensor:
        h = _conv(x1, p.wa, p.ba, 1, relu=True, fused=fused)
        h = _conv(h, p.wb, p.bb, 0, relu=True, fused=fused)
        if p.wc9 is not None:
            return _conv3x3_taps(h, p.wc9, p.bc)
        return _conv(h, p.wc, p.bc, 1)

    def _coupling_inverse(
        self, x: torch.Tensor, p: _Step, ld: torch.Tensor | None, fused: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = p.half
        x1 = x[..., :c].contiguous()
        x2 = x[..., c:]
        out = self._net(x1, p, fused)
        if p.mode == "sigmoid":  # normflows: scale = sigmoid(s + 2); z2 = (z2 - shift) * scale
            shift, raw = out[..., :c], out[..., c:] + 2.0
            x2 = (x2 - shift) * torch.sigmoid(raw)
            if ld is not None:
                ld = ld + F.logsigmoid(raw).sum(dim=(1, 2, 3))
        elif p.mode == "softclamp":  # log-scale c tanh(s / c); z2 = (z2 - shift) * exp(-log-scale)
            shift, log_scale = out[..., :c], p.clamp * torch.tanh(out[..., c:] / p.clamp)
            x2 = (x2 - shift) * torch.exp(-log_scale)
            if ld is not None:
                ld = ld - log_scale.sum(dim=(1, 2, 3))
        else:
            x2 = x2 - out
        return torch.cat([x1, x2], dim=-1), ld

    def _forward(self, levels: list[torch.Tensor], plan: list[list[_Step]], fused: bool) -> torch.Tensor:
        x = _to_nhwc(levels[0])
        for i, steps in enumerate(plan):
            if i > 0:
                x = torch.cat([x, _to_nhwc(levels[i])], dim=-1)  # normflows Merge.forward
            for p in steps:
                c = p.half
                x1 = x[..., :c].contiguous()
                out = self._net(x1, p, fused)
                if p.mode == "sigmoid":
                    x2 = x[..., c:] / torch.sigmoid(out[..., c:] + 2.0) + out[..., :c]
                elif p.mode == "softclamp":
                    log_scale = p.clamp * torch.tanh(out[..., c:] / p.clamp)
                    x2 = x[..., c:] * torch.exp(log_scale) + out[..., :c]
                else:
                    x2 = x[..., c:] + out
                x = F.linear(torch.cat([x1, x2], dim=-1), p.fwd_w, p.fwd_b)
            x = _unsqueeze_nhwc(x)
        return _to_nchw(x)
