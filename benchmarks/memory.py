"""Peak memory of encoding and attaching at 1x, 4x and 16x the data: the latent cache streams.

Writes folders in CelebA's on-disk layout (generated 178x218 JPEGs, all five annotation files)
of ``base``, 4 x ``base`` and 16 x ``base`` training images (plus the same ``test`` images at
every scale), and a random 64x64x3 Glow (3 levels; only its size matters here). Each measurement
runs in a fresh process and reports its peak resident memory (``ru_maxrss``; the DataLoader
workers decoding JPEGs are reported apart):

* ``encode``: :meth:`LatentCache.build` of the train and test splits (an empty cache);
* ``attach``: ``attach`` of ``ids`` (identities) + ``attributes`` on the cache just built;
* ``load_all``: for contrast, every latent in memory at once (what attach did before the cache
  streamed): this one grows with the data.

    python benchmarks/memory.py                       # 500, 2,000 and 8,000 training images
    python benchmarks/memory.py --base 2000 --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(phase: str, root: str, work: str, steps: int) -> None:
    """One measurement, in this (fresh) process; prints a JSON line."""
    import torch

    from flowcond import AttachConfig, Backbone, attach
    from flowcond.caglow.latents import LatentCache
    from flowcond.datasets import load_dataset

    torch.set_num_threads(1)
    bb_path = Path(work) / "glow64.safetensors"
    backbone = Backbone.load(bb_path)
    cache_dir = Path(work) / "cache" / Path(root).name
    t0 = time.perf_counter()
    if phase == "encode":
        shutil.rmtree(cache_dir, ignore_errors=True)  # encode from an empty cache
        for split in ("train", "test"):
            LatentCache.build(backbone, load_dataset("celeba", split, root=root), cache_dir, progress=False)
    elif phase == "attach":
        config = AttachConfig(
            plugins=["ids", "attributes"],
            plugin_options={"ids": {"field": "identity"}},
            dataset="celeba",
            root=root,
            steps=steps,
            batch_size=64,
            cache_dir=str(cache_dir),
            checkpoint_every=steps,
        )
        attach(bb_path, config, Path(work) / f"{Path(root).name}.heads.safetensors", progress=False)
    else:
        z, _ = LatentCache.build(backbone, load_dataset("celeba", "train", root=root), cache_dir).load_all()
        assert z.shape[1] == backbone.latent_dim
    seconds = time.perf_counter() - t0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peaks = {"peak_mib": self_kb / 1024, "workers_peak_mib": children_kb / 1024}
    print(json.dumps({**peaks, "seconds": seconds}))


def make_backbone(path: Path) -> None:
    import torch

    from flowcond import Backbone, BackboneConfig

    bb = Backbone(BackboneConfig(channels=3, height=64, width=64, levels=3, steps=1, hidden=16, n_bits=5))
    bb.initialize(torch.rand(64, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    bb.freeze()
    bb.save(path, dataset={"name": "celeba", "split": "train"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=500, help="training images at 1x")
    parser.add_argument("--test", type=int, default=100, help="test images (the same at every scale)")
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--steps", type=int, default=5, help="attach steps (not what sets the peak)")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--child", nargs=3, metavar=("PHASE", "ROOT", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.steps)
        return
    from flowcond_plugins.celeba_layout import write_celeba_folder

    work = Path(args.work or tempfile.mkdtemp(prefix="flowcond-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "glow64.safetensors").exists():
        make_backbone(work / "glow64.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for scale in [int(s) for s in args.scales.split(",")]:
        n = args.base * scale
        root = work / f"data-{n}"
        if not (root / "celeba" / "list_eval_partition.txt").exists():
            write_celeba_folder(root, n=n + args.test, n_ids=max(2, n // 20), seed=scale, n_test=args.test)
        row = {"scale": f"{scale}x", "images": n, "latent_MiB": round(n * 12288 * 4 / 2**20)}
        for phase in ("encode", "attach", "load_all"):
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child", phase]
            cmd += [str(root), str(work)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if out.returncode:
                sys.exit(f"{phase} at {scale}x failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            row[phase] = result
        rows.append(row)
        print(
            f"{row['scale']:>4} {n:>6} images ({row['latent_MiB']:>4} MiB of train latents): "
            f"encode {row['encode']['peak_mib']:6.0f} MiB (workers {row['encode']['workers_peak_mib']:.0f}, "
            f"{row['encode']['seconds']:.0f} s), attach {row['attach']['peak_mib']:6.0f} MiB "
            f"({row['attach']['seconds']:.0f} s), load_all {row['load_all']['peak_mib']:6.0f} MiB",
            flush=True,
        )
    (work / "memory.json").write_text(json.dumps(rows, indent=1))
    print(f"peak resident memory (ru_maxrss) per process; details in {work / 'memory.json'}")


if __name__ == "__main__":
    main()
