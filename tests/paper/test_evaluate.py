"""`flowcond evaluate`: metrics on hand-made inputs, the three generators, discovery of the roles and
the dataset through the registry, verdicts, a tiny CLI run checked against independent numbers."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from flowcond import Backbone, BackboneConfig, hookimpl, registry
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.datasets import ImageDataset, LabelField, load_dataset
from flowcond.errors import ConfigError
from flowcond.paper.baselines import CGlow, CGlowConfig, PreStored
from flowcond.paper.discovery import Roles, find_roles, plugin_options, resolve_dataset
from flowcond.paper.evaluator import Evaluator
from flowcond.paper.generators import METHODS, CAGlowGenerator, CGlowGenerator, PreStoredGenerator
from flowcond.paper.report import claims, markdown
from flowcond.paper.run import EvaluateConfig
from flowcond.paper.seeds import aggregate
from flowcond.paper.tables import attribute_metrics, edit_metrics, requested, table_metrics
from flowcond.testing import tiny_image_dataset

TINY = BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8)


def _backbone() -> Backbone:
    bb = Backbone(TINY)
    bb.initialize(load_dataset("digits", "train").images[:64])
    return bb.freeze()


def _cfg(**kw) -> EvaluateConfig:
    return EvaluateConfig(backbone="bb", evaluator="ev", **kw)


def _closed_form_fid(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2), the root's trace from eigenvalues."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)).sum()
    d = a.mean(0) - b.mean(0)
    return float(d @ d + np.trace(sa) + np.trace(sb) - 2 * root)


# ------------------------------------------------------------------ metrics, hand-made
def test_attribute_metrics_use_only_images_requested_with_the_attribute():
    ids = torch.tensor([0, 0, 1, 1])
    attrs = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    probs = torch.tensor([[0.9, 0.2], [0.7, 0.6], [0.5, 0.1], [0.2, 0.8]])
    m = attribute_metrics(probs, ids, attrs, ["a", "b"])
    # accuracy per attribute: a: 1, 1, 1 (0.5 is not > 0.5: wrong), 1 -> 3/4 ; b: 1, 1, 1, 1
    assert m["attribute_accuracy_per"] == {"a": 0.75, "b": 1.0}
    assert m["attribute_accuracy"] == pytest.approx(0.875)
    # AMP of a over images with a on: id 0 -> (0.9 + 0.7) / 2 = 0.8, id 1 -> 0.5; variance 0.0225
    assert m["amp_variance_per"]["a"] == pytest.approx(0.0225)
    # b on: id 0 -> 0.6, id 1 -> 0.8; variance 0.01
    assert m["amp_variance_per"]["b"] == pytest.approx(0.01)
    assert m["amp_variance"] == pytest.approx((0.0225 + 0.01) / 2)


def test_table_metrics_score_the_evaluators_outputs_against_the_request():
    images = torch.arange(6.0).reshape(6, 1, 1, 1)
    feats = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0], [1.0, 3.0], [0.5, 0.5]])
    real = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    classes = types.SimpleNamespace(
        predict=lambda x: torch.tensor([0, 1, 1, 1, 2, 0]), features=lambda x: feats
    )
    attrs = types.SimpleNamespace(
        predict_proba=lambda x: torch.tensor([[0.9], [0.1], [0.8], [0.7], [0.2], [0.6]]),
        class_names=["a"],
    )
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    want = torch.tensor([[1.0], [0.0], [1.0], [0.0], [0.0], [1.0]])
    m = table_metrics(images, ids, want, classes, attrs, real)
    assert m["accuracy"] == pytest.approx(4 / 6)  # images 1 and 5 misclassified
    assert m["fid"] == pytest.approx(_closed_form_fid(feats.numpy(), real.numpy()), rel=1e-6)
    assert m["attribute_accuracy"] == pytest.approx(5 / 6)  # image 3: 0.7 but asked off


def test_edit_metrics_interference_and_effect():
    # 1 identity, 3 attributes; attribute t is turned on in state t + 1
    amps = [
        np.array([[0.1, 0.1, 0.1]]),
        np.array([[0.9, 0.2, 0.1]]),
        np.array([[0.8, 0.9, 0.4]]),
        np.array([[0.8, 0.9, 0.9]]),
    ]
    m = edit_metrics(amps)
    assert m["interference"][0] == pytest.approx((0.1 + 0.0) / 2)  # b, c vs start
    assert m["interference"][1] == pytest.approx(0.3)  # c vs start
    assert math.isnan(m["interference"][2])  # nothing left untouched
    assert m["interference_per_step"] == pytest.approx([0.05, (0.1 + 0.3) / 2, 0.0])
    assert m["edit_effect"] == pytest.approx([0.8, 0.7, 0.5])


def _results(ca_acc=0.9, cg_acc=0.8, ca_var=0.01, ca_int=(0.01, 0.02, None)):
    def r(acc, var, inter, fid=10.0):
        return {
            "accuracy": acc,
            "fid": fid,
            "attribute_accuracy": 0.8,
            "attribute_accuracy_per": {"a": 0.8},
            "amp_variance": var,
            "amp_variance_per": {"a": var},
            "interference": list(inter),
            "interference_per_step": list(inter),
            "edit_effect": [0.3, 0.3, 0.3],
        }

    return {
        "CAGlow": r(ca_acc, ca_var, ca_int),
        "CGlow": r(cg_acc, 0.02, (0.05, 0.05, None)),
        "Glow + pre-stored": r(0.5, 0.03, (0.1, 0.1, None)),
        "Glow (prior)": {"fid": 9.0},
    }


def _seeds(*runs):
    return aggregate(list(runs))


def test_claims_are_confirmed_or_refuted_from_the_numbers():
    ok = claims(_seeds(_results()))
    assert [c["verdict"] for c in ok] == ["confirmed"] * 4
    bad = claims(_seeds(_results(ca_acc=0.7, ca_var=0.05, ca_int=(0.01, 0.2, None))))
    assert [c["verdict"] for c in bad] == ["refuted", "confirmed", "refuted", "refuted"]
    assert "CAGlow 0.700 vs CGlow 0.800" in bad[0]["evidence"]


def test_a_difference_within_the_seed_spread_is_not_resolved():
    # CAGlow 0.85 +- 0.071 vs CGlow 0.80 +- 0: the 0.05 difference is inside the spread
    noisy = claims(_seeds(_results(ca_acc=0.8), _results(ca_acc=0.9)))
    assert noisy[0]["verdict"] == "not resolved" and noisy[0]["confirmed"] is False
    assert "CAGlow 0.850 ± 0.071 vs CGlow 0.800 ± 0.000" in noisy[0]["evidence"]
    # the same mean with a small spread resolves
    tight = claims(_seeds(_results(ca_acc=0.84), _results(ca_acc=0.86)))
    assert tight[0]["verdict"] == "confirmed"
    # one comparison refuted beyond the spread refutes "lowest AMP variance"
    assert claims(_seeds(_results(ca_var=0.025), _results(ca_var=0.025)))[2]["verdict"] == "refuted"


def test_aggregate_gives_mean_and_sample_std_per_number():
    agg = aggregate([{"a": 1.0, "b": [1.0, None], "s": "x"}, {"a": 3.0, "b": [3.0, None], "s": "x"}])
    assert agg["a"]["mean"] == 2.0 and agg["a"]["std"] == pytest.approx(math.sqrt(2))
    assert agg["b"][0]["mean"] == 2.0 and agg["s"] == "x"
    assert agg["b"][1] is None


def test_markdown_lays_out_the_tables_with_error_bars():
    runs = [_results(ca_acc=0.8), _results(ca_acc=0.9)]
    cov = {
        "precision": 0.9,
        "recall": 0.8,
        "density": 1.0,
        "coverage": 0.7,
        "diversity_pixels": 8.0,
        "diversity_features": 3.0,
        "nn_train_median": 6.0,
        "copy_fraction": 0.02,
    }
    for r in runs:
        for m in METHODS:
            r[m]["coverage"] = dict(cov)
    ref = {
        "class_accuracy_real_test": 0.99,
        "fid_real_train_vs_test": 1.0,
        "coverage_real": dict(cov),
        "attribute_accuracy_real_test": 0.9,
        "attribute_accuracy_per_real_test": {"a": 0.9},
        "amp_variance_real_test": 0.001,
        "amp_variance_per_real_test": {"a": 0.001},
    }
    res = aggregate(runs)
    report = {
        "dataset": "d",
        "seeds": [0, 1],
        "backbone": {"path": "bb", "content_hash": "0" * 64, "config": TINY.model_dump()},
        "config": {
            "seed": 0,
            "temperature": 0.7,
            "samples_per_class": 4,
            "alpha": 1.0,
            "prior": "joint",
            "cglow_epochs": 3,
            "cglow_max_steps": None,
            "attach_steps": 10,
        },
        "machine": {"torch_threads": 1, "cpus": 2},
        "wall_seconds": 3.0,
        "attributes": {"names": ["a"]},
        "cost": aggregate([{"CGlow": {"trained": "all", "seconds": s, "bits_per_dim": 3.0}} for s in (2, 4)]),
        "total_training_seconds": {"CGlow": 6.0, "all": 6.0},
        "results": res,
        "reference": aggregate([ref, ref]),
        "claims": claims(res),
        "figures": ["fig3.png"],
    }
    lines = markdown(report).splitlines()
    for title in (
        "## Table 1",
        "## Table 2",
        "## Table 3",
        "## Cost",
        "## Coverage",
        "## The paper's claims",
    ):
        assert any(line.startswith(title) for line in lines)
    assert "| CGlow | all | 3.0 ± 1.4 |  | 3.0000 ± 0.0000 |" in lines
    assert "| CAGlow | 0.850 ± 0.071 | 10.00 ± 0.00 |" in lines
    assert "| real images | 0.990 ± 0.000 | 1.00 ± 0.00 (train vs test, the floor) |" in lines
    assert any("is below every model's FID" in line for line in lines)
    assert "| real test images | 0.900 ± 0.000 | 0.900 ± 0.000 | 0.0010 ± 0.0000 | 0.0010 ± 0.0000 |" in lines
    assert any(line.startswith("| real test images | 0.900 ± 0.000 | 0.800 ± 0.000 |") for line in lines)
    # Table 3: after 1..3, step 1..3 (undefined: n/a), effect of each edit
    assert any(line.startswith("| CAGlow | 0.010 ± 0.000 | 0.020 ± 0.000 | n/a |") for line in lines)
    assert sum(line.startswith("- **not resolved**") for line in lines) == 1  # the accuracy claim
    assert "- [fig3.png](fig3.png)" in lines


# ------------------------------------------------------------------------ generators
def _kind(name: str, base: str = "ids") -> type:
    """A copy of a built-in kind registered under another name."""
    return type(name.title(), (registry.get_condition_kind(base),), {"name": name})


def test_generators_apply_the_same_conditions_as_their_models():
    ds = tiny_image_dataset()
    bb = _backbone()
    w = torch.eye(10)[torch.tensor([1, 4])]
    v = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    # Glow + pre-stored: eps + class shift + alpha * (v - 1/2) @ deltas
    feats = PreStored.fit(torch.randn(32, 64), ds.labels["digit"], ds.labels["attributes"], n_classes=10)
    gen = PreStoredGenerator(bb, feats, 0.7, alpha=2.0)
    noise = gen.noise(2, g)
    z = gen.latents(w, v, noise)
    assert torch.allclose(z, feats.latents(noise[0], torch.tensor([1, 4]), v, alpha=2.0))
    assert torch.equal(gen.decode(z, batch_size=1), bb.decode(z))
    # CGlow: its prior at [one-hot, attributes]
    cg = CGlow(TINY, CGlowConfig.from_dataset(ds))
    cg.backbone.initialize(ds.images)
    torch.nn.init.normal_(cg.prior_loc.weight)
    cg.freeze()
    gen = CGlowGenerator(cg, 0.7)
    noise = gen.noise(2, g)
    expect = cg.latents(cg.condition(torch.tensor([1, 4]), v), noise[0])
    assert torch.allclose(gen.latents(w, v, noise), expect)
    assert gen.images(w, v, noise).shape == (2, 1, 8, 8)


def test_caglow_generator_finds_each_plugin_by_its_role_not_its_name(flowcond_register):
    flowcond_register(_kind("klass"))
    flowcond_register(_kind("traits", "attributes"))
    flowcond_register(_kind("latent", "codes"))
    ds, bb = tiny_image_dataset(), _backbone()
    order = ["traits", "latent", "klass"]  # not the order attach uses
    kinds = {n: registry.get_condition_kind(n).from_dataset(None, ds) for n in order}
    heads = Heads(bb, kinds, AttachConfig(plugins=order)).eval()
    gen = CAGlowGenerator(heads, 0.7, Roles("klass", "traits", "latent"), n_classes=10)
    w = torch.eye(10)[torch.tensor([1, 4])]
    v = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    noise = gen.noise(2, torch.Generator().manual_seed(0))
    assert len(noise) == 3 and noise[2].shape == (2, 2)
    c = heads.condition_input({"klass": torch.tensor([1, 4]), "traits": v, "latent": noise[2]})
    with torch.no_grad():
        expect = heads.generate_from_input(c, noise[0], noise[1])
    assert torch.allclose(gen.latents(w, v, noise), expect)
    # soft class weights interpolate the class inputs
    half = gen.latents(torch.full((1, 10), 0.1), v[:1], tuple(t[:1] for t in noise))
    c_half = c[:1].clone()
    c_half[:, -10:] = 0.1
    with torch.no_grad():
        assert torch.allclose(half, heads.generate_from_input(c_half, noise[0][:1], noise[1][:1]))
    with pytest.raises(ConfigError, match="no role: latent"):
        CAGlowGenerator(heads, 0.7, Roles("klass", "traits"), n_classes=10)


# ------------------------------------------------------------------------ discovery
def test_roles_of_the_builtin_plugins():
    assert find_roles(_cfg()) == Roles("ids", "attributes", "codes")
    assert find_roles(_cfg(codes=0)) == Roles("ids", "attributes", None)
    opts = plugin_options(Roles("ids", "attributes", "codes"), "digit", "attrs", 3)
    assert opts == {"ids": {"field": "digit"}, "attributes": {"field": "attrs"}, "codes": {"n": 3}}


def test_two_categorical_kinds_are_ambiguous_until_class_plugin_chooses(flowcond_register):
    flowcond_register(_kind("ids2"))
    with pytest.raises(ConfigError, match="ids, ids2; choose one with class_plugin"):
        find_roles(_cfg())
    assert find_roles(_cfg(class_plugin="ids2")).classes == "ids2"
    assert find_roles(_cfg(class_plugin="ids")).classes == "ids"
    with pytest.raises(ConfigError, match="class_plugin='attributes' is not a registered categorical"):
        find_roles(_cfg(class_plugin="attributes"))


def test_unsupervised_kind_without_n_is_refused_by_name(flowcond_register):
    class NoiseOptions(BaseModel):
        scale: float = 1.0

    codes = registry.get_condition_kind("codes")
    flowcond_register(type("Noisy", (codes,), {"name": "noisy", "Options": NoiseOptions}))
    with pytest.raises(ConfigError, match="codes, noisy; choose one with code_plugin"):
        find_roles(_cfg())
    with pytest.raises(ConfigError, match="'noisy'.*no 'n'"):
        find_roles(_cfg(code_plugin="noisy"))
    assert find_roles(_cfg(code_plugin="noisy", codes=0)).codes is None  # no codes: not needed


def _dataset(fields: list[LabelField], name: str) -> ImageDataset:
    labels = {
        f.name: torch.arange(6) % f.size if f.kind == "categorical" else torch.ones(6, f.size) for f in fields
    }
    return ImageDataset(torch.rand(6, 1, 8, 8), labels, fields, {"name": name})


class _Datasets:
    """``plain`` has classes only; ``plain-extra`` has only more classes; ``tagged`` extends
    ``plain`` with attributes."""

    @hookimpl
    def register_datasets(self, register):
        digit = LabelField("digit", "categorical", 3)
        tags = LabelField("tags", "binary", 2, ["x", "y"])
        register("plain", lambda split, **kw: _dataset([digit], "plain"))
        register("plain-extra", lambda split, **kw: _dataset([digit], "plain-extra"), extends="plain")
        register("tagged", lambda split, **kw: _dataset([digit, tags], "tagged"), extends="plain")
        register("alone", lambda split, **kw: _dataset([digit], "alone"))


def test_a_dataset_registered_with_extends_is_found(flowcond_register):
    flowcond_register(_Datasets(), "test-datasets")
    name, train, test = resolve_dataset("plain")
    assert name == "tagged" and set(train.schema) == {"digit", "tags"} and len(test) == 6
    assert resolve_dataset("tagged")[0] == "tagged"
    with pytest.raises(ConfigError, match=r"tried 'alone' \(a dataset"):
        resolve_dataset("alone")
    with pytest.raises(ConfigError, match=r"'nothing' is not registered"):
        resolve_dataset("nothing")


# ------------------------------------------------------------------------ CLI, tiny
class _TinyData:
    @hookimpl
    def register_datasets(self, register):
        def load(split, root=None, download=False):
            ds = tiny_image_dataset(n=40, seed=0 if split == "train" else 1)
            ds.spec = {"name": "tinyattr", "split": split}
            return ds

        register("tinyattr", load, "random 8x8 images with digit + attributes")


def _recomputed(out, bb_path, evaluator, train, test, seed=0) -> dict[str, dict[str, float]]:
    """Accuracy and FID of each method, from the saved models, recomputed outside the pipeline."""
    bb = Backbone.load(bb_path)
    (cglow_file,) = (out / "models").glob(f"cglow-seed{seed}-*.safetensors")
    gens = [
        CAGlowGenerator(
            Heads.load(out / f"seed{seed}" / "caglow.heads.safetensors", bb).eval(),
            0.7,
            Roles("ids", "attributes", "codes"),
            10,
        ),
        CGlowGenerator(CGlow.load(cglow_file), 0.7),
        PreStoredGenerator(bb, PreStored.load(out / "prestored.safetensors", bb), 0.7, 1.0),
    ]
    req = requested(10, 3, train.labels["digit"], train.labels["attributes"], seed=seed)
    real = evaluator.features(test.images).numpy()
    got = {}
    for gen in gens:
        x = gen.images(req.w, req.attrs, gen.noise(30, torch.Generator().manual_seed(seed)))
        pred = evaluator.predict(x)
        got[gen.name] = {
            "accuracy": sum(int(p) == int(k) for p, k in zip(pred, req.ids, strict=True)) / 30,
            "fid": _closed_form_fid(evaluator.features(x).numpy().astype(np.float64), real),
        }
    return got


def test_cli_evaluate_writes_tables_and_figures(tmp_path, flowcond_plugins, flowcond_cli):
    from flowcond.paper.train_evaluator import train_evaluator

    flowcond_plugins.register(_TinyData(), "tinyattr")
    train, test = load_dataset("tinyattr", "train"), load_dataset("tinyattr", "test")
    bb = Backbone(TINY)
    bb.initialize(train.images)
    bb_path = tmp_path / "bb.safetensors"
    bb.freeze().save(bb_path, dataset={"name": "tinyattr", "split": "train"}, test_bits_per_dim=5.0)
    common = dict(epochs=1, widths=[4], feature_dim=8, progress=False)
    train_evaluator((train, test), out=tmp_path / "ev.safetensors", label="digit", **common)
    train_evaluator((train, test), out=tmp_path / "attr.safetensors", label="attributes", **common)
    out = tmp_path / "res"
    args = (
        *("evaluate", "--backbone", str(bb_path), "--evaluator", str(tmp_path / "ev.safetensors")),
        *("--attr-evaluator", str(tmp_path / "attr.safetensors"), "--out", str(out)),
        *("--cglow-epochs", "3", "--cglow-max-steps", "2", "--attach-steps", "3", "--seeds", "0,1"),
        *("--samples-per-class", "3", "--threads", "1", "--cache-dir", str(tmp_path / "cache")),
        "--quiet",
    )
    r = flowcond_cli(*args)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "results.json").read_text())
    assert report["dataset"] == "tinyattr" and report["seeds"] == [0, 1]
    assert report["roles"] == {"class": "ids", "attribute": "attributes", "code": "codes"}
    assert set(METHODS) <= set(report["results"]) and "Glow (prior)" in report["results"]
    ev = Evaluator.load(tmp_path / "ev.safetensors")
    for i, seed in enumerate((0, 1)):
        expected = _recomputed(out, bb_path, ev, train, test, seed)
        for m in METHODS:
            x = report["per_seed"][i]["results"][m]
            assert x["accuracy"] == pytest.approx(expected[m]["accuracy"], abs=1e-6)
            assert x["fid"] == pytest.approx(expected[m]["fid"], rel=1e-4, abs=1e-6)
            assert len(x["interference"]) == 3
            assert set(x["coverage"]) >= {"precision", "recall", "density", "coverage", "copy_fraction"}
    for m in METHODS:  # the table holds the mean and spread of the seeds' numbers
        acc = report["results"][m]["accuracy"]
        values = [s["results"][m]["accuracy"] for s in report["per_seed"]]
        assert acc["values"] == pytest.approx(values) and acc["mean"] == pytest.approx(np.mean(values))
        assert acc["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    assert report["cost"]["CGlow"]["steps"]["mean"] == 2 and report["cost"]["CAGlow"]["steps"]["mean"] == 3
    assert not any(s["cost"]["CGlow"]["reused"] for s in report["per_seed"])
    md = (out / "results.md").read_text()
    assert "## Table 3" in md and "Glow + pre-stored" in md and "## Coverage" in md
    for f in report["figures"]:
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    assert (
        sorted(f.split("_")[0] for f in report["figures"])
        == ["fig3"] * 3 + ["fig4"] * 3 + ["fig5"] * 3 + ["fig6"] * 4
    )
    # the printed verdicts are the claims of results.json, one line each, in order
    printed = [
        line.strip()
        for line in r.output.splitlines()
        if line.strip().startswith(("confirmed:", "refuted:", "not resolved:"))
    ]
    assert printed == [f"{c['verdict']}: {c['claim']} ({c['evidence']})" for c in report["claims"]]
    # a second run reuses the trained CGlow models (same options, seeds and data) and gets the
    # same numbers
    r = flowcond_cli(*args, "--force")
    assert r.exit_code == 0, r.output
    again = json.loads((out / "results.json").read_text())
    assert all(s["cost"]["CGlow"]["reused"] for s in again["per_seed"])
    for m in METHODS:
        assert again["results"][m]["fid"]["values"] == pytest.approx(report["results"][m]["fid"]["values"])


def test_evaluate_needs_class_and_attribute_fields(tmp_path, flowcond_cli):
    bb = _backbone()
    bb.save(tmp_path / "bb.safetensors", dataset={"name": "digits", "split": "train"})
    r = flowcond_cli(
        "evaluate",
        "--backbone",
        str(tmp_path / "bb.safetensors"),
        "--evaluator",
        "examples/evaluators/mnist5k_evaluator.safetensors",
        "--out",
        str(tmp_path / "o"),
        "--quiet",
    )
    assert r.exit_code != 0 and "categorical (class) and a binary (attributes)" in r.output
    assert "tried 'digits'" in r.output


def test_evaluate_device_is_checked_before_any_loading(tmp_path):
    """``--device``: a bad spelling is an option error; a GPU that is not there is one line,
    before the backbone or the evaluator is read (neither file exists here)."""
    from click.testing import CliRunner

    from flowcond.cli import cli

    args = ["evaluate", "--backbone", str(tmp_path / "bb.safetensors"), "--evaluator", "ev.safetensors"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r"), "--device", "gpu"])
    assert result.exit_code == 1 and "device: " in result.output
    assert "'gpu': expected auto, cpu, cuda or cuda:N" in result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r"), "--device", "cuda"])
        assert result.exit_code == 1
        assert "--device cuda: CUDA is not available here" in result.output
