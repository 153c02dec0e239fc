"""Backbone throughput: training and frozen encoding, flowcond vs a plain normflows Glow.

Run ``python benchmarks/backbone.py`` (``--help`` for options). Prints, in one run:

(a) training images/s of the flowcond backbone (``flowcond.train_backbone.train_step``: bits/dim
    loss, backward, gradient clipping, Adamax step) with its fast path and with ``fast=False``
    (normflows' own modules), and of a plain normflows ``MultiscaleFlow`` Glow of the same shape
    built as in normflows' Glow example (``GlowBlock``, ``Squeeze``, ``Merge``, ``GlowBase``;
    ``model.forward_kld`` loss; Adamax), and the ratio flowcond / normflows;
(b) frozen encode images/s: flowcond ``Backbone.encode`` (frozen, ``torch.inference_mode``) and
    normflows' ``inverse_and_log_det`` (``torch.no_grad``);
(c) the encode's FLOP/s (FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
    normflows path, cross-checked analytically) as a fraction of this machine's fp32 matmul FLOP/s
    (``torch.mm``) measured in the same run; a oneDNN GEMM (1x1 convolution) is shown for context;
(d) with ``--compile``: ``torch.compile`` of the frozen fast encode (compile time, images/s).

Defaults (1x32x32, 3 levels, 10 steps, hidden 128, batch 64) take about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore", message=r".*torch\.lu is deprecated.*")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import normflows as nf  # noqa: E402

from flowcond.backbone import Backbone  # noqa: E402
from flowcond.config import BackboneConfig  # noqa: E402
from flowcond.train_backbone import train_step  # noqa: E402


def normflows_glow(shape: tuple[int, int, int], L: int, K: int, hidden: int) -> nf.MultiscaleFlow:
    """The Glow of normflows' own example (``examples/glow.ipynb``), with an unconditional base."""
    channels = shape[0]
    q0, merges, flows = [], [], []
    for i in range(L):
        flows_ = [nf.flows.GlowBlock(channels * 2 ** (L + 1 - i), hidden, split_mode="channel",
                                     scale=True) for _ in range(K)]
        flows_ += [nf.flows.Squeeze()]
        flows += [flows_]
        if i > 0:
            merges += [nf.flows.Merge()]
            latent_shape = (shape[0] * 2 ** (L - i), shape[1] // 2 ** (L - i),
                            shape[2] // 2 ** (L - i))
        else:
            latent_shape = (shape[0] * 2 ** (L + 1), shape[1] // 2**L, shape[2] // 2**L)
        q0 += [nf.distributions.GlowBase(latent_shape)]
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def timed(fn, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def rate(times: list[float], batch: int) -> float:
    """Images/s from the median time per batch."""
    return batch / statistics.median(times)


def matmul_flops(n: int, iters: int = 10) -> float:
    """Best fp32 ``torch.mm`` FLOP/s of an ``n x n`` product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode():
        t = timed(lambda: torch.mm(a, b), iters, 3)
    return 2 * n**3 / min(t)


def onednn_gemm_flops(k: int, batch: int = 64, side: int = 16, iters: int = 10) -> float:
    """A ``(batch*side*side) x k x k`` GEMM run as a channels-last 1x1 convolution (oneDNN)."""
    x = torch.randn(batch, k, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(k, k, 1, 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        t = timed(lambda: torch.nn.functional.conv2d(x, w), iters, 3)
    return 2 * batch * side * side * k * k / min(t)


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def analytic_encode_flops(cfg: BackboneConfig) -> int:
    """Convolution FLOPs (2 per multiply-add) of one image through the inverse flow."""
    C, H, W = cfg.image_shape
    total = 0
    for i in range(cfg.levels):  # normflows level i works on C * 2**(L+1-i) channels
        ch = C * 2 ** (cfg.levels + 1 - i)
        pix = (H // 2 ** (cfg.levels - i)) * (W // 2 ** (cfg.levels - i))
        out = ch // 2 * (2 if cfg.coupling == "affine" else 1)
        per_step = 9 * (ch // 2) * cfg.hidden + cfg.hidden * cfg.hidden + 9 * cfg.hidden * out
        per_step += ch * ch  # the invertible 1x1 convolution
        total += 2 * pix * per_step * cfg.steps
    return total


def main() -> None:
    defaults = BackboneConfig()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="1x32x32", help="CxHxW [1x32x32]")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--scale-map", choices=["softclamp", "sigmoid"], default=defaults.scale_map,
                   help="flowcond's affine coupling scale [flowcond's default]")
    p.add_argument("--batch", type=int, default=64, help="training batch [64]")
    p.add_argument("--encode-batch", type=int, default=256, help="frozen encode batch [256]")
    p.add_argument("--iters", type=int, default=8, help="timed iterations per measurement [8]")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first [2]")
    p.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    p.add_argument("--matmul-n", type=int, default=2048, help="side of the torch.mm reference")
    p.add_argument("--skip-train", action="store_true", help="only (b) and (c)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (d)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.lower().split("x"))
    cfg = BackboneConfig(channels=shape[0], height=shape[1], width=shape[2], levels=args.levels,
                         steps=args.steps, hidden=args.hidden, scale_map=args.scale_map)
    print(f"torch {torch.__version__}, normflows {getattr(nf, '__version__', '?')}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"oneDNN {torch.backends.mkldnn.is_available()}")
    print(f"Glow {args.shape}, levels {cfg.levels} x steps {cfg.steps}, hidden {cfg.hidden}, "
          f"flowcond scale map {cfg.scale_map}; training batch {args.batch}, encode batch "
          f"{args.encode_batch}; median of {args.iters} timed iterations after {args.warmup}")

    g = torch.Generator().manual_seed(0)
    x_train = torch.rand(args.batch, *shape, generator=g)
    noise = torch.rand(args.batch, *shape, generator=g)
    x_enc = torch.rand(args.encode_batch, *shape, generator=g)

    # ------------------------------------------------------------ (a) training
    if not args.skip_train:
        results = {}
        for fast in (True, False):
            model = Backbone(cfg)
            model.fast = fast
            model.initialize(x_train)
            opt = torch.optim.Adamax(model.parameters(), lr=1e-3, weight_decay=1e-5)
            t = timed(lambda m=model, o=opt: train_step(m, o, x_train, noise, 1e-3, 50.0),
                      args.iters, args.warmup)
            results[fast] = rate(t, args.batch)
            del model, opt

        torch.manual_seed(0)
        plain = normflows_glow(shape, cfg.levels, cfg.steps, cfg.hidden)
        y = (x_train * 255 + noise) / 256  # normflows example: x * 255/256 + U(0, 1/256)
        with torch.no_grad():
            plain(y)  # ActNorm data-dependent initialization
        popt = torch.optim.Adamax(plain.parameters(), lr=1e-3, weight_decay=1e-5)

        def plain_step():
            loss = plain.forward_kld(y)
            popt.zero_grad()
            if torch.isfinite(loss):  # the example skips NaN batches
                loss.backward()
                popt.step()

        train_plain = rate(timed(plain_step, args.iters, args.warmup), args.batch)
        del plain, popt
        print("\n(a) training, images/s")
        print(f"  normflows Glow example (forward_kld, Adamax)     {train_plain:8.1f}")
        print(f"  flowcond train_step, fast=False (normflows code) {results[False]:8.1f}")
        print(f"  flowcond train_step, fast path (default)         {results[True]:8.1f}")
        print(f"  ratio flowcond / normflows                       {results[True] / train_plain:8.2f}x"
              "   (target >= 1.30x)")

    # --------------------------------------------------------- (b) encoding
    model = Backbone(cfg)
    model.initialize(x_train)
    with torch.no_grad():  # move off the identity couplings of a fresh model
        for prm in model.parameters():
            prm.add_(0.01 * torch.randn(prm.shape, generator=g))
    model.freeze()
    yb = model.preprocess(x_enc)
    with torch.no_grad():
        enc_plain = rate(timed(lambda: model.flow.inverse_and_log_det(yb), max(2, args.iters // 2), 1),
                         args.encode_batch)
        enc_small = rate(timed(lambda: model.encode(x_enc[: args.batch]), args.iters, args.warmup),
                         args.batch)
    with torch.inference_mode():
        enc_fast = rate(timed(lambda: model.encode(x_enc), args.iters, args.warmup),
                        args.encode_batch)
        model.fast = False
        z_ref = model.encode(x_enc[:32])
        model.fast = True
        z_fast = model.encode(x_enc[:32])
    max_err = (z_ref - z_fast).abs().max().item()
    print("\n(b) frozen encode, images/s")
    print(f"  normflows inverse_and_log_det, no_grad, batch {args.encode_batch:<5}  {enc_plain:8.1f}")
    print(f"  flowcond encode, no_grad, batch {args.batch:<5}                {enc_small:8.1f}")
    print(f"  flowcond encode, inference_mode, batch {args.encode_batch:<5}         {enc_fast:8.1f}")
    print(f"  ratio flowcond / normflows                              {enc_fast / enc_plain:8.2f}x"
          f"   (max |z_fast - z_normflows| = {max_err:.1e})")

    # ----------------------------------------------------------- (c) FLOP/s
    with torch.no_grad():
        counted = count_flops(lambda: model.flow.inverse_and_log_det(yb[:1]))
    analytic = analytic_encode_flops(cfg)
    mm = max(matmul_flops(args.matmul_n), matmul_flops(args.matmul_n // 2))
    dnn = onednn_gemm_flops(cfg.hidden)
    achieved = counted * enc_fast
    print("\n(c) encode FLOP/s")
    print(f"  FLOPs per image: {counted / 1e9:.4f} GFLOP counted (FlopCounterMode), "
          f"{analytic / 1e9:.4f} GFLOP analytic (convolutions)")
    print(f"  fp32 matmul, torch.mm {args.matmul_n}^2 / {args.matmul_n // 2}^2 (best): "
          f"{mm / 1e9:8.1f} GFLOP/s")
    print(f"  fp32 GEMM as a oneDNN 1x1 conv (16384 x {cfg.hidden} x {cfg.hidden}), context: "
          f"{dnn / 1e9:8.1f} GFLOP/s")
    print(f"  flowcond frozen encode: {achieved / 1e9:8.1f} GFLOP/s = {achieved / mm:6.1%} of torch.mm"
          f" (target >= 60%), {achieved / dnn:6.1%} of the oneDNN GEMM")
    print(f"  normflows encode:       {counted * enc_plain / 1e9:8.1f} GFLOP/s = "
          f"{counted * enc_plain / mm:6.1%} of torch.mm")

    # ------------------------------------------------------ (d) torch.compile
    if args.compile:
        print("\n(d) torch.compile of the frozen fast encode")
        fg = model._fast
        plan = fg.frozen_plan(yb)

        def fast_encode(y):
            return fg._inverse(y, plan, log_det=False, fused=True)[0]

        try:
            t0 = time.perf_counter()
            compiled = torch.compile(fast_encode)
            with torch.inference_mode():
                out = compiled(yb)
            compile_s = time.perf_counter() - t0
            with torch.inference_mode():
                ref = fast_encode(yb)
                err = max((a - b).abs().max().item() for a, b in zip(out, ref, strict=True))
                enc_c = rate(timed(lambda: compiled(yb), args.iters, args.warmup), args.encode_batch)
                enc_e = rate(timed(lambda: fast_encode(yb), args.iters, args.warmup), args.encode_batch)
            print(f"  compile + first call {compile_s:.1f} s; compiled {enc_c:.1f} images/s vs eager "
                  f"{enc_e:.1f} images/s (flow part only), max difference {err:.1e}")
        except Exception as e:  # noqa: BLE001 - report, do not fail the benchmark
            print(f"  torch.compile failed here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


if __name__ == "__main__":
    main()
