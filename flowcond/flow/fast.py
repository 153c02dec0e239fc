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
The kernels (layout helpers, convolutions, one Glow step) are in :mod:`flowcond.flow.fast_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass

import normflows as nf
import torch
from torch import nn

from flowcond.flow.coupling import SoftClampedParams
from flowcond.flow.fast_ops import (
    Step,
    coupling_weights,
    fold_linear,
    fused_available,
    nchw_to_squeezed_nhwc,
    retain_freed_memory,
    squeeze_nhwc,
    step_forward,
    step_inverse,
    to_nchw,
    to_nhwc,
    unsqueeze_nhwc,
)

__all__ = ["CHUNK_BYTES", "FastGlow", "retain_freed_memory", "supported"]


#: Frozen passes over large batches run in chunks whose largest activation (the coupling network's
#: hidden layer at the finest level) is about this size: big enough for efficient GEMMs, small
#: enough to stay in cache (2x faster than one 256-image pass for the 1x32x32 MNIST Glow).
CHUNK_BYTES = 4 << 20


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
        self._plan: list[list[Step]] | None = None
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
        self, y: torch.Tensor, log_det: bool = True, amp: torch.dtype | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Same as ``flow.inverse_and_log_det(y)`` (``log_det`` is ``None`` when not asked for).

        ``amp`` (e.g. ``torch.bfloat16``): the coupling networks run under autocast with it,
        everything else in ``y``'s dtype (:mod:`flowcond.flow.precision`)."""
        fused = fused_available() and amp is None
        if self._needs_grad(y):
            steps = self._live_steps()
            return self._inverse(y, steps, log_det=True, fused=fused and self.fuse_training, amp=amp)
        with torch.no_grad():
            plan = self.frozen_plan(y)
            n = self._chunk_images(y.shape[2] * y.shape[3] // 4, y.element_size())
            if len(y) <= n:
                return self._inverse(y, plan, log_det=log_det, fused=fused, amp=amp)
            parts = [self._inverse(c, plan, log_det=log_det, fused=fused, amp=amp) for c in y.split(n)]
            levels = [torch.cat([p[0][i] for p in parts]) for i in range(len(plan))]
            ld = torch.cat([p[1] for p in parts]) if log_det else None
            return levels, ld

    def _chunk_images(self, finest_pixels: int, element_size: int) -> int:
        """Images per pass so the largest hidden activation (the coupling networks' hidden layer
        at the finest level, ``finest_pixels`` = H/2 * W/2) stays about :data:`CHUNK_BYTES`."""
        hidden = max((b.conv_a.out_channels for b in self.levels[-1]), default=1)
        return max(1, CHUNK_BYTES // max(hidden * finest_pixels * element_size, 1))

    def forward(self, levels: list[torch.Tensor], amp: torch.dtype | None = None) -> torch.Tensor | None:
        """``flow.forward_and_log_det(levels)[0]``, no gradients (``None`` if they are needed);
        ``amp`` as :meth:`inverse_and_log_det`."""
        if self._needs_grad(*levels):
            return None
        with torch.no_grad():
            plan, fused = self.frozen_plan(levels[0]), fused_available() and amp is None
            coarsest = levels[0].shape[2] * levels[0].shape[3]
            n = self._chunk_images(coarsest * 4 ** (len(levels) - 1), levels[0].element_size())
            if len(levels[0]) <= n:
                return self._forward(levels, plan, fused, amp)
            chunks = zip(*(z.split(n) for z in levels), strict=True)
            return torch.cat([self._forward(list(c), plan, fused, amp) for c in chunks])

    # ------------------------------------------------------------ weights
    def _live_steps(self) -> list[list[Step]]:
        """Differentiable weights, recomputed from the parameters (training)."""
        out = []
        for blocks in self.levels:
            level = []
            for blk in blocks:
                p = Step()
                p.lin_w, p.lin_t, p.lin_logdet, _ = fold_linear(blk.actnorm, blk.invconv)
                p.wa, p.ba = blk.conv_a.weight, blk.conv_a.bias
                p.wb, p.bb = blk.conv_b.weight, blk.conv_b.bias
                p.wc, p.bc = coupling_weights(blk.conv_c, blk.mode)
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

    def frozen_plan(self, like: torch.Tensor) -> list[list[Step]]:
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
                    p = Step()
                    w, t, ld, W = fold_linear(blk.actnorm, blk.invconv, torch.float64)
                    p.lin_w, p.lin_t, p.lin_logdet = w.to(dt), t.to(dt), ld.to(dt)
                    # forward (decode) direction: ActNorm.forward(Invertible1x1Conv.forward(z))
                    e = torch.exp(blk.actnorm.s.reshape(-1).double())
                    p.fwd_w = (e[:, None] * torch.linalg.inv(W)).to(dt)
                    p.fwd_b = blk.actnorm.t.reshape(-1).to(dt).clone()
                    p.wa = blk.conv_a.weight.to(dt).contiguous(memory_format=cl)
                    p.ba = blk.conv_a.bias.to(dt).clone()
                    p.wb = blk.conv_b.weight.to(dt).contiguous(memory_format=cl)
                    p.bb = blk.conv_b.bias.to(dt).clone()
                    wc, bc = coupling_weights(blk.conv_c, blk.mode)
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
        self,
        y: torch.Tensor,
        plan: list[list[Step]],
        log_det: bool,
        fused: bool,
        amp: torch.dtype | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        n_levels = len(plan)
        ld = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device) if log_det else None
        z: list[torch.Tensor] = [y] * n_levels
        x = nchw_to_squeezed_nhwc(y)
        for i in range(n_levels - 1, -1, -1):
            if i < n_levels - 1:
                x = squeeze_nhwc(x)
            for p in reversed(plan[i]):
                x, ld = step_inverse(x, p, ld, fused, amp)
            if i == 0:
                z[0] = to_nchw(x)
            else:
                c = x.shape[-1] // 2
                z[i] = to_nchw(x[..., c:])
                x = x[..., :c]
        return z, ld

    def _forward(
        self, levels: list[torch.Tensor], plan: list[list[Step]], fused: bool, amp: torch.dtype | None = None
    ) -> torch.Tensor:
        x = to_nhwc(levels[0])
        for i, steps in enumerate(plan):
            if i > 0:
                x = torch.cat([x, to_nhwc(levels[i])], dim=-1)  # normflows Merge.forward
            for p in steps:
                x = step_forward(x, p, fused, amp)
            x = unsqueeze_nhwc(x)
        return to_nchw(x)
