"""The kernels of the fast Glow path (:mod:`flowcond.flow.fast`), on channels-last tensors.

* :func:`retain_freed_memory`: a process-wide malloc setting that long training runs use;
* NHWC layout helpers: normflows' ``Squeeze`` and NCHW <-> NHWC;
* convolutions run channels-last: oneDNN's fused conv + ReLU (with its own backward) where it
  exists and agrees with ``conv2d`` + ``relu``, and the coupling's last 3x3 convolution as 9 taps;
* one Glow step (ActNorm + invertible 1x1 conv as one affine map, then the coupling) in both
  directions, on the folded weights of a :class:`Step` (:func:`fold_linear`,
  :func:`coupling_weights`).
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

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


# ------------------------------------------------------------- NHWC helpers
def squeeze_nhwc(x: torch.Tensor) -> torch.Tensor:
    """normflows ``Squeeze.inverse``: (C, H, W) -> (4C, H/2, W/2), channel ``4c + 2i + j``; NHWC."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze_nhwc(x: torch.Tensor) -> torch.Tensor:
    """normflows ``Squeeze.forward`` (inverse of :func:`squeeze_nhwc`), in NHWC."""
    b, h, w, c4 = x.shape
    x = x.reshape(b, h, w, c4 // 4, 2, 2).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, 2 * h, 2 * w, c4 // 4)


def nchw_to_squeezed_nhwc(y: torch.Tensor) -> torch.Tensor:
    b, c, h, w = y.shape
    y = y.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return y.reshape(b, h // 2, w // 2, 4 * c)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


_FUSED: bool | None = None


def fused_available() -> bool:
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


def conv(
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


def conv3x3_taps(h: torch.Tensor, w9: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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


# ------------------------------------------------------------- folded weights
def fold_linear(
    actnorm: nn.Module, invconv: nn.Module | None, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, ...]:
    """ActNorm.inverse then Invertible1x1Conv.inverse as ``W' (z - t)`` with
    ``W' = W diag(exp(-s))``: returns ``W'``, ``t``, the log|det| per pixel and ``W``.

    The shift stays before the matrix, as in normflows: folding it into a bias ``-W' t``
    would cancel large terms in float32 and lose precision.
    """

    def cast(v: torch.Tensor) -> torch.Tensor:
        return v if dtype is None else v.to(dtype)

    s = cast(actnorm.s).reshape(-1)
    t = cast(actnorm.t).reshape(-1)
    ic = invconv
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


def coupling_weights(conv_c: nn.Conv2d, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The coupling's last conv weight and bias with output channels reordered to
    [shift..., scale...] (unchanged for ``additive`` coupling)."""
    wc, bc = conv_c.weight, conv_c.bias
    if mode != "additive":
        n = wc.shape[0]
        perm = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2)]).to(wc.device)
        wc, bc = wc.index_select(0, perm), bc.index_select(0, perm)
    return wc, bc


# ------------------------------------------------------------- one Glow step
class Step:
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


def coupling_net(x1: torch.Tensor, p: Step, fused: bool, amp: torch.dtype | None = None) -> torch.Tensor:
    """The coupling's ConvNet2d (3x3, ReLU, 1x1, ReLU, 3x3) on the first half ``x1``.

    ``amp``: run it under ``torch.autocast`` with that dtype (bf16), output cast back to
    ``x1``'s dtype (see :mod:`flowcond.flow.precision`)."""
    if amp is not None:
        with torch.autocast(x1.device.type, dtype=amp):
            out = coupling_net(x1, p, fused=False)
        return out.to(x1.dtype)
    h = conv(x1, p.wa, p.ba, 1, relu=True, fused=fused)
    h = conv(h, p.wb, p.bb, 0, relu=True, fused=fused)
    if p.wc9 is not None:
        return conv3x3_taps(h, p.wc9, p.bc)
    return conv(h, p.wc, p.bc, 1)


def step_inverse(
    x: torch.Tensor, p: Step, ld: torch.Tensor | None, fused: bool, amp: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One GlowBlock, image -> latent direction: ActNorm and 1x1 conv inverse, then the coupling
    inverse; adds the log|det| to ``ld`` unless it is ``None``. ``amp`` as :func:`coupling_net`."""
    x = F.linear(x - p.lin_t, p.lin_w)
    if ld is not None:
        ld = ld + p.lin_logdet * (x.shape[1] * x.shape[2])
    c = p.half
    x1 = x[..., :c].contiguous()
    x2 = x[..., c:]
    out = coupling_net(x1, p, fused, amp)
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


def step_forward(x: torch.Tensor, p: Step, fused: bool, amp: torch.dtype | None = None) -> torch.Tensor:
    """One GlowBlock, latent -> image direction (frozen plan only): coupling, then ActNorm and
    1x1 conv forward."""
    c = p.half
    x1 = x[..., :c].contiguous()
    out = coupling_net(x1, p, fused, amp)
    if p.mode == "sigmoid":
        x2 = x[..., c:] / torch.sigmoid(out[..., c:] + 2.0) + out[..., :c]
    elif p.mode == "softclamp":
        log_scale = p.clamp * torch.tanh(out[..., c:] / p.clamp)
        x2 = x[..., c:] * torch.exp(log_scale) + out[..., :c]
    else:
        x2 = x[..., c:] + out
    return F.linear(torch.cat([x1, x2], dim=-1), p.fwd_w, p.fwd_b)
