"""The evaluator classifier: tiny training, save/load round trip, bad files refused, CLI."""

from __future__ import annotations

import pickle
import struct

import pytest
import torch
from click.testing import CliRunner

from flowcond.augment import random_affine, random_shift
from flowcond.datasets import ImageDataset, LabelField
from flowcond.errors import ConfigError, FileFormatError
from flowcond.io import safefile
from flowcond.paper.evaluator import Evaluator, EvaluatorConfig, EvaluatorNet
from flowcond.paper.train_evaluator import train_evaluator

SMALL = dict(widths=[8, 16], feature_dim=32, threads=1, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny networks run fastest on one thread (and the test machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    from flowcond_plugins.datasets import load_digits

    return load_digits("train"), load_digits("test")


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("ev") / "evaluator.safetensors"
    ev, summary = train_evaluator(digits, epochs=3, batch_size=64, lr=1e-2, shift=1, out=path, **SMALL)
    return ev, summary, path


def test_tiny_training_learns_digits(trained):
    ev, summary, _ = trained
    assert summary["test_accuracy"] > 0.7  # chance is 0.1
    assert ev.test_accuracy == summary["test_accuracy"]
    assert ev.label == "digit" and ev.class_names == [str(i) for i in range(10)]


def test_inference_api_is_batched_and_consistent(trained, digits):
    ev, _, _ = trained
    x = digits[1].images[:20]
    proba = ev.predict_proba(x, batch_size=7)
    assert proba.shape == (20, 10)
    torch.testing.assert_close(proba.sum(1), torch.ones(20))
    torch.testing.assert_close(proba, ev.predict_proba(x))
    assert torch.equal(ev.predict(x, batch_size=3), proba.argmax(1))
    feats = ev.features(x, batch_size=5)
    assert feats.shape == (20, 32) and not feats.requires_grad
    assert ev.predict(x[0]).shape == (1,)  # a single (C, H, W) image
    with pytest.raises(ConfigError, match=r"\(N, 1, 8, 8\)"):
        ev.predict(torch.zeros(2, 1, 32, 32))


def test_save_load_round_trip(trained, digits):
    ev, _, path = trained
    loaded = Evaluator.load(path)
    x = digits[1].images[:16]
    torch.testing.assert_close(loaded.predict_proba(x), ev.predict_proba(x))
    torch.testing.assert_close(loaded.features(x), ev.features(x))
    header = safefile.read_header(path, "evaluator")
    assert header["label"] == "digit" and header["class_names"] == ev.class_names
    assert header["test_accuracy"] == ev.test_accuracy
    assert header["dataset"]["name"] == "digits"
    assert header["training"]["epochs"] == 3 and header["training"]["label"] == "digit"
    assert (header["training"]["rotate"], header["training"]["scale"]) == (10.0, 0.1)
    assert EvaluatorConfig.model_validate(header["config"]) == ev.config
    loaded.save(path.with_name("again.safetensors"))  # re-saving a loaded evaluator works
    assert Evaluator.load(path.with_name("again.safetensors")).test_accuracy == ev.test_accuracy


def test_bad_files_are_refused(trained, tmp_path, monkeypatch):
    _, _, good = trained
    data = good.read_bytes()
    cases = {}
    cases["missing"] = tmp_path / "missing.safetensors"
    (p := tmp_path / "garbage.safetensors").write_bytes(b"not a model at all")
    cases["garbage"] = p
    (p := tmp_path / "truncated.safetensors").write_bytes(data[: len(data) - 100])
    cases["truncated"] = p
    (p := tmp_path / "pickle.safetensors").write_bytes(pickle.dumps({"w": 1}, protocol=2) + b"\0" * 16)
    cases["pickle"] = p
    safefile.write(p := tmp_path / "backbone.safetensors", {"w": torch.zeros(1)}, {"kind": "backbone"})
    cases["wrong kind"] = p
    tensors, header = safefile.read(good, "evaluator")
    bad_cfg = {**header, "config": {**header["config"], "n_outputs": 5}}
    bad_cfg.pop("content_hash")
    safefile.write(p := tmp_path / "mismatch.safetensors", tensors, bad_cfg)
    cases["config/weights mismatch"] = p
    safefile.write(p := tmp_path / "invalid.safetensors", tensors, {**header, "config": {"channels": "one"}})
    cases["invalid config"] = p
    no_label = {k: v for k, v in header.items() if k != "label"}
    safefile.write(p := tmp_path / "nolabel.safetensors", tensors, no_label)
    cases["no label"] = p
    # flip one weight byte: the content hash catches it
    n = struct.unpack("<Q", data[:8])[0]
    flipped = bytearray(data)
    flipped[8 + n + 3] ^= 0xFF
    (p := tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    cases["corrupted weights"] = p

    def refuse(*a, **k):
        raise AssertionError("tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    for name, path in cases.items():
        with pytest.raises(FileFormatError) as e:
            Evaluator.load(path)
        assert str(path) in str(e.value), name


def test_binary_attribute_evaluator():
    # attribute 0: bright top half; attribute 1: bright left half
    g = torch.Generator().manual_seed(0)
    n = 256
    attrs = (torch.rand(n, 2, generator=g) > 0.5).float()
    x = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    x[:, :, :4, :] += attrs[:, 0, None, None, None] * 0.8
    x[:, :, :, :4] += attrs[:, 1, None, None, None] * 0.8
    schema = [LabelField("attributes", "binary", 2, ["top", "left"])]
    train = ImageDataset(x[:192], {"attributes": attrs[:192]}, schema, {"name": "toy", "split": "train"})
    test = ImageDataset(x[192:], {"attributes": attrs[192:]}, schema, {"name": "toy", "split": "test"})
    ev, summary = train_evaluator((train, test), epochs=6, batch_size=32, lr=1e-2, shift=0, **SMALL)
    assert summary["test_accuracy"] > 0.85
    # rotation / zoom would change geometric attributes: off by default for binary labels
    assert (ev.info["training"]["rotate"], ev.info["training"]["scale"]) == (0.0, 0.0)
    p = ev.predict_proba(test.images)
    assert p.shape == (64, 2) and float(p.min()) >= 0 and float(p.max()) <= 1
    assert set(ev.predict(test.images).unique().tolist()) <= {0.0, 1.0}


def test_bad_training_options_are_config_errors(digits):
    with pytest.raises(ConfigError, match="no label"):
        train_evaluator(digits, label="colour", epochs=1, **SMALL)
    with pytest.raises(ConfigError, match="epochs"):
        train_evaluator(digits, epochs=0, **SMALL)
    with pytest.raises(ConfigError, match="colour"):
        train_evaluator(digits, colour="red", **SMALL)


def test_network_handles_several_image_sizes():
    for shape in [(1, 8, 8), (1, 32, 32), (3, 64, 64)]:
        cfg = EvaluatorConfig(
            channels=shape[0],
            height=shape[1],
            width=shape[2],
            n_outputs=4,
            widths=[4, 8],
            feature_dim=16,
        )
        net = EvaluatorNet(cfg).eval()
        assert net(torch.rand(2, *shape)).shape == (2, 4)
        assert net.features(torch.rand(2, *shape)).shape == (2, 16)


def test_random_shift_moves_content_without_changing_shape():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    torch.testing.assert_close(y.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing falls off
    assert not torch.equal(y, x)
    assert torch.equal(random_shift(x, 0), x)


def test_random_affine_keeps_shape_and_roughly_the_mass():
    x = torch.zeros(32, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0
    y = random_affine(x, 1.0, 10.0, 0.1, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(y, x)
    ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.4  # zoom of at most 10 %
    assert torch.equal(random_affine(x, 0, 0, 0), x)


def test_training_resumes_exactly_from_an_epoch_checkpoint(digits, tmp_path, monkeypatch):
    import flowcond.paper.train_evaluator as te

    opts = dict(epochs=2, batch_size=64, lr=1e-2, shift=1, max_steps=40, **SMALL)
    whole, _ = train_evaluator(digits, out=tmp_path / "whole.safetensors", **opts)
    assert not (tmp_path / "whole.ckpt.safetensors").exists()  # no checkpoint unless asked
    # interrupted while scoring epoch 2: only the checkpoint of epoch 1 is written
    out = tmp_path / "part.safetensors"
    score, calls = te._score, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return score(*args, **kwargs)

    monkeypatch.setattr(te, "_score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_evaluator(digits, out=out, checkpoint=True, **opts)
    monkeypatch.setattr(te, "_score", score)
    assert safefile.read_header(tmp_path / "part.ckpt.safetensors")["epoch"] == 1 and not out.exists()
    resumed, summary = train_evaluator(digits, out=out, resume=True, **opts)
    assert summary["steps"] == 40 and [h["epoch"] for h in summary["history"]] == [1, 2]
    for k, v in whole.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    with pytest.raises(ConfigError, match=r"evaluator options lr=0\.01 \(now lr=0\.1\)"):
        train_evaluator(digits, out=out, resume=True, **{**opts, "lr": 0.1})


def test_cli_train_evaluator(tmp_path):
    from flowcond.cli import cli

    out = tmp_path / "ev.safetensors"
    result = CliRunner().invoke(
        cli,
        [
            "train-evaluator",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--max-steps",
            "5",
            "--threads",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert result.stdout.strip().splitlines()[-1].startswith("test accuracy: ")
    assert Evaluator.load(out).config.channels == 1
