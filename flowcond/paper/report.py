"""The report of ``flowcond evaluate``: results.md laid out like the paper's tables (one function
per section; every number as mean ± std over the seeds, :mod:`flowcond.paper.seeds`), the
coverage table, the claims with their verdicts, and JSON cleaning for results.json."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from flowcond.paper.generators import METHODS
from flowcond.paper.seeds import fmt, verdicts

__all__ = ["claims", "jsonable", "markdown"]

#: the claims judged against the seed spread (kept under this name for callers)
claims = verdicts


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


# ------------------------------------------------------------------------ markdown
def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _mean(x: Any) -> float:
    x = x.get("mean") if isinstance(x, dict) else x
    return float("nan") if x is None else float(x)


def markdown(r: dict[str, Any]) -> str:
    """The results laid out like the paper's Tables 1-3, plus cost, coverage and verdicts."""
    sections = [
        header,
        cost_table,
        table1,
        coverage_table,
        table2,
        table3,
        claims_section,
        figures_section,
        footer,
    ]
    return "\n".join(line for section in sections for line in section(r))


def header(r: dict[str, Any]) -> list[str]:
    """Title and one line on the run (backbone, seeds, temperature, budgets, machine, wall time)."""
    bb, c = r["backbone"]["config"], r["config"]
    seeds = ", ".join(map(str, r["seeds"]))
    budget = f"{c['cglow_epochs']} epoch(s)" + (
        f", at most {c['cglow_max_steps']} steps" if c.get("cglow_max_steps") else ""
    )
    return [
        f"# flowcond evaluate: {r['dataset']}",
        "",
        f"Backbone `{r['backbone']['path']}` ({bb['levels']} x {bb['steps']}, hidden {bb['hidden']}, hash "
        f"{r['backbone']['content_hash'][:12]}); seeds {seeds} (every method trained and sampled "
        f"per seed; numbers are mean ± std over seeds); temperature {c['temperature']}, "
        f"{c['samples_per_class']} samples per class, un-given attributes from the {c['prior']} "
        f"prior; CGlow budget {budget}, CAGlow {c['attach_steps']} attach steps; "
        f"{r['machine']['torch_threads']} torch thread(s) on {r['machine']['cpus']} CPUs; whole run "
        f"{r['wall_seconds']:.0f} s.",
        "",
    ]


def _bits(b: Any) -> str:
    if not isinstance(b, dict) or "median" not in b:
        return fmt(b, 4)
    return f"{fmt(b['median'], 3)} (mean {fmt(b['mean'], 3)})"


def cost_table(r: dict[str, Any]) -> list[str]:
    """Wall time, steps and test bits/dim of each model's training (mean ± std over seeds)."""
    L = [
        "## Cost: wall time of each model's training",
        "",
        "| model | what is trained | seconds | steps | test bits/dim: median (mean) |",
        "|---|---|---:|---:|---:|",
    ]
    for m, c in r["cost"].items():
        kind = " (conditional)" if c.get("bits_per_dim_kind") else ""
        steps = fmt(c.get("steps"), 0) if c.get("steps") is not None else ""
        L.append(_row(m, c["trained"], fmt(c.get("seconds"), 1), steps, _bits(c.get("bits_per_dim")) + kind))
    total = r.get("total_training_seconds", {})
    reused = [s["seed"] for s in r.get("per_seed", []) if s["cost"]["CGlow"].get("reused")]
    return L + [
        "",
        "CAGlow's seconds are encoding the dataset once plus attaching; the encoding is shared "
        "with Glow + pre-stored. Bits/dim is the standard figure: uniform dequantization noise (the "
        "variational bound), averaged over noise draws, median and mean over the test images (a "
        "flow's inverse can explode on a single test digit, which then dominates the mean).",
        "",
        f"Training cost of the whole evaluation, summed over seeds: {total.get('all', 0):.0f} s "
        f"(CGlow {total.get('CGlow', 0):.0f} s"
        + (f", trained in an earlier run and reused for seed(s) {reused}" if reused else "")
        + ").",
        "",
    ]


def table1(r: dict[str, Any]) -> list[str]:
    """Table 1: class accuracy and FID of each method, the Glow prior and real images (the floor)."""
    res, ref = r["results"], r["reference"]
    L = [
        "## Table 1: class-conditional generation",
        "",
        "| method | accuracy | FID (evaluator features) |",
        "|---|---:|---:|",
    ]
    for m in ("Glow (prior)", *METHODS):
        L.append(_row(m, fmt(res[m].get("accuracy")), fmt(res[m].get("fid"), 2)))
    floor = ref["fid_real_train_vs_test"]
    L.append(
        _row(
            "real images", fmt(ref["class_accuracy_real_test"]), f"{fmt(floor, 2)} (train vs test, the floor)"
        )
    )
    below = all(_mean(floor) < _mean(res[m].get("fid")) for m in ("Glow (prior)", *METHODS))
    return L + [
        "",
        f"Every real set is class-balanced and drawn at random with the seed. The floor (real "
        f"training images against real test images) is {'below' if below else 'NOT below'} every "
        f"model's FID.",
        "",
    ]


def coverage_table(r: dict[str, Any]) -> list[str]:
    """Coverage next to fidelity, per class then averaged: precision/recall, density/coverage,
    within-class diversity and the nearest-training-image copy check."""
    res, real = r["results"], r["reference"]["coverage_real"]
    L = [
        "## Coverage, diversity and copies",
        "",
        "Per class, generated images against the real test images of that class in the class "
        "evaluator's features (k = 3 nearest neighbours), then averaged over classes: precision / "
        "recall (Kynkäänniemi et al., 2019), density / coverage (Naeem et al., 2020); within-class "
        "diversity = mean pairwise L2 distance in pixels and in features; copy check = median L2 "
        "distance (pixels) of each image to its nearest training image, and the fraction of images "
        "closer to a training image than 95% of real test digits are. Real row: a class-balanced "
        "random set of training images against the test images (P/R/D/C), the test images' own "
        "diversity and their distance to the training set.",
        "",
        _row(
            "method",
            "precision",
            "recall",
            "density",
            "coverage",
            "diversity (pixels)",
            "diversity (features)",
            "nearest training image",
            "copy fraction",
        ),
        "|---|" + "---:|" * 8,
    ]
    rows = [(m, res[m]["coverage"]) for m in METHODS] + [("real test images", real)]
    for m, c in rows:
        keys = ("precision", "recall", "density", "coverage", "diversity_pixels", "diversity_features")
        L.append(_row(m, *(fmt(c[k]) for k in keys), fmt(c["nn_train_median"], 2), fmt(c["copy_fraction"])))
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
                fmt(x["attribute_accuracy"]),
                *(fmt(x["attribute_accuracy_per"][a]) for a in names),
                fmt(x["amp_variance"], 4),
                *(fmt(x["amp_variance_per"][a], 4) for a in names),
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
        L.append(_row(m, *(fmt(v) for v in cells)))
    return L + [""]


def claims_section(r: dict[str, Any]) -> list[str]:
    """The claims with their verdicts (confirmed / refuted only beyond the seed spread)."""
    n = len(r["seeds"])
    rule = (
        f"A claim is confirmed or refuted only when the difference it rests on exceeds the seed "
        f"spread (the sum of the two sides' standard deviations over the {n} seeds); otherwise it "
        "is not resolved."
        if n > 1
        else "One seed: no spread is known, so every difference resolves; run with --seeds 0,1,2."
    )
    return ["## The paper's claims", "", rule, ""] + [
        f"- **{c['verdict']}**: {c['claim']}. {c['evidence']}" for c in r["claims"]
    ]


def figures_section(r: dict[str, Any]) -> list[str]:
    """Links to the figure files (first seed)."""
    return ["", f"## Figures (seed {r['seeds'][0]})", ""] + [f"- [{f}]({f})" for f in r["figures"]]


def footer(r: dict[str, Any]) -> list[str]:
    """How Glow + pre-stored samples are made, and what the FID is computed on."""
    return [
        "",
        "Glow + pre-stored conditional samples are prior samples moved by the pre-stored "
        "features: z = T eps + shift_class + alpha * sum_a (v_a - 1/2) delta_a (alpha = "
        f"{r['config']['alpha']}). FID uses the evaluator's features, not Inception: compare it only "
        "within runs using the same evaluator. Per-seed numbers are in the JSON file (`per_seed`).",
        "",
    ]
