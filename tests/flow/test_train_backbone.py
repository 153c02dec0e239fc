"""Stage 1 training on the 8x8 ``digits``: learns, resumes exactly, skips non-finite batches."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from flowcond.datasets import load_dataset
from flowcond.errors import ConfigError, FlowcondError
from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig
from flowcond.flow.train import (
    CHECKPOINT_KIND,
    TrainConfig,
    bpd_stats,
    checkpoint_path,
    learning_rate,
    mean_bits_per_dim,
    train_backbone,
)
from flowcond.io import safefile

BCFG = BackboneConfig(channels=1, height=8, width=8, levels=2, steps=2, hidden=16)


def _tcfg(out, **kw) -> TrainConfig:
    base = dict(dataset="digits", epochs=2, batch_size=64, lr=2e-3, warmup=10, progress=False, out=str(out))
    return TrainConfig(**{**base, **kw})


def _weights(model: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.flow.state_dict().items()}


def test_training_lowers_test_bits_per_dim(tmp_path):
    cfg = _tcfg(tmp_path / "bb.safetensors")
    # the same initialized model training starts from
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    start = Backbone(BCFG)
    first = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:256]
    start.initialize(train.images[first])
    before = mean_bits_per_dim(start, test)

    model, summary = train_backbone(BCFG, cfg)
    after = summary["test_bits_per_dim"]
    assert after < before - 0.3, (before, after)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert summary["history"][1]["test_bpd"] < summary["history"][0]["test_bpd"]
    assert summary["training"]["steps"] == 2 * 23  # ceil(1437 / 64) per epoch
    assert summary["training"]["skipped_batches"] == 0
    # the written file is the frozen model, with the summary in its header
    loaded = Backbone.load(cfg.out)
    assert loaded.content_hash == model.content_hash
    assert loaded.metadata["test_bits_per_dim"] == pytest.approx(after)
    assert 0 <= loaded.metadata["test_images_worse_than_uniform"] < len(test)
    assert 0 < loaded.metadata["test_bits_per_dim_median"] < 8
    assert loaded.metadata["dataset"]["name"] == "digits"
    assert mean_bits_per_dim(loaded, test) == pytest.approx(after, abs=1e-5)
    header = safefile.read_header(checkpoint_path(cfg.out), CHECKPOINT_KIND)
    assert header["epoch"] == 2 and header["step"] == 46


def test_resume_is_exact(tmp_path):
    ref_model, ref = train_backbone(BCFG, _tcfg(tmp_path / "ref.safetensors", epochs=2))

    out = tmp_path / "run.safetensors"
    _, first = train_backbone(BCFG, _tcfg(out, epochs=1, max_steps=5))  # stopped after 5 of 23 batches
    assert first["training"]["epochs"] == 0 and first["training"]["steps"] == 5
    assert first["history"][0]["partial"] and first["history"][0]["batches"] == 5
    _, second = train_backbone(BCFG, _tcfg(out, epochs=1, resume=True))  # finishes epoch 1
    ckpt = checkpoint_path(out)
    assert ckpt.is_file() and safefile.read_header(ckpt)["epoch"] == 1
    assert second["training"]["steps"] == 23 and [h.get("partial") for h in second["history"]] == [None]
    model, summary = train_backbone(BCFG, _tcfg(out, epochs=2, resume=True))  # --epochs raised

    assert summary["training"]["steps"] == ref["training"]["steps"]
    assert summary["training"]["epochs"] == 2
    assert summary["history"] == ref["history"]  # the same as one uninterrupted run
    assert summary["test_bits_per_dim"] == pytest.approx(ref["test_bits_per_dim"], abs=1e-6)
    a, b = _weights(model), _weights(ref_model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-6), k
    assert model.content_hash == ref_model.content_hash  # bitwise identical here
    # the header records the segments run and the options they ran with
    assert summary["training"]["segments"] == [
        {"from": 0, "to": 5, "epochs": 1, "max_steps": 5},
        {"from": 5, "to": 23, "epochs": 1, "max_steps": None},
        {"from": 23, "to": 46, "epochs": 2, "max_steps": None},
    ]
    meta = Backbone.load(out).metadata["training"]
    assert meta["lr"] == 2e-3 and meta["warmup"] == 10 and meta["steps"] == 46 and meta["epochs"] == 2


def test_resume_refuses_a_different_config(tmp_path):
    out = tmp_path / "bb.safetensors"
    train_backbone(BCFG, _tcfg(out, epochs=1, max_steps=2))
    other = BCFG.model_copy(update={"hidden": 8})
    with pytest.raises(ConfigError, match="checkpoint was written for backbone config"):
        train_backbone(other, _tcfg(out, epochs=2, resume=True))
    with pytest.raises(ConfigError, match="batch_size=64"):
        train_backbone(BCFG, _tcfg(out, epochs=2, resume=True, batch_size=32))


def test_non_finite_batches_are_skipped_and_counted(tmp_path, monkeypatch):
    original = Backbone.bits_per_dim
    calls = {"n": 0}

    def flaky(self, x, noise=None, **kwargs):
        out = original(self, x, noise, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in (3, 7):
                return out * float("nan")
        return out

    monkeypatch.setattr(Backbone, "bits_per_dim", flaky)
    model, summary = train_backbone(BCFG, _tcfg(tmp_path / "bb.safetensors", epochs=1))
    assert summary["training"]["skipped_batches"] == 2
    assert summary["history"][0]["skipped"] == 2
    assert summary["training"]["steps"] == 23 - 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_gradients_are_skipped(tmp_path, monkeypatch):
    original = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def flaky(params, max_norm, *args, **kwargs):
        calls["n"] += 1
        norm = original(params, max_norm, *args, **kwargs)
        return norm * float("inf") if calls["n"] == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", flaky)
    model, summary = train_backbone(BCFG, _tcfg(tmp_path / "bb.safetensors", epochs=1))
    assert summary["training"]["skipped_batches"] == 1
    assert summary["training"]["steps"] == 22
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_diverging_run_names_the_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "bb.safetensors"
    original = Backbone.bits_per_dim
    state = {"diverge": False}

    def diverging(self, x, noise=None, **kwargs):
        out = original(self, x, noise, **kwargs)
        return out * float("nan") if (self.training and state["diverge"]) else out

    monkeypatch.setattr(Backbone, "bits_per_dim", diverging)
    # diverges in the first epoch: no checkpoint yet, and the message says so
    state["diverge"] = True
    with pytest.raises(FlowcondError, match="no checkpoint was written yet") as e:
        train_backbone(BCFG, _tcfg(out, epochs=1))
    assert "diverged in epoch 1" in str(e.value) and "\n" not in str(e.value)
    # one good epoch, then divergence: the error names the good checkpoint
    state["diverge"] = False
    train_backbone(BCFG, _tcfg(out, epochs=1))
    state["diverge"] = True
    with pytest.raises(FlowcondError, match="diverged in epoch 2") as e:
        train_backbone(BCFG, _tcfg(out, epochs=2, resume=True))
    assert str(checkpoint_path(out)) in str(e.value)
    assert safefile.read_header(checkpoint_path(out))["epoch"] == 1  # untouched


def test_plain_normflows_training_matches_fast_path(tmp_path):
    fast_model, fast = train_backbone(BCFG, _tcfg(tmp_path / "a.safetensors", epochs=1, max_steps=5))
    plain_model, plain = train_backbone(
        BCFG, _tcfg(tmp_path / "b.safetensors", epochs=1, max_steps=5, fast=False)
    )
    assert fast["training"]["steps"] == plain["training"]["steps"] == 5
    assert fast["history"][0]["train_bpd"] == pytest.approx(plain["history"][0]["train_bpd"], abs=1e-4)
    a, b = _weights(fast_model), _weights(plain_model)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4), k


def test_bpd_stats_name_the_images_an_exploding_inverse_dominates():
    stats = bpd_stats(torch.tensor([1.0, 1.5, 2.0, 1.0e11, float("nan")], dtype=torch.float64), n_bits=8)
    assert stats["median"] == pytest.approx(2.0)
    assert stats["worse_than_uniform"] == 2  # the exploding one and the NaN
    assert stats["mean"] != stats["mean"] or stats["mean"] > 1e10  # the mean is what it is
    stats = bpd_stats(torch.tensor([1.0, 3.0]), n_bits=8)
    assert stats == {"mean": 2.0, "median": 1.0, "worse_than_uniform": 0}  # torch: lower middle


def test_learning_rate_warms_up_holds_then_decays_to_zero(tmp_path):
    cfg = _tcfg(tmp_path / "x.safetensors", epochs=10, lr=1e-3, warmup=4, decay_epochs=2)
    lrs = [learning_rate(cfg, step, steps_per_epoch=5) for step in range(50)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4:40] == pytest.approx([1e-3] * 36)  # constant until the last 2 epochs
    assert lrs[40:] == pytest.approx([1e-3 * (10 - i) / 10 for i in range(10)])
    assert learning_rate(cfg.model_copy(update={"decay_epochs": 0}), 49, 5) == pytest.approx(1e-3)


def test_training_uses_the_requested_threads_and_restores_them(tmp_path, monkeypatch):
    import flowcond.flow.train as tb

    seen = []
    real_step = tb.train_step
    monkeypatch.setattr(
        tb, "train_step", lambda *a, **k: seen.append(torch.get_num_threads()) or real_step(*a, **k)
    )
    before = torch.get_num_threads()
    train_backbone(BCFG, _tcfg(tmp_path / "t.safetensors", epochs=1, max_steps=2, threads=1))
    assert seen == [1, 1]
    assert torch.get_num_threads() == before


def test_cli_train_backbone(tmp_path):
    from flowcond.cli import cli

    out = tmp_path / "cli.safetensors"
    args = [
        "train-backbone",
        "--dataset",
        "digits",
        "--levels",
        "2",
        "--steps",
        "2",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--warmup",
        "2",
        "--decay-epochs",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".png").is_file()
    assert Backbone.load(out).config.hidden == 8
    assert f"wrote {out}" in result.stdout


def test_cli_train_backbone_bad_config_is_one_line(tmp_path):
    from flowcond.cli import cli

    out = tmp_path / "x.safetensors"
    result = CliRunner().invoke(
        cli, ["train-backbone", "--dataset", "digits", "--levels", "4", "--out", str(out)]
    )
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("Error: invalid configuration"), errors
    assert "height=8 must be divisible by 2**levels=16" in errors[0]
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("where", ["at compile", "at first call"])
def test_compile_falls_back_to_eager(tmp_path, monkeypatch, where):
    def broken_compile(fn, *args, **kwargs):
        if where == "at compile":
            raise RuntimeError("no C++ compiler\nsecond line")

        def fails(*a, **k):
            raise RuntimeError("inductor exploded")

        return fails

    eager_model, eager = train_backbone(BCFG, _tcfg(tmp_path / "e.safetensors", epochs=1, max_steps=4))
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="torch.compile failed, training continues without it"):
        model, summary = train_backbone(
            BCFG, _tcfg(tmp_path / "c.safetensors", epochs=1, max_steps=4, compile=True)
        )
    assert summary["training"]["compiled"] is False
    assert summary["training"]["steps"] == 4
    assert model.content_hash == eager_model.content_hash  # the same eager computation


# ------------------------------------------------------------------ resume binds what it resumes
@pytest.fixture(scope="module")
def two_step_checkpoint(tmp_path_factory):
    """The checkpoint of a run stopped after 2 steps of its first epoch (and its bytes)."""
    out = tmp_path_factory.mktemp("resume") / "bb.safetensors"
    train_backbone(BCFG, _tcfg(out, epochs=1, max_steps=2))
    return out, checkpoint_path(out).read_bytes()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 0.01}, r"training options lr=0\.002 \(now lr=0\.01\)"),
        ({"warmup": 50}, r"warmup=10 \(now warmup=50\)"),
        ({"decay_epochs": 1}, r"decay_epochs=0 \(now decay_epochs=1\)"),
        ({"clip": 5.0}, r"clip=50\.0 \(now clip=5\.0\)"),
        ({"optimizer": "adam"}, r"optimizer='adamax' \(now optimizer='adam'\)"),
        ({"seed": 1}, r"seed=0 \(now seed=1\)"),
        ({"max_steps": 1}, r"has already run 2 steps, more than --max-steps 1"),
    ],
)
def test_resume_refuses_changed_training_options(two_step_checkpoint, change, message):
    out, before = two_step_checkpoint
    with pytest.raises(ConfigError, match=message) as e:
        train_backbone(BCFG, _tcfg(out, **{"epochs": 2, "resume": True, **change}))
    assert "\n" not in str(e.value) and str(checkpoint_path(out)) in str(e.value)
    assert checkpoint_path(out).read_bytes() == before  # nothing ran


def test_resume_refuses_fewer_epochs_than_done_and_other_data(tmp_path, monkeypatch):
    import flowcond.flow.train as tb

    out = tmp_path / "bb.safetensors"
    train_backbone(BCFG, _tcfg(out, epochs=2, batch_size=512))  # 3 steps an epoch
    with pytest.raises(ConfigError, match="has already run 2 complete epochs, more than --epochs 1"):
        train_backbone(BCFG, _tcfg(out, epochs=1, batch_size=512, resume=True))
    real = tb.load_dataset

    def fewer_images(name, split, **kw):
        ds = real(name, split, **kw)
        ds.images, ds._n = ds.images[:1400], 1400
        ds.labels = {k: v[:1400] for k, v in ds.labels.items()}
        return ds

    monkeypatch.setattr(tb, "load_dataset", fewer_images)
    with pytest.raises(
        ConfigError, match=r"written for dataset size=1437, labels='[0-9a-f]+' \(now size=1400"
    ):
        train_backbone(BCFG, _tcfg(out, epochs=3, batch_size=512, resume=True))


def test_cli_resume_with_another_lr_is_one_line(two_step_checkpoint):
    from flowcond.cli import cli

    out, before = two_step_checkpoint
    args = ["train-backbone", "--dataset", "digits", "--levels", "2", "--steps", "2", "--hidden", "16"]
    args += ["--epochs", "2", "--batch-size", "64", "--warmup", "10", "--lr", "0.01", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--resume", "--quiet"])
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and "training options lr=0.002 (now lr=0.01)" in errors[0], result.output
    assert checkpoint_path(out).read_bytes() == before
