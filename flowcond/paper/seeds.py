"""Several seeds: every number as mean +- standard deviation over seeds, and the paper's claims
judged against that spread.

:func:`aggregate` turns the per-seed results (same structure each) into the same structure whose
numbers are ``{"mean", "std", "values"}`` (sample standard deviation, ``ddof=1``; 0 for one seed).
:func:`verdicts` calls a claim *confirmed* or *refuted* only when the difference it rests on is
larger than the seed spread of the two sides (the sum of their standard deviations), and *not
resolved* otherwise. With one seed there is no spread: every difference resolves, and the
evidence says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from flowcond.paper.generators import METHODS

#: CAGlow's FID may be at most this multiple of the Glow prior's for "close to Glow"
FID_TOLERANCE = 1.25
#: mean AMP gain of the edited attribute below which an edit counts as (nearly) a no-op
WEAK_EDIT = 0.05
CONFIRMED, REFUTED, UNRESOLVED = "confirmed", "refuted", "not resolved"


def _number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def is_stat(x: Any) -> bool:
    """Whether ``x`` is an aggregated number ``{"mean", "std", "values"}``."""
    return isinstance(x, dict) and set(x) == {"mean", "std", "values"}


def stat(values: list[Any]) -> dict[str, Any]:
    """Mean and sample standard deviation of numbers (None / NaN ignored; NaN if none left)."""
    vals = [float(v) for v in values if v is not None and _number(v) and math.isfinite(float(v))]
    mean = float(np.mean(vals)) if vals else float("nan")
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else float("nan"))
    return {"mean": mean, "std": std, "values": [None if v is None else float(v) for v in values]}


def aggregate(runs: list[Any]) -> Any:
    """The per-seed structures ``runs`` merged: numbers become :func:`stat`, dicts and lists of
    equal length are merged element by element, anything else keeps the first seed's value."""
    first = runs[0]
    if all(isinstance(r, dict) for r in runs):
        return {k: aggregate([r.get(k) for r in runs]) for k in first}
    if all(isinstance(r, list | tuple) for r in runs) and len({len(r) for r in runs}) == 1:
        return [aggregate(list(col)) for col in zip(*runs, strict=True)]
    if all(r is None or _number(r) for r in runs) and any(_number(r) for r in runs):
        return stat(runs)
    return first


def total_cost(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Training seconds summed over seeds, per model (what the run paid, or once paid for reused
    models) and in all."""
    out: dict[str, float] = {}
    for r in runs:
        for model, c in r["cost"].items():
            if model.startswith("Glow backbone"):
                continue  # trained once, before any evaluation
            out[model] = out.get(model, 0.0) + float(c.get("seconds") or 0.0)
    out["all"] = sum(out.values())
    return out


def fmt(x: Any, digits: int = 3) -> str:
    """``mean ± std`` of an aggregated number (``mean`` alone for one seed), ``n/a`` if missing."""
    if is_stat(x):
        m, s = x["mean"], x["std"]
        if m is None or not math.isfinite(m):
            return "n/a"
        several = len([v for v in x["values"] if v is not None]) > 1
        return f"{m:.{digits}f} ± {s:.{digits}f}" if several and s is not None else f"{m:.{digits}f}"
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Whether ``a > b`` holds beyond the seed spread: CONFIRMED, REFUTED or UNRESOLVED."""
    if None in (a["mean"], b["mean"], a["std"], b["std"]):
        return UNRESOLVED
    diff, spread = a["mean"] - b["mean"], a["std"] + b["std"]
    if not (math.isfinite(diff) and math.isfinite(spread)):
        return UNRESOLVED
    if diff > spread:
        return CONFIRMED
    if -diff > spread:
        return REFUTED
    return UNRESOLVED


def _scaled(x: dict[str, Any], c: float) -> dict[str, Any]:
    return {"mean": c * x["mean"], "std": abs(c) * x["std"], "values": x["values"]}


def _all(outcomes: list[str]) -> str:
    """A claim made of several comparisons: confirmed if all are, refuted if any is."""
    if outcomes and all(o == CONFIRMED for o in outcomes):
        return CONFIRMED
    return REFUTED if REFUTED in outcomes else UNRESOLVED


def _claim(claim: str, verdict: str, evidence: str) -> dict[str, Any]:
    return {"claim": claim, "verdict": verdict, "confirmed": verdict == CONFIRMED, "evidence": evidence}


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's four claims judged from aggregated ``results`` against the seed spread."""
    ca, cg, ps = (results[m] for m in METHODS)
    out = [
        _claim(
            "Table 1: CAGlow accuracy > CGlow accuracy",
            compare(ca["accuracy"], cg["accuracy"]),
            f"CAGlow {fmt(ca['accuracy'])} vs CGlow {fmt(cg['accuracy'])}",
        )
    ]
    glow = results.get("Glow (prior)", {}).get("fid")
    if glow is not None:
        out.append(
            _claim(
                f"Table 1: CAGlow FID close to Glow's (at most {FID_TOLERANCE}x Glow prior's)",
                compare(_scaled(glow, FID_TOLERANCE), ca["fid"]),
                f"CAGlow {fmt(ca['fid'], 2)} vs Glow (prior) {fmt(glow, 2)}",
            )
        )
    out.append(
        _claim(
            "Table 2: CAGlow has the lowest AMP variance across identities",
            _all([compare(other["amp_variance"], ca["amp_variance"]) for other in (cg, ps)]),
            f"CAGlow {fmt(ca['amp_variance'], 4)}, CGlow {fmt(cg['amp_variance'], 4)}, "
            f"Glow + pre-stored {fmt(ps['amp_variance'], 4)}",
        )
    )
    out.append(_interference_claim(ca, cg, ps, results))
    return out


def _interference_claim(ca: Any, cg: Any, ps: Any, results: dict[str, Any]) -> dict[str, Any]:
    steps = [t for t, x in enumerate(ca["interference"]) if is_stat(x) and math.isfinite(x["mean"])]
    outcomes = [compare(o["interference"][t], ca["interference"][t]) for t in steps for o in (cg, ps)]
    evidence = "; ".join(
        f"after {t + 1}: CAGlow {fmt(ca['interference'][t])}, CGlow {fmt(cg['interference'][t])}, "
        f"pre-stored {fmt(ps['interference'][t])}"
        for t in steps
    )
    effects = ", ".join(f"{m} [{', '.join(fmt(e, 2) for e in results[m]['edit_effect'])}]" for m in METHODS)
    weak = [
        f"{m} ({np.mean([e['mean'] for e in results[m]['edit_effect']]):.3f})"
        for m in METHODS
        if np.mean([e["mean"] for e in results[m]["edit_effect"]]) < WEAK_EDIT
    ]
    caveat = (
        f". Caveat: mean edit effect below {WEAK_EDIT} for {', '.join(weak)} (weak edits)" if weak else ""
    )
    return _claim(
        "Table 3: CAGlow has lower interference than both baselines at every step",
        _all(outcomes) if steps else UNRESOLVED,
        f"{evidence} (edit effects {effects}){caveat}",
    )
