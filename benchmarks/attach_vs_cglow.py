"""Cost of attaching (CAGlow) vs training end to end (CGlow), and sampling speed vs Glow + pre-stored.

Run ``python benchmarks/attach_vs_cglow.py --backbone B.safetensors --evaluator E.safetensors``
(``--help`` for options). In one run it measures:

(a) **time to best accuracy**: CAGlow attaches ``ids`` heads to the frozen backbone in chunks of
    ``--attach-chunk`` steps (resuming exactly from each chunk's checkpoint); CGlow (the same Glow
    shape with a class-conditional prior, :mod:`flowcond.paper.baselines.cglow`) trains end to end and is
    evaluated every ``--cglow-eval-every`` steps. After each chunk the class evaluator judges
    ``--samples-per-class`` samples per class. Reported: the training wall time (CAGlow: encoding
    the dataset once + attach steps; evaluation time excluded for both) at which each method first
    reaches its best accuracy, and 95 % of it;
(b) **sampling images/s**: CAGlow ``x = F^-1(E(c, eps))`` vs Glow + pre-stored features, which must
    encode a real image, edit its latent (``z + alpha * delta``) and decode: ``F^-1(F(x) + delta)``;

and prints the ratios. Use ``--threads 1`` on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=r".*torch\.lu is deprecated.*")

from flowcond.caglow.attach import attach  # noqa: E402
from flowcond.caglow.config import AttachConfig  # noqa: E402
from flowcond.caglow.latents import LatentCache  # noqa: E402
from flowcond.datasets import load_dataset  # noqa: E402
from flowcond.flow.backbone import Backbone  # noqa: E402
from flowcond.paper import metrics  # noqa: E402
from flowcond.paper.baselines import CGlowTrainConfig, PreStored, train_cglow  # noqa: E402
from flowcond.paper.evaluator import Evaluator  # noqa: E402


def best_times(curve: list[dict]) -> dict:
    """First time each curve reaches its best accuracy and 95 % of it."""
    best = max(p["accuracy"] for p in curve)
    first = next(p for p in curve if p["accuracy"] >= best)
    near = next(p for p in curve if p["accuracy"] >= 0.95 * best)
    return {
        "best_accuracy": best,
        "seconds_to_best": first["seconds"],
        "steps_to_best": first["step"],
        "seconds_to_95pct": near["seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--evaluator", required=True)
    ap.add_argument("--dataset", default=None, help="default: the backbone's")
    ap.add_argument("--attach-steps", type=int, default=2000)
    ap.add_argument("--attach-chunk", type=int, default=250)
    ap.add_argument("--cglow-epochs", type=int, default=5)
    ap.add_argument("--cglow-eval-every", type=int, default=100)
    ap.add_argument("--samples-per-class", type=int, default=30)
    ap.add_argument("--sample-n", type=int, default=256, help="images per throughput measurement")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    backbone = Backbone.load(args.backbone)
    evaluator = Evaluator.load(args.evaluator)
    name = args.dataset or (backbone.metadata.get("dataset") or {}).get("name")
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    cf = next(f for f in train.schema.values() if f.kind == "categorical")
    K, n = cf.size, args.samples_per_class
    ids = torch.arange(K).repeat_interleave(n)

    def judge(images: torch.Tensor) -> float:
        return metrics.accuracy(evaluator.predict(images), ids)

    work = Path(tempfile.mkdtemp(prefix="attach_vs_cglow."))
    # (a) CAGlow: attach in chunks, resuming; the first call also encodes the dataset
    curve_a = []
    out = work / "heads.safetensors"
    encode_s = None
    for steps in range(args.attach_chunk, args.attach_steps + 1, args.attach_chunk):
        cfg = AttachConfig(
            plugins=["ids"],
            plugin_options={"ids": {"field": cf.name}},
            dataset=name,
            steps=steps,
            seed=args.seed,
            checkpoint_every=args.attach_chunk,
            cache_dir=str(work / "cache"),
        )
        heads, summary = attach(args.backbone, cfg, out, resume=True, progress=False)
        if encode_s is None:
            encode_s = summary["encode_seconds"]
        with torch.no_grad():
            images, _ = heads.sample({"ids": ids}, n=len(ids), temperature=args.temperature, seed=args.seed)
        curve_a.append(
            {"step": steps, "seconds": encode_s + summary["train_seconds"], "accuracy": judge(images)}
        )
        print(
            f"CAGlow  step {steps:6d}  {curve_a[-1]['seconds']:8.1f} s  "
            f"accuracy {curve_a[-1]['accuracy']:.3f}"
        )

    # (a) CGlow: end to end, evaluated along the way
    curve_c = []

    def on_eval(model, info):
        x = model.sample(ids, n=len(ids), temperature=args.temperature, seed=args.seed)
        curve_c.append({"step": info["step"], "seconds": info["train_seconds"], "accuracy": judge(x)})
        print(
            f"CGlow   step {info['step']:6d}  {info['train_seconds']:8.1f} s  "
            f"accuracy {curve_c[-1]['accuracy']:.3f}"
        )

    train_cglow(
        backbone.config,
        train,
        None,
        CGlowTrainConfig(epochs=args.cglow_epochs, seed=args.seed),
        progress=False,
        callback=on_eval,
        callback_every=args.cglow_eval_every,
        class_field=cf.name,
    )

    # (b) sampling throughput
    N = args.sample_n
    cond = {"ids": torch.arange(N) % K}
    heads.sample(cond, n=8, seed=0)  # warm-up
    t0 = time.perf_counter()
    heads.sample(cond, n=N, temperature=args.temperature, seed=1)
    caglow_ips = N / (time.perf_counter() - t0)
    z_all, labels = LatentCache.build(backbone, train, work / "cache", progress=False).load_all()
    feats = PreStored.fit_dataset(backbone, z_all, labels, train.schema, cf.name)
    delta = feats.deltas[0] if feats.deltas is not None else feats.class_shifts[1] - feats.class_shifts[0]
    x_real = (
        test.images[:N].float()
        if isinstance(test.images, torch.Tensor)
        else torch.stack([test[i][0] for i in range(min(N, len(test)))])
    )
    with torch.inference_mode():
        backbone.decode(backbone.encode(x_real[:8]) + delta)  # warm-up
        t0 = time.perf_counter()
        for i in range(0, N, 256):
            backbone.decode(backbone.encode(x_real[i : i + 256]) + delta)
        prestored_ips = len(x_real) / (time.perf_counter() - t0)

    a, c = best_times(curve_a), best_times(curve_c)
    result = {
        "backbone": backbone.config.model_dump(),
        "dataset": name,
        "threads": torch.get_num_threads(),
        "caglow_attach": {**a, "curve": curve_a, "encode_seconds": encode_s},
        "cglow": {**c, "curve": curve_c},
        "sampling_images_per_s": {"caglow": caglow_ips, "glow_prestored": prestored_ips},
        "ratios": {
            "cglow_over_caglow_seconds_to_best": c["seconds_to_best"] / max(a["seconds_to_best"], 1e-9),
            "cglow_over_caglow_seconds_to_95pct": c["seconds_to_95pct"] / max(a["seconds_to_95pct"], 1e-9),
            "caglow_over_prestored_images_per_s": caglow_ips / prestored_ips,
        },
    }
    print()
    print(
        f"best accuracy    CAGlow {a['best_accuracy']:.3f} after {a['seconds_to_best']:.1f} s   "
        f"CGlow {c['best_accuracy']:.3f} after {c['seconds_to_best']:.1f} s"
    )
    print(f"time to best     CGlow / CAGlow = {result['ratios']['cglow_over_caglow_seconds_to_best']:.2f}x")
    print(f"time to 95%      CGlow / CAGlow = {result['ratios']['cglow_over_caglow_seconds_to_95pct']:.2f}x")
    print(
        f"sampling         CAGlow {caglow_ips:.1f} images/s, Glow + pre-stored {prestored_ips:.1f} images/s, "
        f"ratio {result['ratios']['caglow_over_prestored_images_per_s']:.2f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
