"""One measurement of benchmarks/gpu.sh: train the backbone or attach heads, print images/s and peak
memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: peak RSS of the process).

    python benchmarks/gpu.py train --device cuda --precision bf16 --steps 40 --out DIR/b.safetensors
    torchrun --standalone --nproc-per-node 1 benchmarks/gpu.py train ...   (the same, under torchrun)
    python benchmarks/gpu.py attach --device cuda --backbone DIR/b.safetensors --steps 50
    ... --tiny: the 8x8, 2x2 hidden-16 backbone on the CPU-sized data (checks the script itself)

The data is the generated ``gpubench`` dataset (benchmarks/gpu_data/gpubench.py). Paper size:
64x64 RGB, 5 bits, Glow 3x32 (levels x steps), hidden 512.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

PAPER = {"levels": 3, "steps": 32, "hidden": 512, "size": 64, "n": 2048, "batch": 32}
TINY = {"levels": 2, "steps": 2, "hidden": 16, "size": 8, "n": 256, "batch": 16}


def _peak(device) -> str:
    import torch

    if device.type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def _this_gpu(device):
    """Under torchrun ``cuda`` means this process's GPU: the one the run set current."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" else device


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["train", "attach"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    shape = TINY if args.tiny else PAPER
    os.environ.setdefault("GPUBENCH_SIZE", str(shape["size"]))
    os.environ.setdefault("GPUBENCH_N", str(shape["n"]))

    from flowcond import registry
    from flowcond.distributed import is_main, resolve_device

    registry.load_plugins_dir(Path(__file__).parent / "gpu_data")
    device = resolve_device(args.device)
    if args.what == "train":
        from flowcond.flow.config import BackboneConfig, TrainConfig
        from flowcond.flow.train import train_backbone

        size = shape["size"]
        bcfg = BackboneConfig(
            channels=3, height=size, width=size, levels=shape["levels"], steps=shape["steps"],
            hidden=shape["hidden"], n_bits=5,
        )  # fmt: skip
        cfg = TrainConfig(
            dataset="gpubench", batch_size=shape["batch"], epochs=1, max_steps=args.steps, warmup=10,
            device=args.device, precision=args.precision, out=args.out, progress=False,
        )  # fmt: skip
        _, summary = train_backbone(bcfg, cfg)
        t = summary["training"]
        if is_main():
            rate = t["steps"] * shape["batch"] / max(t["seconds"], 1e-9)
            print(
                f"RESULT train {args.label or args.precision}: {rate:.1f} images/s "
                f"({t['steps']} steps of {shape['batch']} in {t['seconds']:.1f} s, first steps included), "
                f"{_peak(_this_gpu(device))}",
                flush=True,
            )
    else:
        from flowcond.caglow.attach import attach
        from flowcond.caglow.config import AttachConfig

        with tempfile.TemporaryDirectory() as tmp:
            config = AttachConfig(
                plugins=["ids"], dataset="gpubench", steps=args.steps, batch_size=64, cache_dir=tmp,
            )  # fmt: skip
            _, s = attach(
                args.backbone, config, Path(tmp) / "heads.safetensors", progress=False, device=args.device
            )
        n = shape["n"] + max(shape["n"] // 4, 8)
        print(
            f"RESULT attach: encoding {n / max(s['encode_seconds'], 1e-9):.1f} images/s ({n} images in "
            f"{s['encode_seconds']:.1f} s), {args.steps / max(s['train_seconds'], 1e-9):.1f} attach steps/s "
            f"(batch 64), {_peak(device)}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
