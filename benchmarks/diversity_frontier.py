"""Accuracy against within-class diversity of CAGlow heads, per attach variant and seed.

Attaches ``ids`` + ``attributes`` heads (``mnist5k-morpho``, joint prior) to the shipped backbone
with each variant's attach options, for each seed, and measures them as ``benchmarks/diversity.py``
does (evaluator accuracy against the requested class; mean pairwise L2 distance within a class, in
pixels, against real test digits); prints one line per run and a mean ± std table::

    python benchmarks/diversity_frontier.py --variants paper,classifier-noise --seeds 0,1,2
    python benchmarks/diversity_frontier.py --variant 'mine={"lambdas": {"MS": 0.5}}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diversity import ACCURACY, RATIO, diversity, measure

from flowcond.caglow.attach import AttachConfig, attach
from flowcond.caglow.heads import Heads
from flowcond.datasets import load_dataset
from flowcond.paper.evaluator import Evaluator

ROOT = Path(__file__).resolve().parent.parent
#: the variants measured for the README (attach options on top of the paper's defaults)
VARIANTS: dict[str, dict] = {
    "paper": {},
    "ids-only": {"plugins": ["ids"]},
    "classifier-noise": {"classifier_noise": 1.0},
    "ids-only-classifier-noise": {"plugins": ["ids"], "classifier_noise": 1.0},
    "mode-seeking-0.3": {"lambdas": {"MS": 0.3}},
    "mode-seeking-1": {"lambdas": {"MS": 1.0}},
    "fm-mean": {"feature_matching": "mean"},
    "conditional-discriminator": {"conditional_discriminator": True},
    "trunk-256": {"trunk_hidden": 256},
    "supervision-conv": {"supervision": "conv"},
    "6000-steps": {"steps": 6000},
    "ids-continuous": {"plugins": ["ids", "continuous"]},
    "with-codes": {"plugins": ["ids", "attributes", "codes"]},
    "with-codes-classifier-noise": {"plugins": ["ids", "attributes", "codes"], "classifier_noise": 1.0},
    "batch-512": {"batch_size": 512},
    "codes-8-classifier-noise": {
        "plugins": ["ids", "attributes", "codes"],
        "plugin_options": {"codes": {"n": 8}},
        "classifier_noise": 1.0,
    },
    "image-check": {"image_check": 500},
    "ids-only-image-check": {"plugins": ["ids"], "image_check": 500},
    "mode-seeking-1-image-check": {"lambdas": {"MS": 1.0}, "image_check": 500},
    "mode-seeking-1-image-check-codes": {
        "plugins": ["ids", "attributes", "codes"],
        "lambdas": {"MS": 1.0},
        "image_check": 500,
    },
    # the main job's heads, and the same without the attributes
    "main-job": {"lambdas": {"MS": 1.5}, "image_check": 500},
    "ids-only-main-job": {"plugins": ["ids"], "lambdas": {"MS": 1.5}, "image_check": 500},
}


def sd(values: list[float]) -> float:
    """Sample standard deviation (0 for one value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default=str(ROOT / "examples/backbones/glow_mnist5k.safetensors"))
    p.add_argument("--evaluator", default=str(ROOT / "examples/evaluators/mnist5k_evaluator.safetensors"))
    p.add_argument("--variants", default="paper,classifier-noise", help=f"of: {', '.join(VARIANTS)}")
    p.add_argument("--variant", action="append", default=[], help="NAME=JSON attach options (repeatable)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the samples (every run)")
    p.add_argument("--keep", default=None, help="folder to keep the heads files in (default: none kept)")
    a = p.parse_args()
    torch.set_num_threads(1)
    variants = {name: VARIANTS[name] for name in a.variants.split(",") if name}
    for item in a.variant:
        name, _, options = item.partition("=")
        variants[name] = json.loads(options)
    seeds = [int(s) for s in a.seeds.split(",")]
    ev = Evaluator.load(a.evaluator)
    test = load_dataset("mnist5k-morpho", "test")
    real = diversity(test.all_images(), test.labels["digit"], ev.config.n_outputs)
    print(
        f"real test digits: within-class diversity {real:.2f}; "
        f"target >= {RATIO * real:.2f} at accuracy >= {ACCURACY}"
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, options in variants.items():
            for seed in seeds:
                cfg = {"plugins": ["ids", "attributes"], "dataset": "mnist5k-morpho", "seed": seed, **options}
                out = folder / f"{name}-{seed}.heads.safetensors"
                t0 = time.perf_counter()
                attach(a.backbone, AttachConfig(**cfg), out, progress=False)
                m = measure(Heads.load(out), ev, a.per_class, a.temperature, "joint", a.sample_seed)
                rows.setdefault(name, []).append(m)
                print(
                    f"{name} seed {seed}: accuracy {m['accuracy']:.3f}, diversity {m['diversity']:.2f} "
                    f"({time.perf_counter() - t0:.0f} s)"
                    + (f"; image check: {m['check']}" if "check" in m else ""),
                    flush=True,
                )
    print("\n| variant | accuracy | diversity (pixels) | x real | seeds |\n|---|---:|---:|---:|---:|")
    for name, ms in rows.items():
        acc = [m["accuracy"] for m in ms]
        div = [m["diversity"] for m in ms]
        print(
            f"| {name} | {statistics.mean(acc):.3f} ± {sd(acc):.3f} | {statistics.mean(div):.2f} ± "
            f"{sd(div):.2f} | {statistics.mean(div) / real:.2f} | {len(ms)} |"
        )


if __name__ == "__main__":
    main()
