"""Baselines: Glow + pre-stored features on hand-made latents, CGlow on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from flowcond import Backbone, BackboneConfig
from flowcond.datasets import load_dataset
from flowcond.errors import ConfigError, FileFormatError
from flowcond.paper.baselines import CGlow, CGlowConfig, CGlowTrainConfig, PreStored, train_cglow
from flowcond.testing import tiny_image_dataset

TINY = BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8)


# ------------------------------------------------------------------ pre-stored features
def _hand_made():
    # 4 samples, D = 3; classes 0, 0, 1, 1; attribute 0 on for samples 1 and 3
    z = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 4.0, 0.0], [2.0, 4.0, 6.0]])
    classes = torch.tensor([0, 0, 1, 1])
    attrs = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    return z, classes, attrs


def test_prestored_deltas_and_class_shifts_are_mean_differences():
    z, classes, attrs = _hand_made()
    f = PreStored.fit(z, classes, attrs, n_classes=3)
    mean = z.mean(0)
    assert torch.allclose(f.class_shifts[0], z[:2].mean(0) - mean)
    assert torch.allclose(f.class_shifts[1], z[2:].mean(0) - mean)
    assert torch.equal(f.class_shifts[2], torch.zeros(3))  # a class without samples: no shift
    on, off = z[[1, 3]].mean(0), z[[0, 2]].mean(0)
    assert torch.allclose(f.deltas[0], on - off)  # (2, 2, 3) - (0, 2, 0)
    assert torch.allclose(f.deltas[0], torch.tensor([2.0, 0.0, 3.0]))
    assert torch.allclose(f.deltas[1], -f.deltas[0])


def test_prestored_edits_add_alpha_delta_cumulatively():
    z, classes, attrs = _hand_made()
    f = PreStored.fit(z, classes, attrs)
    x = torch.randn(5, 3)
    assert torch.allclose(f.edit(x, 0, 0.5), x + 0.5 * f.deltas[0])
    states = f.cumulative(x, [0, 1, 0], alpha=2.0)
    assert len(states) == 4 and torch.equal(states[0], x)
    assert torch.allclose(states[3], x + 2.0 * (2 * f.deltas[0] + f.deltas[1]))
    # conditional latents: turning one attribute on from off adds exactly alpha * delta
    eps, ids = torch.randn(2, 3), torch.tensor([0, 1])
    off = f.latents(eps, ids, torch.tensor([[0.0, 0.0], [0.0, 0.0]]), alpha=1.5)
    on = f.latents(eps, ids, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), alpha=1.5)
    assert torch.allclose(on - off, 1.5 * f.deltas[0].expand(2, -1))
    assert torch.allclose(off, eps + f.class_shifts[ids] - 0.75 * (f.deltas[0] + f.deltas[1]))


def test_prestored_refuses_an_attribute_that_never_varies():
    z, classes, _ = _hand_made()
    with pytest.raises(ConfigError, match="attribute 0 is never off"):
        PreStored.fit(z, classes, torch.tensor([[1.0, 0.0]] * 4))


def test_prestored_file_round_trip_and_backbone_check(tmp_path):
    z, classes, attrs = _hand_made()
    bb = _tiny_backbone()
    f = PreStored.fit(z, classes, attrs, ["a", "b"], ["x", "y"], backbone_hash=bb.content_hash)
    f.save(tmp_path / "p.safetensors")
    g = PreStored.load(tmp_path / "p.safetensors", bb)
    assert torch.equal(g.deltas, f.deltas) and torch.equal(g.class_shifts, f.class_shifts)
    assert g.attribute_names == ["x", "y"] and g.class_names == ["a", "b"]
    with pytest.raises(FileFormatError, match="another backbone"):
        PreStored.load(tmp_path / "p.safetensors", _tiny_backbone(seed=1))


# ------------------------------------------------------------------------------ CGlow
def _tiny_backbone(seed: int = 0) -> Backbone:
    bb = Backbone(TINY.model_copy(update={"seed": seed}))
    bb.initialize(load_dataset("digits", "train").images[:64])
    return bb.freeze()


def _cglow_config() -> CGlowConfig:
    return CGlowConfig.from_dataset(tiny_image_dataset())


def test_cglow_config_reads_the_label_fields():
    cfg = _cglow_config()
    assert (cfg.class_field, cfg.n_classes, cfg.attribute_field, cfg.n_attributes) == (
        "digit",
        10,
        "attributes",
        3,
    )
    assert cfg.cond_dim == 13 and len(cfg.attribute_frequencies) == 3
    with pytest.raises(ConfigError, match="not a binary label field"):
        CGlowConfig.from_dataset(tiny_image_dataset(), attribute_field="digit")


def test_cglow_prior_is_linear_in_the_condition_and_its_likelihood_is_exact():
    model = CGlow(TINY, _cglow_config())
    model.backbone.initialize(tiny_image_dataset().images)
    torch.manual_seed(0)
    for lin in (model.prior_loc, model.prior_log_scale):
        torch.nn.init.normal_(lin.weight, std=0.1)
        torch.nn.init.normal_(lin.bias, std=0.1)
    # classes only (attributes off): one mean and scale per class, as ClassCondDiagGaussian
    c3 = model.condition(torch.tensor([3]), torch.zeros(1, 3))
    loc, log_scale = model.prior(c3)
    assert torch.allclose(loc[0], model.prior_loc.weight[:, 3] + model.prior_loc.bias)
    assert torch.allclose(log_scale[0], model.prior_log_scale.weight[:, 3] + model.prior_log_scale.bias)
    # attributes: additive in the multi-hot vector
    both = model.prior(model.condition(torch.tensor([3]), torch.tensor([[1.0, 1.0, 0.0]])))[0]
    assert torch.allclose(both[0], loc[0] + model.prior_loc.weight[:, 10] + model.prior_loc.weight[:, 11])
    # conditional bits/dim = -(log N(z; loc, scale) + log det) / (D ln 2) + log2(bins)
    ds = tiny_image_dataset()
    x, labels = ds.images[:4], {k: v[:4] for k, v in ds.labels.items()}
    with torch.no_grad():
        bpd = model.bits_per_dim(x, labels)
        levels, log_det = model.backbone.encode_levels(model.backbone.preprocess(x))
        z = model.backbone.flatten_levels(levels)
        loc, log_scale = model.prior(model.condition(labels["digit"], labels["attributes"]))
        dist = torch.distributions.Normal(loc, log_scale.exp())
        expect = -(dist.log_prob(z).sum(1) + log_det) / (64 * math.log(2)) + 8
    assert torch.allclose(bpd, expect, atol=1e-4)


def test_cglow_trains_saves_loads_and_samples(tmp_path):
    ds = tiny_image_dataset()
    out = tmp_path / "cg.safetensors"
    seen = []
    model, summary = train_cglow(
        TINY,
        ds,
        ds,
        CGlowTrainConfig(epochs=3, batch_size=16, warmup=2),
        out=out,
        progress=False,
        callback=lambda m, info: seen.append(info["step"]),
        callback_every=2,
    )
    assert summary["training"]["steps"] == 6 and seen == [2, 4, 6]
    assert math.isfinite(summary["test_bits_per_dim"])
    # the conditional prior moved away from its zero initialization (end-to-end training)
    assert model.prior_loc.weight.abs().sum() > 0
    loaded = CGlow.load(out)
    assert loaded.metadata["training"]["steps"] == 6
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    a = model.sample(torch.tensor(3), n=4, seed=1)
    b = loaded.sample(torch.tensor(3), n=4, seed=1)
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b)
    # sampling decodes loc(c) + exp(log_scale(c)) * eps for the same draws, and follows the class
    g = torch.Generator().manual_seed(1)
    attrs = torch.bernoulli(torch.tensor(model.cglow.attribute_frequencies).expand(4, -1), generator=g)
    c = model.condition(torch.tensor(3).expand(4), attrs, 4)
    assert torch.equal(a, model.decode(model.latents(c, model.noise(4, 0.7, g))))
    assert not torch.equal(a, model.sample(torch.tensor(5), n=4, seed=1))


def test_cglow_resumes_exactly_from_its_epoch_checkpoint(tmp_path):
    ds = tiny_image_dataset()
    opts = CGlowTrainConfig(epochs=3, batch_size=16, warmup=2)
    whole, _ = train_cglow(TINY, ds, options=opts, out=tmp_path / "whole.safetensors", progress=False)
    assert not (tmp_path / "whole.ckpt.safetensors").exists()  # no checkpoint unless asked
    part = tmp_path / "part.safetensors"
    one = opts.model_copy(update={"epochs": 1})
    train_cglow(TINY, ds, options=one, out=part, progress=False, checkpoint=True)
    assert (tmp_path / "part.ckpt.safetensors").is_file()
    resumed, summary = train_cglow(TINY, ds, options=opts, out=part, progress=False, resume=True)
    assert summary["training"]["steps"] == 6 and summary["training"]["epochs_run"] == 3
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    with pytest.raises(ConfigError, match="training options lr=0.001"):
        train_cglow(TINY, ds, options=opts.model_copy(update={"lr": 0.1}), out=part, resume=True)


def test_cglow_sampling_follows_the_condition():
    model = CGlow(TINY, _cglow_config())
    model.backbone.initialize(tiny_image_dataset().images)
    with torch.no_grad():
        model.prior_loc.weight[:, 3] = 0.3  # class 3 shifts every latent dimension by +0.3
    model.freeze()
    c = model.condition(torch.tensor([3, 4]), torch.zeros(2, 3))
    eps = torch.zeros(2, 64)
    z = model.latents(c, eps)
    assert torch.allclose(z[0], torch.full((64,), 0.3)) and torch.allclose(z[1], torch.zeros(64))
    # decode is the inverse of encode on raw latents
    x = model.decode(z)
    levels, _ = model.backbone.encode_levels(model.backbone.preprocess(x))
    back = model.backbone.flatten_levels(levels)
    assert (back - z).abs().mean() < 0.05  # up to 8-bit quantization of the decoded image


def test_cglow_file_kind_is_checked(tmp_path):
    path = tmp_path / "bb.safetensors"
    _tiny_backbone().save(path)
    with pytest.raises(FileFormatError, match="expected a 'cglow' file"):
        CGlow.load(path)
