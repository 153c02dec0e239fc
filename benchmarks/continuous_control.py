"""Requested vs measured control of the built-in ``continuous`` kind on ``mnist5k-morpho``.

    python benchmarks/continuous_control.py                     # thickness and slant, jointly
    python benchmarks/continuous_control.py --field morphometrics.thickness --json out.json

Attaches ``ids`` + ``continuous`` (``field=morphometrics.thickness,slant`` by default) to the
shipped backbone, then for each conditioned column samples ``--values`` requested values evenly
across the column's sweep range (``value_range``: the 1 % to 99 % training quantiles), with every
other column at its training median and the digits 0-9 equally often, ``--per-value`` images each.
Each image's thickness/slant is measured with :mod:`flowcond.paper.morpho` (the measures the
dataset's labels come from) and its digit read by the shipped evaluator. Prints, per column, the
Pearson correlation of measured against requested values over all images, the least-squares slope
(1 is perfect control), the mean measured value per requested value, and the digit accuracy,
next to the spread of the real test digits' measure (overall and within a digit). Also writes an
``explore`` grid per column to ``--out``. Figures of a run are in docs/writing-plugins.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flowcond.caglow.attach import AttachConfig, attach
from flowcond.datasets import load_dataset
from flowcond.io.images import save_grid
from flowcond.paper.morpho import MEASURES, measure

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def control(
    heads, column: str, values: list[float], per_value: int, temperature: float, seed: int, evaluator
) -> dict:
    """Sample ``per_value`` images at each requested value of ``column``; measure them."""
    kind = heads.kinds["continuous"]
    digits = torch.arange(10).repeat(-(-per_value // 10))[:per_value]
    requested, measured, correct, means = [], [], [], []
    for i, v in enumerate(values):
        target = kind.parse(f"{column}:{v!r}")  # other columns at their medians; range-checked
        targets = {"ids": digits, "continuous": target.expand(per_value, -1).clone()}
        g = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            images = heads.decode(heads.generate(targets, temperature, g))
        got = measure(images)[column]  # the columns of morphometrics are the measures' names
        ok = np.isfinite(got)
        requested.append(np.full(ok.sum(), v))
        measured.append(got[ok])
        means.append(float(np.mean(got[ok])))
        if evaluator is not None:
            correct.append((evaluator.predict(images) == digits).float().numpy())
    req, mea = np.concatenate(requested), np.concatenate(measured)
    slope, intercept = np.polyfit(req, mea, 1)
    out = {
        "column": column,
        "requested": [round(v, 4) for v in values],
        "measured_mean": [round(m, 4) for m in means],
        "correlation": round(float(np.corrcoef(req, mea)[0, 1]), 4),
        "slope": round(float(slope), 4),
        "intercept": round(float(intercept), 4),
        "images": int(len(req)),
        "unmeasurable": int(len(values) * per_value - len(req)),
    }
    if correct:
        out["digit_accuracy"] = round(float(np.concatenate(correct).mean()), 4)
    return out


def real_spread(column: str) -> dict:
    """Std of the real test measure, overall and within digit (the spread control competes with)."""
    test = load_dataset("mnist5k-morpho", "test")
    j = list(MEASURES).index(column)
    v = test.labels["morphometrics"][:, j].double().numpy()
    d = test.labels["digit"].numpy()
    within = np.mean([v[d == k].std() for k in range(10)])
    return {"std": round(float(v.std()), 4), "within_digit_std": round(float(within), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=str(ROOT / "examples/backbones/glow_mnist5k.safetensors"))
    ap.add_argument("--evaluator", default=str(ROOT / "examples/evaluators/mnist5k_evaluator.safetensors"))
    ap.add_argument("--field", default="morphometrics.thickness,slant")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--values", type=int, default=5)
    ap.add_argument("--per-value", type=int, default=500)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--lambda-continuous", type=float, default=None, help="--lambda C.continuous")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="continuous_control", help="folder for the heads file and grids")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    lambdas = {"C.continuous": args.lambda_continuous} if args.lambda_continuous is not None else {}
    config = AttachConfig(
        plugins=["ids", "continuous"],
        plugin_options={"continuous": {"field": args.field}},
        dataset="mnist5k-morpho",
        steps=args.steps,
        seed=args.seed,
        lambdas=lambdas,
    )
    t0 = time.perf_counter()
    heads, summary = attach(args.backbone, config, out / "morpho.heads.safetensors")
    report = {
        "field": args.field,
        "steps": args.steps,
        "temperature": args.temperature,
        "per_value": args.per_value,
        "attach_seconds": round(time.perf_counter() - t0, 1),
        "encode_seconds": summary["encode_seconds"],
        "heads": summary["metrics"],
        "columns": [],
    }
    evaluator = None
    if Path(args.evaluator).is_file():
        from flowcond.paper.evaluator import Evaluator

        evaluator = Evaluator.load(args.evaluator)
    kind = heads.kinds["continuous"]
    ranges = kind.value_range if isinstance(kind.value_range, list) else [kind.value_range]
    for j, column in enumerate(kind.names):
        lo, hi = ranges[j]
        values = np.linspace(lo, hi, args.values).tolist()
        row = control(heads, column, values, args.per_value, args.temperature, args.seed, evaluator)
        row["real"] = real_spread(column)
        report["columns"].append(row)
        print(
            f"{column}: requested {', '.join(f'{v:.3g}' for v in row['requested'])} -> measured "
            f"{', '.join(f'{v:.3g}' for v in row['measured_mean'])}; correlation {row['correlation']:.3f}, "
            f"slope {row['slope']:.3f}, digit accuracy {row.get('digit_accuracy', float('nan')):.3f} "
            f"({row['images']} images; real test std {row['real']['std']:.3g}, within digit "
            f"{row['real']['within_digit_std']:.3g})"
        )
        from flowcond.caglow.generate import explore

        grid, swept = explore(heads, j, 7, 6, None, "continuous", args.temperature, args.seed)
        save_grid(grid, out / f"explore_{column}.png", nrow=7, col_labels=[f"{v:.2f}" for v in swept])
    print(f"attach {report['attach_seconds']} s (encoding {report['encode_seconds']} s); grids in {out}/")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
