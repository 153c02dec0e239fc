"""``import-backbone --from normflows``: a Glow trained with plain normflows, as its Glow example
trains one, becomes a backbone file that attaches and samples; what it cannot map is refused."""

from __future__ import annotations

import hashlib
import json
import warnings

import normflows as nf
import pytest
import torch
from click.testing import CliRunner

import flowcond
from flowcond import AttachConfig, Backbone, BackboneConfig, Heads, attach
from flowcond.cli import cli
from flowcond.datasets import load_dataset
from flowcond.errors import FileFormatError
from flowcond.flow.backbone import _build_flow
from flowcond.flow.header import expected_weights
from flowcond.io import safefile

SHAPE = (1, 8, 8)  # the "digits" dataset: 8x8 grey images, 10 classes


def normflows_glow(L: int, K: int, hidden: int, prior: str, **block) -> nf.MultiscaleFlow:
    """The model of normflows' Glow example (examples/glow_colab.ipynb), at a tiny size; ``block``
    changes GlowBlock options (the example uses split_mode="channel", scale=True)."""
    torch.manual_seed(0)
    C, H, W = SHAPE
    q0, merges, flows = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(L):
            level = [
                nf.flows.GlowBlock(
                    C * 2 ** (L + 1 - i), hidden, **{"split_mode": "channel", "scale": True, **block}
                )
                for _ in range(K)
            ]
            flows.append([*level, nf.flows.Squeeze()])
            if i > 0:
                merges.append(nf.flows.Merge())
                latent = (C * 2 ** (L - i), H // 2 ** (L - i), W // 2 ** (L - i))
            else:
                latent = (C * 2 ** (L + 1), H // 2**L, W // 2**L)
            if prior == "classcond":
                q0.append(nf.distributions.ClassCondDiagGaussian(latent, 10))
            elif prior == "glowbase":
                q0.append(nf.distributions.GlowBase(latent))
            else:
                q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=prior == "classcond")


def train(model: nf.MultiscaleFlow, steps: int) -> nf.MultiscaleFlow:
    """A few Adamax steps on digits, with the example's Scale(255/256) + Jitter(1/256) data."""
    ds = load_dataset("digits", "train")
    labels = ds.labels["digit"]
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3, weight_decay=1e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(ds), (32,), generator=g)
        x = ds.images[idx] * 255 / 256 + torch.rand(32, *SHAPE, generator=g) / 256
        opt.zero_grad()
        loss = model.forward_kld(x, labels[idx] if model.class_cond else None)
        if ~(torch.isnan(loss) | torch.isinf(loss)):
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """normflows' example Glow (class-conditional prior), 2 levels x 2 steps, hidden 8, trained
    for 8 steps and saved with torch.save(model.state_dict())."""
    model = normflows_glow(2, 2, 8, "classcond")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, 8)
    path = tmp_path_factory.mktemp("nf") / "glow.pt"
    torch.save(model.state_dict(), path)
    return model, init, path


def test_trained_glow_imports_attaches_and_samples(trained, tmp_path):
    model, init, path = trained
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, init[k])]
    assert any(".param_map." in k for k in changed) and any(k.startswith("q0.") for k in changed)
    out = tmp_path / "glow.safetensors"
    args = ["import-backbone", "--from", "normflows", str(path), "--prior-class", "3", "--dataset", "digits"]
    r = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "levels 2, steps 2, hidden 8, images 1x8x8" in r.output and "agreement with normflows" in r.output
    bb = Backbone.load(out)
    report = bb.metadata["import_verification"]
    for name in ("z", "x", "log_likelihood"):
        assert report[f"{name}_max_abs_diff"] < 1e-3, report
        assert report[f"{name}_max_abs_diff"] <= report[f"{name}_tolerance"]
    assert report["decoded_images_compared"] > 0

    # independently of the importer's report: the loaded file against the trained normflows model
    x = load_dataset("digits", "test").images[:16]
    y = bb.preprocess(x)  # [-0.5, 0.5]; the example fed [0, 1]
    with torch.no_grad():
        ll_nf = model.log_prob(y + 0.5, torch.full((16,), 3))
        ll_fc = bb.log_prob_input(y)
        z_nf, _ = model.inverse_and_log_det(y + 0.5)
        assert torch.allclose(bb.flatten_levels(bb.encode_levels(y)[0]), bb.flatten_levels(z_nf), atol=1e-4)
        x_nf, _ = model.forward_and_log_det(z_nf)
        assert torch.allclose(bb.decode(bb.encode(x)), bb.postprocess(x_nf - 0.5), atol=1e-4)
    assert torch.allclose(ll_fc, ll_nf, rtol=1e-5, atol=1e-3)

    info = json.loads(CliRunner().invoke(cli, ["info", str(out)]).stdout)
    prov = info["provenance"]
    assert prov["source"] == "imported" and prov["library"] == "normflows" and prov["file"] == "glow.pt"
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["library_version"] == nf.__version__

    heads_path = tmp_path / "h.heads.safetensors"
    cfg = AttachConfig(plugins=["ids"], steps=12, batch_size=16, cache_dir=str(tmp_path / "cache"))
    attach(out, cfg, heads_path, progress=False)
    heads = Heads.load(heads_path)
    images, _ = heads.sample(["ids=7"], n=4, temperature=0.7, seed=0)
    assert images.shape == (4, *SHAPE) and torch.isfinite(images).all()


def test_a_wrong_input_range_is_pointed_out(trained, tmp_path):
    out = tmp_path / "centered.safetensors"
    args = [
        "import-backbone",
        "--from",
        "normflows",
        str(trained[2]),
        "--prior-class",
        "3",
        "--dataset",
        "digits",
    ]
    r = CliRunner().invoke(cli, [*args, "--input-range", "centered", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "warning: with --input-range unit the test images score better" in r.stderr
    meta = Backbone.load(out).metadata
    assert meta["import_verification"]["test_bits_per_dim_median_if_unit"] < meta["test_bits_per_dim_median"]


def test_python_api_imports_a_glowbase_glow_with_exp_scale(tmp_path):
    model = train(normflows_glow(1, 2, 8, "glowbase", scale_map="exp"), 3)
    path = tmp_path / "gb.pt"
    torch.save(model.state_dict(), path)
    out = tmp_path / "gb.safetensors"
    with pytest.raises(
        FileFormatError, match=r"gb\.pt: GlowBase priors do not record the image size.*--image-shape"
    ):
        flowcond.import_backbone(path, out)
    assert not out.exists()
    bb, report = flowcond.import_backbone(path, out, image_shape=(1, 8, 8), scale_map="exp")
    assert bb.config.scale_map == "exp" and bb.config.prior == "glow" and bb.config.levels == 1
    assert max(report[f"{n}_max_abs_diff"] for n in ("z", "x", "log_likelihood")) < 1e-3
    assert Backbone.load(out).content_hash == bb.content_hash
    x = torch.rand(8, *SHAPE)
    y = bb.preprocess(x)
    with torch.no_grad():
        assert torch.allclose(bb.log_prob_input(y), model.log_prob(y + 0.5, None), rtol=1e-5, atol=1e-3)


def _refused(tmp_path, state, *options: str) -> str:
    src = tmp_path / "in.pt"
    torch.save(state, src)
    out = tmp_path / "out.safetensors"
    r = CliRunner().invoke(
        cli, ["import-backbone", "--from", "normflows", str(src), *options, "--out", str(out)]
    )
    assert r.exit_code != 0 and not out.exists()
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert str(src) in r.output
    return r.output


def test_missing_and_extra_keys_are_named(trained, tmp_path):
    sd = dict(trained[0].state_dict())
    gone = "flows.1.0.flows.2.t"
    out = _refused(tmp_path, {k: v for k, v in sd.items() if k != gone}, "--prior-class", "0")
    assert f"missing keys: {gone}" in out
    out = _refused(tmp_path, {**sd, "flows.0.0.extra.weight": torch.zeros(3)}, "--prior-class", "0")
    assert "unmapped keys: flows.0.0.extra.weight" in out
    out = _refused(tmp_path, sd)  # a class-conditional prior needs --prior-class
    assert "class-conditional prior (10 classes" in out and "--prior-class" in out


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"net_actnorm": True}, "the coupling network of flows.0.0 is not GlowBlock's"),
        ({"split_mode": "checkerboard"}, "split_mode 'checkerboard'"),
    ],
)
def test_glow_variants_flowcond_cannot_represent_are_refused(tmp_path, block, message):
    out = _refused(tmp_path, normflows_glow(1, 1, 4, "diag", **block).state_dict())
    assert message in out


def test_non_glow_state_dict_is_refused(tmp_path):
    out = _refused(tmp_path, torch.nn.Linear(3, 2).state_dict())
    assert "not a normflows Glow state dict" in out and "weight" in out


class NotATensor:
    """A pickled object that torch.load(weights_only=True) must refuse."""


def test_pickled_objects_are_never_unpickled(tmp_path):
    out = _refused(tmp_path, {"flows.0.0.x": NotATensor()})
    assert "not loadable with torch.load(weights_only=True)" in out and "NotATensor" in out


def test_disagreement_with_normflows_writes_nothing(trained, tmp_path, monkeypatch):
    from flowcond.flow import import_backbone as module

    convert = module.convert

    def perturbed(*args):
        bb = convert(*args)
        with torch.no_grad():
            next(bb.flow.q0[0].parameters()).add_(0.5)
        return bb

    monkeypatch.setattr(module, "convert", perturbed)
    out = tmp_path / "bad.safetensors"
    with pytest.raises(FileFormatError, match="disagrees with the normflows model.*nothing written"):
        flowcond.import_backbone(trained[2], out, prior_class=0)
    assert not out.exists()


def test_info_derives_provenance_of_older_files(tiny_backbone, tmp_path):
    unknown = tmp_path / "bare.safetensors"
    tiny_backbone.save(unknown)
    trained_here = tmp_path / "old.safetensors"
    tiny_backbone.save(trained_here, dataset={"name": "digits", "split": "train"}, training={"steps": 5})
    info = [json.loads(CliRunner().invoke(cli, ["info", str(p)]).stdout) for p in (trained_here, unknown)]
    assert info[0]["provenance"] == {
        "source": "trained here",
        "library": "flowcond",
        "dataset": "digits",
        "steps": 5,
    }
    assert info[1]["provenance"] == {"source": "unknown"}
    assert Backbone.load(trained_here).metadata.get("provenance") is None  # older files still load


@pytest.mark.parametrize(
    ("levels", "prior", "scale_map"), [(1, "diag", "exp"), (2, "diag", "sigmoid"), (2, "glow", "exp")]
)
def test_expected_weights_of_the_configs_imports_add(levels, prior, scale_map):
    cfg = BackboneConfig(
        channels=3, height=16, width=8, levels=levels, steps=2, hidden=5, prior=prior, scale_map=scale_map
    )
    assert expected_weights(cfg) == safefile.specs_of(_build_flow(cfg))


def test_trained_backbones_record_their_provenance(tmp_path):
    out = tmp_path / "t.safetensors"
    args = ["--dataset", "digits", "--levels", "1", "--steps", "1", "--hidden", "4", "--max-steps", "2"]
    r = CliRunner().invoke(cli, ["train-backbone", *args, "--threads", "1", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    prov = json.loads(CliRunner().invoke(cli, ["info", str(out)]).stdout)["provenance"]
    assert prov["source"] == "trained" and prov["library"] == "flowcond"
    assert prov["dataset"] == "digits" and prov["steps"] == 2 and prov["date"]


def test_a_folder_or_a_missing_file_is_named_in_one_line(tmp_path):
    from flowcond.flow.import_normflows import read_state_dict

    with pytest.raises(FileFormatError, match="is a folder, expected a torch.save file"):
        read_state_dict(tmp_path)
    with pytest.raises(FileFormatError, match="no such file"):
        read_state_dict(tmp_path / "missing.pt")
