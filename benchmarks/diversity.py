"""Within-class diversity and evaluator accuracy of CAGlow samples, against real test digits.

For each heads file and temperature: ``--per-class`` samples of every class (the class condition
given, the other supervised conditions drawn with ``--prior``, codes from their prior), judged by
the class evaluator (accuracy against the requested class) and by their within-class diversity
(mean pairwise L2 distance in pixels, averaged over classes); the same diversity of the real test
images, and whether the issue-13 criterion holds (diversity >= 0.8x real, accuracy >= 0.97)::

    python benchmarks/diversity.py --heads digits.heads.safetensors --temperatures 0.6,0.8,1.0
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flowcond.caglow.heads import Heads
from flowcond.datasets import load_dataset
from flowcond.paper.evaluator import Evaluator
from flowcond.paper.metrics import mean_pairwise_distance

RATIO, ACCURACY = 0.8, 0.97


def class_kind(heads: Heads) -> str:
    """The attached kind taking a categorical label field as its targets (the class)."""
    names = [n for n, k in heads.kinds.items() if getattr(k, "label_kind", None) == "categorical"]
    if not names:
        raise SystemExit(f"no categorical condition attached (kinds: {', '.join(heads.kinds)})")
    return names[0]


def diversity(x: torch.Tensor, ids: torch.Tensor, classes: int) -> float:
    """Mean over classes of the mean pairwise L2 distance (pixels) within the class."""
    return float(np.mean([mean_pairwise_distance(x[ids == k].float()) for k in range(classes)]))


@torch.no_grad()
def measure(
    heads: Heads, ev: Evaluator, per_class: int, T: float, prior: str, seed: int, check: bool = True
) -> dict:
    """Accuracy and diversity of ``per_class`` samples of every class; with ``check`` and an image
    check in the heads, checked sampling (its report under ``check``)."""
    name = class_kind(heads)
    K = ev.config.n_outputs
    ids = torch.arange(K).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    targets = heads.sample_targets(len(ids), {name: ids}, g, prior)
    x, _, report = heads.checked(targets, T, g, [name] if check else [], prior)
    acc = float((ev.predict(x) == ids).float().mean())
    out = {"accuracy": acc, "diversity": diversity(x, ids, K)}
    if report["checked"]:
        out["check"] = report
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", action="append", required=True, help="heads file (repeatable)")
    p.add_argument("--evaluator", default="examples/evaluators/mnist5k_evaluator.safetensors")
    p.add_argument("--dataset", default=None, help="default: the backbone's")
    p.add_argument("--temperatures", default="0.6,0.8")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--prior", choices=["joint", "independent"], default="joint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--no-check", dest="check", action="store_false", help="plain sampling even with an image check"
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ev = Evaluator.load(a.evaluator)
    temps = [float(t) for t in a.temperatures.split(",")]
    real = None
    for path in a.heads:
        heads = Heads.load(path)
        if real is None:
            name = a.dataset or (heads.backbone.metadata.get("dataset") or {}).get("name")
            test = load_dataset(name, "test")
            field = ev.label or next(iter(test.labels))
            real = diversity(test.all_images(), test.labels[field], ev.config.n_outputs)
            print(f"real test images ({name}): within-class diversity {real:.2f} (pixels, L2)")
        for T in temps:
            t0 = time.perf_counter()
            m = measure(heads, ev, a.per_class, T, a.prior, a.seed, a.check)
            ok = m["diversity"] >= RATIO * real and m["accuracy"] >= ACCURACY
            print(
                f"{path} T={T:g} prior={a.prior}: accuracy {m['accuracy']:.3f}, diversity "
                f"{m['diversity']:.2f} = {m['diversity'] / real:.2f}x real "
                f"({'meets' if ok else 'misses'} >= {RATIO}x and >= {ACCURACY}; "
                f"{time.perf_counter() - t0:.0f} s)" + (f"; checked: {m['check']}" if "check" in m else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
