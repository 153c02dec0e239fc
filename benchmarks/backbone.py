"""Backbone throughput: training and frozen encoding, flowcond vs a plain normflows Glow.

Run ``python benchmarks/backbone.py`` (``--help`` for options). Prints, in one run:

(a) training images/s of the flowcond backbone (``flowcond.flow.train.train_step``: bits/dim
    loss, backward, gradient clipping, Adamax step, set up as ``train_backbone`` does) and of a
    plain normflows ``MultiscaleFlow`` Glow of the same shape built as in normflows' Glow example
    (``GlowBlock``, ``Squeeze``, ``Merge``, ``GlowBase``; ``model.forward_kld`` loss; Adamax), and
    their ratio; plus two rows that split the gain (flowcond with ``fast=False``, normflows with
    flowcond's malloc setting);
(b) frozen encode images/s: flowcond ``Backbone.encode`` (frozen, ``torch.inference_mode``) and
    normflows' ``inverse_and_log_det`` (``torch.no_grad``, at its best of 3 chunk sizes);
(c) the encode's FLOP/s (FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
    normflows path, cross-checked analytically) as a fraction of this machine's fp32 matmul FLOP/s
    (``torch.mm``) measured in the same run; a oneDNN GEMM (1x1 convolution) is shown for context;
(d) with ``--compile``: ``torch.compile`` of the training loss and of the frozen encode.

Every measurement runs in its own fresh process (allocator settings and library caches do not
leak from one to the next), ``--rounds`` times, interleaved. A row shows the best process's median
time per iteration (other load only ever slows a process down) and every process's figure. The
CPU time other processes used meanwhile is printed: on a 2-core machine a single busy neighbour
can slow 2-thread PyTorch down many times, so treat runs that report it with care.
Defaults (1x32x32, 3 levels x 10 steps, hidden 128, batch 64) take about two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.lu is deprecated.*")
warnings.filterwarnings("ignore", category=DeprecationWarning)

TRAIN_KINDS = ["normflows", "flowcond", "flowcond-nofast", "normflows-retain"]
ENCODE_KINDS = ["encode-normflows", "encode-flowcond"]


# ------------------------------------------------------------------ workers
def normflows_glow(shape, L: int, K: int, hidden: int):
    """The Glow of normflows' own example (``examples/glow.ipynb``), with an unconditional base."""
    import normflows as nf

    channels = shape[0]
    q0, merges, flows = [], [], []
    for i in range(L):
        flows_ = [
            nf.flows.GlowBlock(channels * 2 ** (L + 1 - i), hidden, split_mode="channel", scale=True)
            for _ in range(K)
        ]
        flows_ += [nf.flows.Squeeze()]
        flows += [flows_]
        if i > 0:
            merges += [nf.flows.Merge()]
            latent_shape = (shape[0] * 2 ** (L - i), shape[1] // 2 ** (L - i), shape[2] // 2 ** (L - i))
        else:
            latent_shape = (shape[0] * 2 ** (L + 1), shape[1] // 2**L, shape[2] // 2**L)
        q0 += [nf.distributions.GlowBase(latent_shape)]
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def _timed(fn, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _config(args):
    from flowcond.flow.config import BackboneConfig

    shape = tuple(int(s) for s in args.shape.lower().split("x"))
    return BackboneConfig(
        channels=shape[0],
        height=shape[1],
        width=shape[2],
        levels=args.levels,
        steps=args.steps,
        hidden=args.hidden,
        scale_map=args.scale_map,
    )


def worker(kind: str, args) -> dict:
    """One measurement in this (fresh) process; returns seconds per iteration and extras."""
    import torch

    from flowcond.flow import fast_ops as fastflow
    from flowcond.flow.backbone import Backbone
    from flowcond.flow.train import CompiledLoss, train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _config(args)
    shape = cfg.image_shape
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, *shape, generator=g)
    noise = torch.rand(args.batch, *shape, generator=g)
    out: dict = {"threads": torch.get_num_threads()}

    if kind in ("flowcond", "flowcond-nofast", "flowcond-compile"):
        fast = kind != "flowcond-nofast"
        if fast:
            out["retained"] = fastflow.retain_freed_memory()  # as train_backbone does
        model = Backbone(cfg)
        model.fast = fast
        model.initialize(x)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-3, weight_decay=1e-5)
        if kind == "flowcond-compile":
            loss_fn = CompiledLoss(model)  # exactly what train-backbone --compile uses

            def step():
                train_step(model, opt, x, noise, 1e-3, 50.0, loss_fn)

            t0 = time.perf_counter()
            step()
            out["compile_s"] = time.perf_counter() - t0
            if loss_fn.failed:
                raise RuntimeError(f"torch.compile failed: {loss_fn.failed}")
            out["times"] = _timed(step, args.iters, args.warmup)
        else:
            out["times"] = _timed(
                lambda: train_step(model, opt, x, noise, 1e-3, 50.0), args.iters, args.warmup
            )
        out["images"] = args.batch
    elif kind in ("normflows", "normflows-retain"):
        if kind == "normflows-retain":
            out["retained"] = fastflow.retain_freed_memory()
        torch.manual_seed(0)
        plain = normflows_glow(shape, cfg.levels, cfg.steps, cfg.hidden)
        y = (x * 255 + noise) / 256  # normflows example: x * 255/256 + U(0, 1/256)
        with torch.no_grad():
            plain(y)  # ActNorm data-dependent initialization
        opt = torch.optim.Adamax(plain.parameters(), lr=1e-3, weight_decay=1e-5)

        def plain_step():
            loss = plain.forward_kld(y)
            opt.zero_grad()
            if torch.isfinite(loss):  # the example skips NaN batches
                loss.backward()
                opt.step()

        out["times"] = _timed(plain_step, args.iters, args.warmup)
        out["images"] = args.batch
    elif kind in ("encode-normflows", "encode-flowcond", "encode-flowcond-compile"):
        model = Backbone(cfg)
        model.initialize(x)
        with torch.no_grad():  # move off the identity couplings of a fresh model
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        model.freeze()
        xe = torch.rand(args.encode_batch, *shape, generator=g)
        ye = model.preprocess(xe)
        if kind == "encode-normflows":
            best = None
            for n in (len(ye), args.batch, 32):  # normflows at its best chunk size, to be fair
                with torch.no_grad():
                    t = _timed(
                        lambda n=n: [model.flow.inverse_and_log_det(c) for c in ye.split(n)],
                        args.iters,
                        args.warmup,
                    )
                if best is None or statistics.median(t) < statistics.median(best):
                    best, out["chunk"] = t, n
            out["times"] = best
            from torch.utils.flop_counter import FlopCounterMode

            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model.flow.inverse_and_log_det(ye[:1])
            out["flops_per_image"] = counter.get_total_flops()
        elif kind == "encode-flowcond":
            with torch.inference_mode():
                out["times"] = _timed(lambda: model.encode(xe), args.iters, args.warmup)
                model.fast = False
                ref = model.encode(xe[:32])
                model.fast = True
                out["max_abs_diff"] = (model.encode(xe[:32]) - ref).abs().max().item()
        else:
            fg = model._fast
            plan = fg.frozen_plan(ye)
            n = fg._chunk_images(ye.shape[2] * ye.shape[3] // 4, ye.element_size())

            def enc(y):
                return [fg._inverse(c, plan, log_det=False, fused=True)[0] for c in y.split(n)]

            compiled = torch.compile(enc)
            t0 = time.perf_counter()
            # no_grad, not inference_mode: compiling this under inference_mode hangs with
            # torch 2.14 (the in-place tap additions of fast_ops.conv3x3_taps)
            with torch.no_grad():
                compiled(ye)
                out["compile_s"] = time.perf_counter() - t0
                out["times"] = _timed(lambda: compiled(ye), args.iters, args.warmup)
        out["images"] = args.encode_batch
    elif kind == "matmul":
        best = 0.0
        for n in (args.matmul_n, args.matmul_n // 2):
            a, b = torch.randn(n, n), torch.randn(n, n)
            with torch.inference_mode():
                best = max(best, 2 * n**3 / min(_timed(lambda a=a, b=b: torch.mm(a, b), 10, 3)))
        out["mm_flops"] = best
        k, side = cfg.hidden, 16
        xc = torch.randn(64, k, side, side).contiguous(memory_format=torch.channels_last)
        w = torch.randn(k, k, 1, 1).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t = min(_timed(lambda: torch.nn.functional.conv2d(xc, w), 10, 3))
        out["onednn_flops"] = 2 * 64 * side * side * k * k / t
        out["times"] = []
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    return out


# --------------------------------------------------------------- orchestration
def _busy_jiffies() -> int | None:
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        return user + nice + system + irq + softirq + steal
    except (OSError, ValueError):
        return None


def run_worker(kind: str, argv: list[str], timeout: float) -> dict:
    """Run one measurement in a fresh process; its result comes back through a file (pipes could
    be held open by helper processes it starts, e.g. torch.compile's compile workers)."""
    before = _busy_jiffies()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out, log = os.path.join(tmp, "result.json"), os.path.join(tmp, "log.txt")
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", kind, "--result", out]
        with open(log, "w") as logf:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
            )
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"error": f"timed out after {timeout:.0f} s"}
            finally:
                try:  # helper processes left behind by the worker
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        wall = time.perf_counter() - t0
        if code != 0 or not os.path.exists(out):
            with open(log) as f:
                lines = [ln for ln in f.read().splitlines() if ln.strip()]
            return {"error": (lines or [f"exit code {code}"])[-1]}
        with open(out) as f:
            result = json.load(f)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = _busy_jiffies()
    if before is not None and after is not None:
        own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        total = (after - before) / os.sysconf("SC_CLK_TCK")
        result["others_cores"] = max(0.0, total - own) / wall
    return result


def main() -> None:
    from flowcond.flow.config import BackboneConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="1x32x32", help="CxHxW [1x32x32]")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument(
        "--scale-map",
        choices=["softclamp", "sigmoid"],
        default=BackboneConfig().scale_map,
        help="flowcond's affine coupling scale [flowcond's default]",
    )
    p.add_argument("--batch", type=int, default=64, help="training batch [64]")
    p.add_argument("--encode-batch", type=int, default=256, help="frozen encode batch [256]")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per process [5]")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first [2]")
    p.add_argument("--rounds", type=int, default=2, help="processes per measurement [2]")
    p.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    p.add_argument("--matmul-n", type=int, default=2048, help="side of the torch.mm reference")
    p.add_argument("--skip-train", action="store_true", help="only (b) and (c)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (d)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per measurement process")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = worker(args.worker, args)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return
    argv = list(sys.argv[1:])

    import normflows as nf
    import torch

    cfg = _config(args)
    print(
        f"torch {torch.__version__}, normflows {getattr(nf, '__version__', '?')}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads or torch.get_num_threads()} torch threads, "
        f"oneDNN {torch.backends.mkldnn.is_available()}"
    )
    print(
        f"Glow {args.shape}, {cfg.levels} levels x {cfg.steps} steps, hidden {cfg.hidden}, "
        f"flowcond scale map {cfg.scale_map}; training batch {args.batch}, encode batch "
        f"{args.encode_batch}; {args.rounds} fresh processes x {args.iters} timed iterations "
        f"(after {args.warmup}) per row"
    )

    kinds = (
        ["matmul"]
        + ([] if args.skip_train else TRAIN_KINDS)
        + ENCODE_KINDS
        + (["flowcond-compile", "encode-flowcond-compile"] if args.compile else [])
    )
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    t_start = time.perf_counter()
    for r in range(args.rounds):
        order = kinds if r % 2 == 0 else kinds[::-1]
        for kind in order:
            if kind.endswith("compile") and r > 0:
                continue  # compiling takes minutes: once is enough
            results[kind].append(run_worker(kind, argv, args.timeout))

    def rate(kind: str) -> float | None:
        """The best process's median: other load only ever slows a process down."""
        runs = [x for x in results.get(kind, []) if "times" in x and x["times"]]
        if not runs:
            return None
        return max(x["images"] / statistics.median(x["times"]) for x in runs)

    def spread(kind: str) -> str:
        runs = [x for x in results.get(kind, []) if x.get("times")]
        per = [x["images"] / statistics.median(x["times"]) for x in runs]
        others = max((x.get("others_cores", 0.0) for x in results.get(kind, [])), default=0.0)
        errs = [x["error"] for x in results.get(kind, []) if "error" in x]
        note = f"  (processes: {', '.join(f'{v:.0f}' for v in per)}; others used <= {others:.2f} cores)"
        return note + (f"  FAILED: {errs[0]}" if errs else "")

    if not args.skip_train:
        nfr, fcr = rate("normflows"), rate("flowcond")
        print("\n(a) training, images/s")
        rows = [
            ("normflows Glow example (forward_kld, Adamax)", "normflows"),
            ("flowcond train_step (fast path, as train_backbone)", "flowcond"),
            ("  flowcond with fast=False (normflows modules)", "flowcond-nofast"),
            ("  normflows example + flowcond's malloc setting", "normflows-retain"),
        ]
        for label, kind in rows:
            v = rate(kind)
            print(f"  {label:<52} {v if v is None else round(v, 1)!s:>8}{spread(kind)}")
        if nfr and fcr:
            print(f"  ratio flowcond / normflows {fcr / nfr:.2f}x (target >= 1.30x)", end="")
            nfr2 = rate("normflows-retain")
            print(f"; with the same malloc setting {fcr / nfr2:.2f}x" if nfr2 else "")

    enf, efc = rate("encode-normflows"), rate("encode-flowcond")
    print("\n(b) frozen encode, images/s")
    chunk = next((x["chunk"] for x in results["encode-normflows"] if "chunk" in x), "?")
    label = f"normflows inverse_and_log_det, no_grad, chunks of {chunk}"
    print(f"  {label:<52} {enf if enf is None else round(enf, 1)!s:>8}{spread('encode-normflows')}")
    print(
        f"  {'flowcond Backbone.encode, frozen, inference_mode':<52} "
        f"{efc if efc is None else round(efc, 1)!s:>8}{spread('encode-flowcond')}"
    )
    diffs = [x.get("max_abs_diff") for x in results["encode-flowcond"] if "max_abs_diff" in x]
    if enf and efc:
        print(f"  ratio flowcond / normflows {efc / enf:.2f}x; max |z_fast - z_normflows| = {max(diffs):.1e}")

    mm = max((x.get("mm_flops", 0.0) for x in results["matmul"]), default=0.0)
    dnn = max((x.get("onednn_flops", 0.0) for x in results["matmul"]), default=0.0)
    flops = next((x["flops_per_image"] for x in results["encode-normflows"] if "flops_per_image" in x), None)
    print("\n(c) encode FLOP/s")
    if flops and mm and efc:
        analytic = _analytic_flops(cfg)
        achieved = flops * efc
        print(
            f"  FLOPs per image: {flops / 1e9:.4f} GFLOP counted (FlopCounterMode), "
            f"{analytic / 1e9:.4f} GFLOP analytic (convolutions)"
        )
        print(
            f"  fp32 torch.mm ({args.matmul_n}^2 and {args.matmul_n // 2}^2, best): "
            f"{mm / 1e9:.1f} GFLOP/s;  fp32 GEMM as oneDNN 1x1 conv (16384x{cfg.hidden}"
            f"x{cfg.hidden}), context: {dnn / 1e9:.1f} GFLOP/s"
        )
        print(
            f"  flowcond frozen encode: {achieved / 1e9:.1f} GFLOP/s = {achieved / mm:.0%} of "
            f"torch.mm (target >= 60%), {achieved / dnn:.0%} of the oneDNN GEMM"
        )
        if enf:
            print(
                f"  normflows encode:       {flops * enf / 1e9:.1f} GFLOP/s = "
                f"{flops * enf / mm:.0%} of torch.mm"
            )

    if args.compile:
        print("\n(d) torch.compile (optional; not used by flowcond by default)")
        for kind, eager in (("flowcond-compile", "flowcond"), ("encode-flowcond-compile", "encode-flowcond")):
            res = results[kind][0] if results[kind] else {"error": "not run"}
            if "error" in res:
                print(f"  {kind}: failed or unavailable here: {res['error'][:200]}")
                continue
            v = rate(kind)
            print(
                f"  {kind}: compile + first call {res['compile_s']:.0f} s, then {v:.1f} "
                f"images/s (eager {rate(eager):.1f})"
            )
    others = max((x.get("others_cores", 0.0) for rs in results.values() for x in rs), default=0.0)
    print(
        f"\ntotal {time.perf_counter() - t_start:.0f} s; other processes used up to "
        f"{others:.2f} cores during a measurement"
        + ("  <- figures distorted by other load" if others > 0.15 else "")
    )


def _analytic_flops(cfg) -> int:
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


if __name__ == "__main__":
    main()
