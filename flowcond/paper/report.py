"""The report of ``flowcond evaluate``: the paper's claims judged from the numbers, results.md laid
out like the paper's tables (one function per section), and JSON cleaning for results.json."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from flowcond.paper.generators import METHODS

#: CAGlow's FID may be at most this multiple of the Glow prior's for "close to Glow"
FID_TOLERANCE = 1.25
#: mean AMP gain of the edited attribute below which an edit counts as (nearly) a no-op
WEAK_EDIT = 0.05


# ------------------------------------------------------------------------ JSON
def jsonable(x: Any) -> Any:
    """``x`` with arrays and tensors as lists, floats rounded to 6 digits, non-finite as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray | torch.Tensor):
        return jsonable(x.tolist())
    if isinstance(x, float | np.floating):
        x = float(x)
        return None if not math.isfinite(x) else round(x, 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


# ------------------------------------------------------------------------ claims
def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's four claims, each confirmed or refuted by this run's numbers."""
    ca, cg = results["CAGlow"], results["CGlow"]
    out = [
        {
            "claim": "Table 1: CAGlow accuracy > CGlow accuracy",
            "confirmed": ca["accuracy"] > cg["accuracy"],
            "evidence": f"CAGlow {ca['accuracy']:.3f} vs CGlow {cg['accuracy']:.3f}",
        },
    ]
    glow_fid = results.get("Glow (prior)", {}).get("fid")
    if glow_fid is not None:
        out.append(
            {
                "claim": f"Table 1: CAGlow FID close to Glow's (at most {FID_TOLERANCE}x Glow prior's)",
                "confirmed": ca["fid"] <= FID_TOLERANCE * glow_fid,
                "evidence": f"CAGlow {ca['fid']:.2f} vs Glow (prior) {glow_fid:.2f}",
            }
        )
    out.append(_amp_variance_claim(results))
    out.append(_interference_claim(results))
    return out


def _amp_variance_claim(results: dict[str, Any]) -> dict[str, Any]:
    ca, cg, ps = (results[m] for m in METHODS)
    return {
        "claim": "Table 2: CAGlow has the lowest AMP variance across identities",
        "confirmed": ca["amp_variance"] < min(cg["amp_variance"], ps["amp_variance"]),
        "evidence": f"CAGlow {ca['amp_variance']:.4f}, CGlow {cg['amp_variance']:.4f}, "
        f"Glow + pre-stored {ps['amp_variance']:.4f}",
    }


def _interference_claim(results: dict[str, Any]) -> dict[str, Any]:
    ca, cg, ps = (results[m] for m in METHODS)
    steps = [t for t, x in enumerate(ca["interference"]) if x is not None and math.isfinite(x)]
    lower = all(ca["interference"][t] < min(cg["interference"][t], ps["interference"][t]) for t in steps)
    return {
        "claim": "Table 3: CAGlow has lower interference than both baselines at every step",
        "confirmed": bool(steps) and lower,
        "evidence": "; ".join(
            f"after {t + 1}: CAGlow {ca['interference'][t]:.3f}, CGlow "
            f"{cg['interference'][t]:.3f}, pre-stored {ps['interference'][t]:.3f}"
            for t in steps
        )
        + f" (edit effects CAGlow {_fmt_list(ca['edit_effect'])}, CGlow "
        f"{_fmt_list(cg['edit_effect'])}, pre-stored {_fmt_list(ps['edit_effect'])})" + _weak_edits(results),
    }


def _weak_edits(results: dict[str, Any]) -> str:
    """A caveat naming methods whose edits barely move the edited attribute (low interference is
    then vacuous: an edit that changes nothing interferes with nothing)."""
    weak = [
        f"{m} ({np.mean(results[m]['edit_effect']):.3f})"
        for m in METHODS
        if np.mean(results[m]["edit_effect"]) < WEAK_EDIT
    ]
    if not weak:
        return ""
    return f". Caveat: mean edit effect below {WEAK_EDIT} for " + ", ".join(weak) + " (weak edits)"


# ------------------------------------------------------------------------ markdown
def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _fmt_list(xs: list, digits: int = 2) -> str:
    return "[" + ", ".join(_fmt(x, digits) for x in xs) + "]"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(r: dict[str, Any]) -> str:
    """The results laid out like the paper's Tables 1-3, plus cost and verdicts."""
    sections = [header, cost_table, table1, table2, table3, claims_section, figures_section, footer]
    return "\n".join(line for section in sections for line in section(r))


def header(r: dict[str, Any]) -> list[str]:
    """Title and one line on the run (backbone, seed, temperature, machine, wall time)."""
    bb, c = r["backbone"]["config"], r["config"]
    return [
        f"# flowcond evaluate: {r['dataset']}",
        "",
        f"Backbone `{r['backbone']['path']}` ({bb['levels']} x {bb['steps']}, hidden {bb['hidden']}, hash "
        f"{r['backbone']['content_hash'][:12]}), seed {c['seed']}, temperature "
        f"{c['temperature']}, {c['samples_per_class']} samples per class, "
        f"{r['machine']['torch_threads']} torch thread(s) on {r['machine']['cpus']} CPUs; "
        f"whole run {r['wall_seconds']:.0f} s.",
        "",
    ]


def cost_table(r: dict[str, Any]) -> list[str]:
    """Wall time, steps and test bits/dim of each model's training."""
    L = [
        "## Cost: wall time of each model's training",
        "",
        "| model | what is trained | seconds | steps | test bits/dim |",
        "|---|---|---:|---:|---:|",
    ]
    for m, c in r["cost"].items():
        bpd = _fmt(c.get("bits_per_dim"), 4) + (" (conditional)" if c.get("bits_per_dim_kind") else "")
        L.append(_row(m, c["trained"], _fmt(c.get("seconds"), 1), str(c.get("steps", "")), bpd))
    return L + [
        "",
        "CAGlow's seconds are encoding the dataset once plus attaching; the encoding is shared "
        "with Glow + pre-stored.",
        "",
    ]


def table1(r: dict[str, Any]) -> list[str]:
    """Table 1: class accuracy and FID of each method, the Glow prior and real test images."""
    res, ref = r["results"], r["reference"]
    L = [
        "## Table 1: class-conditional generation",
        "",
        "| method | accuracy | FID (evaluator features) |",
        "|---|---:|---:|",
    ]
    for m in ("Glow (prior)", *METHODS):
        L.append(_row(m, _fmt(res[m].get("accuracy")), _fmt(res[m].get("fid"), 2)))
    L.append(
        _row(
            "real test images",
            _fmt(ref["class_accuracy_real_test"]),
            f"{_fmt(ref['fid_real_train_vs_test'], 2)} (train vs test)",
        )
    )
    return L + [""]


def table2(r: dict[str, Any]) -> list[str]:
    """Table 2: attribute accuracy and AMP variance across identities, overall and per attribute."""
    res, names, ref = r["results"], r["attributes"]["names"], r["reference"]
    L = [
        "## Table 2: attribute accuracy and variance of AMP across identities",
        "",
        _row("method", "attribute accuracy", *names, "AMP variance", *(f"var {a}" for a in names)),
        "|---|" + "---:|" * (2 * len(names) + 2),
    ]
    keys = ("attribute_accuracy", "attribute_accuracy_per", "amp_variance", "amp_variance_per")
    real = {k: ref[f"{k}_real_test"] for k in keys}
    for m, x in [(m, res[m]) for m in METHODS] + [("real test images", real)]:
        L.append(
            _row(
                m,
                _fmt(x["attribute_accuracy"]),
                *(_fmt(x["attribute_accuracy_per"][a]) for a in names),
                _fmt(x["amp_variance"], 4),
                *(_fmt(x["amp_variance_per"][a], 4) for a in names),
            )
        )
    return L + [""]


def table3(r: dict[str, Any]) -> list[str]:
    """Table 3: cumulative and per-step interference, and the effect of each edit."""
    res, names = r["results"], r["attributes"]["names"]
    A = len(names)
    L = [
        "## Table 3: interference of cumulative edits",
        "",
        f"Start: all attributes off; edit t turns on {', then '.join(names)}. |delta AMP| of the "
        "attributes not yet edited, relative to the start (n/a once all are edited); per step: "
        "between consecutive states, over the attributes other than the one just edited; edit "
        "effect: AMP gain of the edited attribute (higher means the edit works).",
        "",
        _row(
            "method",
            *(f"after {t}" for t in range(1, A + 1)),
            *(f"step {t}" for t in range(1, A + 1)),
            *(f"effect +{a}" for a in names),
        ),
        "|---|" + "---:|" * (3 * A),
    ]
    for m in METHODS:
        x = res[m]
        cells = x["interference"] + x["interference_per_step"] + x["edit_effect"]
        L.append(_row(m, *(_fmt(v) for v in cells)))
    return L + [""]


def claims_section(r: dict[str, Any]) -> list[str]:
    """The claims, each marked confirmed or refuted, with its evidence."""
    return ["## The paper's claims", ""] + [
        f"- **{'confirmed' if c['confirmed'] else 'refuted'}**: {c['claim']}. {c['evidence']}"
        for c in r["claims"]
    ]


def figures_section(r: dict[str, Any]) -> list[str]:
    """Links to the figure files."""
    return ["", "## Figures", ""] + [f"- [{f}]({f})" for f in r["figures"]]


def footer(r: dict[str, Any]) -> list[str]:
    """How Glow + pre-stored samples are made, and what the FID is computed on."""
    return [
        "",
        "Glow + pre-stored conditional samples are prior samples moved by the pre-stored "
        "features: z = T eps + shift_class + alpha * sum_a (v_a - 1/2) delta_a (alpha = "
        f"{r['config']['alpha']}). FID uses the evaluator's features, not Inception: compare it only "
        "within runs using the same evaluator.",
        "",
    ]
