"""Measure how well ``ink`` heads control ink: requested vs measured, and the digits.

    python check_control.py ink.heads.safetensors --evaluator EVALUATOR.safetensors

Samples ``--n`` images at each of ``--values`` requested ink values across the kind's sweep range
(digits 0-9 equally often when ``ids`` is attached), measures their ink with the same function
the dataset labels come from, and prints the correlation and least-squares slope of measured
against requested ink (1 is perfect control) and, with an evaluator, the digit accuracy.
"""

from __future__ import annotations

import argparse
import json

import torch
from flowcond_ink import ink

from flowcond import Heads


def control(
    heads: Heads, values: int = 5, n: int = 500, temperature: float = 0.6, seed: int = 0, evaluator=None
) -> dict:
    """Requested vs measured ink over ``values`` requested values, ``n`` images each."""
    low, high = heads.kinds["ink"].value_range
    requested = torch.linspace(low, high, values)
    digits = torch.arange(n) % 10
    wanted, measured, correct = [], [], []
    for i, v in enumerate(requested.tolist()):
        given = {"ink": heads.kinds["ink"].parse(f"{v}")}
        if "ids" in heads.kinds:
            given["ids"] = digits
        targets = heads.sample_targets(n, given, torch.Generator().manual_seed(seed + i))
        with torch.no_grad():
            images = heads.decode(
                heads.generate(targets, temperature, torch.Generator().manual_seed(seed + i))
            )
        wanted.append(torch.full((n,), v))
        measured.append(ink(images))
        if evaluator is not None and "ids" in heads.kinds:
            correct.append((evaluator.predict(images) == digits).float())
    x, y = torch.cat(wanted).double(), torch.cat(measured).double()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).pow(2).sum())
    report = {
        "requested": [round(v, 1) for v in requested.tolist()],
        "measured_mean": [round(float(m.mean()), 1) for m in measured],
        "correlation": round(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), 3),
        "slope": round(slope, 3),
    }
    if correct:
        report["digit_accuracy"] = round(float(torch.cat(correct).mean()), 3)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads")
    ap.add_argument("--evaluator", default=None)
    ap.add_argument("--values", type=int, default=5)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--temperature", type=float, default=0.6)
    args = ap.parse_args()
    evaluator = None
    if args.evaluator:
        from flowcond.paper.evaluator import Evaluator

        evaluator = Evaluator.load(args.evaluator)
    report = control(Heads.load(args.heads), args.values, args.n, args.temperature, evaluator=evaluator)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
