"""The main job end to end on the embedded MNIST-5k data: attach -> sample -> interpolate -> edit ->
explore.

    python examples/mnist_digits.py            # writes figures and digits.heads.safetensors to out/

Attaches ``ids`` (the digit) and ``attributes`` (thick, slanted, wide, tall: the Morpho-MNIST
measures of ``mnist5k-morpho``, the same images) to the shipped backbone
(examples/backbones/glow_mnist5k.safetensors) with two options that are not in the paper:
``--lambda MS`` (mode seeking, for varied samples) and ``--image-check`` (a CNN of the evaluator's kind,
trained on the training images, that reads the digit back from each sample, so that sampling draws
again the samples that show another digit).
``--mode-seeking 0 --image-check 0`` gives the paper's losses and plain sampling. Samples of a
digit get the attributes of a random training image of that digit (the joint prior). When present,
the shipped evaluator (examples/evaluators/mnist5k_evaluator.safetensors) reports how often a
digit generated with ``ids=k`` is classified as ``k``; the report also says how varied the samples
are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flowcond.caglow.attach import AttachConfig, attach
from flowcond.caglow.generate import explore, interpolate, manipulate, sample_rows
from flowcond.datasets import load_dataset
from flowcond.io.images import save_grid

HERE = Path(__file__).resolve().parent
#: --lambda MS of the main job (README "The main job on the shipped backbone")
MODE_SEEKING = 1.5
#: steps training the image check (attach --image-check)
IMAGE_CHECK = 500


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance between distinct pairs of images (pixel space)."""
    flat = x.reshape(len(x), -1)
    d = torch.cdist(flat, flat)
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def mean_nearest_distance(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean L2 distance from each image of ``x`` to its nearest image in ``reference``."""
    d = torch.cdist(x.reshape(len(x), -1), reference.reshape(len(reference), -1))
    return float(d.min(1).values.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=str(HERE / "backbones" / "glow_mnist5k.safetensors"))
    ap.add_argument("--evaluator", default=str(HERE / "evaluators" / "mnist5k_evaluator.safetensors"))
    ap.add_argument("--out", default="out")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode-seeking", type=float, default=MODE_SEEKING, help="--lambda MS (paper: 0)")
    ap.add_argument("--image-check", type=int, default=IMAGE_CHECK, help="image check steps (paper: 0, none)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    heads, summary = attach(
        args.backbone,
        AttachConfig(
            plugins=["ids", "attributes"],
            dataset="mnist5k-morpho",
            lambdas={"MS": args.mode_seeking},
            image_check=args.image_check,
            steps=args.steps,
            seed=args.seed,
        ),
        out / "digits.heads.safetensors",
    )
    attach_s = time.perf_counter() - t0
    print(f"attach: {attach_s:.1f} s (latent encoding {summary['encode_seconds']:.1f} s)")

    # one row per digit, 10 samples each, each with the attributes of its own draw
    rows = [
        sample_rows(heads, {"ids": torch.tensor(k)}, 10, 1, args.temperature, args.seed + k)
        for k in range(10)
    ]
    save_grid(
        torch.cat([r[0] for r in rows]),
        out / "samples.png",
        nrow=10,
        row_labels=[f"ids={k}" for k in range(10)],
    )
    save_grid(
        interpolate(heads, {"ids": torch.tensor(1)}, {"ids": torch.tensor(7)}, 8, 4, args.temperature),
        out / "interpolate_1_7.png",
        nrow=8,
    )
    edits = ["attributes=thick", "attributes=slanted", "attributes=wide"]
    imgs, labels = manipulate(heads, {"ids": torch.tensor(4)}, edits, 4, args.temperature, args.seed)
    save_grid(imgs, out / "edits_4.png", nrow=len(labels), col_labels=labels)
    imgs, _ = explore(heads, "thick", 9, 4, {"ids": torch.tensor(0)}, "attributes", args.temperature)
    save_grid(imgs, out / "explore_thick.png", nrow=9)
    print(f"figures: {out}/samples.png, interpolate_1_7.png, edits_4.png, explore_thick.png")

    report = {
        "attach_seconds": round(attach_s, 1),
        "temperature": args.temperature,
        "mode_seeking": args.mode_seeking,
        "image_check": summary.get("image_check"),
        "heads": summary["metrics"],
    }
    t1 = time.perf_counter()
    n = args.per_class * 10
    targets = {"ids": torch.arange(10).repeat_interleave(args.per_class)}
    g = torch.Generator().manual_seed(args.seed)
    targets = heads.sample_targets(n, targets, g)
    # checked sampling (with an image check): samples showing another digit are drawn again
    images, targets, report["checked_sampling"] = heads.checked(
        targets, args.temperature, g, ["ids"], "joint"
    )
    report["sampling_images_per_second"] = round(n / (time.perf_counter() - t1), 1)
    real = load_dataset("mnist5k", "test")
    train = load_dataset("mnist5k", "train")
    gen_d, real_d, gen_nn, real_nn = [], [], [], []
    for k in range(10):
        gen_k, real_k = images[targets["ids"] == k], real.images[real.labels["digit"] == k]
        train_k = train.images[train.labels["digit"] == k]
        gen_d.append(mean_pairwise_distance(gen_k))
        real_d.append(mean_pairwise_distance(real_k))
        gen_nn.append(mean_nearest_distance(gen_k, train_k))
        real_nn.append(mean_nearest_distance(real_k, train_k))
    report["diversity"] = {
        "generated_mean_pairwise_l2": round(sum(gen_d) / 10, 3),
        "real_mean_pairwise_l2": round(sum(real_d) / 10, 3),
        # far below the real figure would mean the heads copy training digits
        "generated_nearest_train_l2": round(sum(gen_nn) / 10, 3),
        "real_test_nearest_train_l2": round(sum(real_nn) / 10, 3),
    }
    if Path(args.evaluator).is_file():
        from flowcond.paper.evaluator import Evaluator

        ev = Evaluator.load(args.evaluator)
        pred = ev.predict(images)
        report["evaluator_accuracy"] = float((pred == targets["ids"]).float().mean())
        report["evaluator_accuracy_per_class"] = [
            round(float((pred[targets["ids"] == k] == k).float().mean()), 3) for k in range(10)
        ]
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
