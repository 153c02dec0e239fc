"""The backbone: exact inverse, kept levels, likelihood, config checks, fast path = normflows."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from pydantic import ValidationError

from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig
from flowcond.flow.fast import FastGlow, supported

TINY = dict(channels=1, height=8, width=8, levels=2, steps=2, hidden=16)


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images in [0, 1] (not pure noise, so ActNorm sees some structure)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
    return (x - x.amin()) / (x.amax() - x.amin())


def _model(**overrides) -> tuple[Backbone, torch.Tensor]:
    cfg = BackboneConfig(**{**TINY, **overrides})
    model = Backbone(cfg)
    x = _images(32, cfg.image_shape)
    model.initialize(x)
    return model, x


def _perturb(model: Backbone, scale: float = 0.05, seed: int = 1) -> None:
    """Move every weight off its initial value (zero-initialized couplings are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _train_a_few_steps(model: Backbone, x: torch.Tensor, steps: int = 5) -> None:
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model.bits_per_dim(x, torch.rand(x.shape, generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


# ------------------------------------------------------------------- config
def test_config_divisibility_error_is_clear():
    with pytest.raises(ValidationError) as e:
        BackboneConfig(height=30, width=32, levels=3)
    msg = str(e.value)
    assert "height=30 must be divisible by 2**levels=8" in msg
    with pytest.raises(ValidationError, match="width=12 must be divisible by 2\\*\\*levels=8"):
        BackboneConfig(height=16, width=12, levels=3)


def test_config_forbids_extra_fields_and_bad_values():
    with pytest.raises(ValidationError, match="extra"):
        BackboneConfig(chanels=3)
    with pytest.raises(ValidationError):
        BackboneConfig(n_bits=9)
    with pytest.raises(ValidationError):
        BackboneConfig(coupling="multiplicative")
    with pytest.raises(ValidationError):  # frozen: a config never changes under a model
        BackboneConfig().levels = 2  # type: ignore[misc]


def test_shapes():
    model, _ = _model(channels=3, height=16, width=16, levels=2)
    assert model.image_shape == (3, 16, 16)
    assert model.latent_dim == 3 * 16 * 16
    assert model.latent_shapes == [(24, 4, 4), (6, 8, 8)]  # coarsest first
    assert sum(math.prod(s) for s in model.latent_shapes) == model.latent_dim
    assert model.spatial_shape == (48, 4, 4)
    assert model.initialized


# ------------------------------------------------------------------ inverse
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"scale_map": "sigmoid"},
        {"scale_clamp": 0.5},
        {"lu": False},
        {"coupling": "additive"},
        {"channels": 3, "levels": 1},
        {"n_bits": 5},
    ],
)
def test_exact_inverse_at_init_and_after_training(overrides):
    model, x = _model(**overrides)
    q = model.quantize(x) / (model.bins - 1)  # the quantized images
    for stage in ("init", "trained"):
        if stage == "trained":
            _train_a_few_steps(model, x)
        for fast in (True, False):
            model.fast = fast
            with torch.no_grad():
                z = model.encode(x)
                err = (model.decode(z) - q).abs().max().item()
            assert err <= 1e-4, f"{stage}, fast={fast}: decode(encode(x)) off by {err}"
            assert z.shape == (len(x), model.latent_dim) and z.dtype == torch.float32
        # with gradients enabled (the autograd paths), too
        z = model.encode(x)
        assert z.requires_grad
        assert (model.decode(z) - q).abs().max().item() <= 1e-4


def test_encode_is_deterministic_and_decode_does_not_resample():
    model, x = _model()
    _perturb(model)
    model.freeze()
    with torch.no_grad():
        torch.manual_seed(1)
        z1 = model.encode(x)
        torch.manual_seed(2)
        z2 = model.encode(x)
        assert torch.equal(z1, z2)
        # batch composition changes float rounding only (oneDNN picks kernels by shape)
        assert torch.allclose(model.encode(x[:5]), z1[:5], rtol=1e-5, atol=1e-6)
        torch.manual_seed(3)
        x1 = model.decode(z1)
        torch.manual_seed(4)
        x2 = model.decode(z1)
        assert torch.equal(x1, x2)


def test_every_level_is_kept():
    model, x = _model(channels=1, height=16, width=16, levels=3)
    _perturb(model)
    model.freeze()
    with torch.no_grad():
        z = model.encode(x[:4])
        base = model.decode(z)
        start = 0
        for shape in model.latent_shapes:
            n = math.prod(shape)
            z2 = z.clone()
            z2[:, start : start + n] += 1.0
            changed = (model.decode(z2) - base).abs().amax(dim=(1, 2, 3))
            assert (changed > 1e-3).all(), f"level {shape} does not reach the image"
            # and the level round-trips through the raw flow (no resampling of split-off levels)
            levels = model.unstandardize(model.split_levels(z2))
            y, _ = model.flow.forward_and_log_det([lv.clone() for lv in levels])
            back, _ = model.encode_levels(y)
            for a, b in zip(levels, back, strict=True):
                assert torch.allclose(a, b, atol=1e-4)
            start += n


def test_flat_spatial_round_trip():
    model, x = _model(channels=3, height=16, width=16, levels=2)
    _perturb(model)
    with torch.no_grad():
        z = model.encode(x[:3])
    s = model.to_spatial(z)
    assert s.shape == (3, *model.spatial_shape)
    assert torch.equal(model.to_flat(s), z)
    levels = model.split_levels(z)
    assert [tuple(lv.shape[1:]) for lv in levels] == model.latent_shapes
    assert torch.equal(model.flatten_levels(levels), z)
    raw = model.unstandardize(levels)
    for a, b in zip(model.standardize(raw), levels, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_standardized_latent_matches_prior():
    """Standardizing by the learned prior: log p(z_raw) = log N(eps; 0, I) - sum log sigma."""
    model, x = _model()
    _perturb(model, scale=0.2)
    with torch.no_grad():
        levels, _ = model.encode_levels(model.preprocess(x))
        eps = model.standardize(levels)
        for i, (q, z, e) in enumerate(zip(model.flow.q0, levels, eps, strict=True)):
            _, log_scale = model._prior_params(i)
            n_pix = z[0, 0].numel()
            want = (
                -0.5 * e.pow(2).sum(dim=(1, 2, 3))
                - 0.5 * e[0].numel() * math.log(2 * math.pi)
                - n_pix * log_scale.sum()
            )
            assert torch.allclose(q.log_prob(z), want, rtol=1e-5, atol=1e-3)


def test_uninitialized_backbone_refuses_to_encode():
    model = Backbone(BackboneConfig(**TINY))
    assert not model.initialized
    with pytest.raises(RuntimeError, match="not initialized"):
        model.encode(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="expected images of shape"):
        _model()[0].encode(torch.rand(2, 1, 16, 16))


# --------------------------------------------------------------- likelihood
@pytest.mark.parametrize("scale_map", ["softclamp", "sigmoid"])
def test_log_likelihood_is_prior_plus_logdet(scale_map):
    model, x = _model(channels=1, height=16, width=16, levels=2, steps=3, scale_map=scale_map)
    _train_a_few_steps(model, x)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    y = model.preprocess(x, noise)
    with torch.no_grad():
        levels, log_det = model.flow.inverse_and_log_det(y)  # normflows' own
        want = log_det + sum(q.log_prob(z) for q, z in zip(model.flow.q0, levels, strict=True))
        got = model.log_prob_input(y)
        nf_log_prob = model.flow.log_prob(y, None)
        bpd = model.bits_per_dim(x, noise)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-2)
    assert torch.allclose(got, nf_log_prob, rtol=1e-5, atol=1e-2)
    D = model.latent_dim
    assert torch.allclose(bpd, (-want + D * math.log(2**8)) / (D * math.log(2)), rtol=1e-5, atol=1e-5)
    assert (bpd > 0).all() and (bpd < 16).all()


@pytest.mark.parametrize("scale_map", ["softclamp", "sigmoid"])
def test_log_det_equals_brute_force_jacobian(scale_map):
    """log|det dz/dy| checked against the full Jacobian (float64, tiny image)."""
    cfg = BackboneConfig(channels=1, height=4, width=4, levels=1, steps=2, hidden=8, scale_map=scale_map)
    model = Backbone(cfg).double()
    x = _images(16, cfg.image_shape).double()
    model.initialize(x)
    _perturb(model, scale=0.3)
    y = model.preprocess(x[:3], torch.rand(3, *cfg.image_shape, dtype=torch.float64))
    for fast in (True, False):
        model.fast = fast
        for i in range(3):
            jac = torch.autograd.functional.jacobian(
                lambda v: model.flatten_levels(model.encode_levels(v.view(1, *cfg.image_shape))[0]),
                y[i : i + 1].reshape(-1),
            )
            brute = torch.linalg.slogdet(jac.reshape(cfg.dim, cfg.dim))[1]
            _, log_det = model.encode_levels(y[i : i + 1])
            assert torch.allclose(log_det[0], brute, atol=1e-8), (fast, log_det, brute)


# ---------------------------------------------------------------- fast path
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"scale_map": "sigmoid"},
        {"scale_clamp": 0.5},
        {"lu": False},
        {"lu": False, "scale_map": "sigmoid"},
        {"coupling": "additive"},
        {"channels": 3, "height": 16, "width": 16, "levels": 2, "steps": 3},
        {"channels": 1, "height": 32, "width": 32, "levels": 3, "steps": 2, "hidden": 32},
    ],
)
def test_fast_path_equals_normflows(overrides):
    model, x = _model(**overrides)
    assert supported(model.flow)
    _train_a_few_steps(model, x)
    _perturb(model, scale=0.02)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    y = model.preprocess(x, noise)

    # autograd mode (training): latents, log-det and gradients
    model.fast = False
    ref_levels, ref_ld = model.encode_levels(y)
    model.zero_grad()
    model.bits_per_dim_input(y).mean().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.fast = True
    levels, ld = model.encode_levels(y)
    model.zero_grad()
    model.bits_per_dim_input(y).mean().backward()
    for a, b in zip(ref_levels, levels, strict=True):
        assert torch.allclose(a.detach(), b.detach(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(ref_ld.detach(), ld.detach(), rtol=1e-5, atol=1e-3)
    for p, g in zip(model.parameters(), ref_grads, strict=True):
        err = (p.grad - g).abs().max().item()
        assert err <= 1e-4 * g.abs().max().item() + 1e-8, (p.shape, err)

    # frozen plan (encode, evaluation)
    model.freeze()
    with torch.no_grad():
        model.fast = False
        z_ref, bpd_ref = model.encode(x), model.bits_per_dim(x, noise)
        model.fast = True
        z, bpd = model.encode(x), model.bits_per_dim(x, noise)
    with torch.inference_mode():
        z_inf = model.encode(x)
    assert torch.allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(z_inf, z_ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(bpd, bpd_ref, rtol=1e-5, atol=1e-6)
    assert z.is_contiguous()

    # frozen decode (latents -> images), including latents far from the data
    zs = torch.cat([z_ref, 0.7 * torch.randn(z_ref.shape, generator=torch.Generator().manual_seed(9))])
    with torch.no_grad():
        model.fast = False
        levels = model.unstandardize(model.split_levels(zs))
        y_ref, _ = model.flow.forward_and_log_det(levels)
        x_ref = model.decode(zs)
        model.fast = True
        y_fast = model._fast.forward(levels)
        x_fast = model.decode(zs)
    assert torch.allclose(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(x_fast, x_ref, rtol=1e-5, atol=1e-5)


def test_fast_plan_follows_weight_changes():
    model, x = _model()
    model.freeze()
    with torch.no_grad():
        z0 = model.encode(x)
        _perturb(model, scale=0.05, seed=7)  # in-place change after the plan was cached
        z1 = model.encode(x)
        model.fast = False
        ref = model.encode(x)
    assert not torch.allclose(z0, z1)
    assert torch.allclose(z1, ref, rtol=1e-5, atol=1e-5)
    # load_state_dict into a cached model
    other, _ = _model()
    _perturb(other, seed=11)
    model.fast = True
    with torch.no_grad():
        model.encode(x)
        model.flow.load_state_dict(other.flow.state_dict())
        other.fast = False
        assert torch.allclose(model.encode(x), other.encode(x), rtol=1e-5, atol=1e-5)


def test_fast_path_refuses_other_structures():
    import normflows as nf

    model, _ = _model()
    assert supported(model.flow)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        odd = nf.MultiscaleFlow(
            [nf.distributions.GlowBase((8, 2, 2))],
            [[nf.flows.GlowBlock(8, 8, split_mode="checkerboard"), nf.flows.Squeeze()]],
            [],
            class_cond=False,
        )
    assert not supported(odd)
    with pytest.raises(ValueError):
        FastGlow(odd)


def test_frozen_chunks_do_not_change_results(monkeypatch):
    import flowcond.flow.fast as ff

    model, x = _model(channels=1, height=16, width=16, levels=2, steps=2)
    _perturb(model)
    model.freeze()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        z, bpd = model.encode(x), model.bits_per_dim(x, noise)
        img = model.decode(z)
        monkeypatch.setattr(ff, "CHUNK_BYTES", 1)  # one image per pass
        assert model._fast._chunk_images(64, 4) == 1
        assert torch.allclose(model.encode(x), z, rtol=1e-5, atol=1e-6)
        assert torch.allclose(model.bits_per_dim(x, noise), bpd, rtol=1e-6, atol=1e-6)
        assert torch.allclose(model.decode(z), img, atol=1e-6)


def test_retain_freed_memory(monkeypatch):
    import flowcond.flow.fast_ops as ff

    monkeypatch.setattr(ff, "_RETAINED", False)
    monkeypatch.setenv("FLOWCOND_RETAIN_MEMORY", "0")
    assert ff.retain_freed_memory() is False
    monkeypatch.delenv("FLOWCOND_RETAIN_MEMORY")
    first = ff.retain_freed_memory()
    assert isinstance(first, bool)
    assert ff.retain_freed_memory() is first  # idempotent


def test_fast_path_is_as_accurate_as_normflows_on_a_trained_backbone():
    """On a trained 3x10 Glow, float32 rounding alone moves latents by ~5e-5 (normflows' own path
    vs float64), so the fast path is held to normflows' float32 accuracy, measured in float64, on
    the test digits it was made for (random images are far out of distribution and their latents
    grow large)."""
    import copy
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "backbones" / "glow_mnist5k.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is not there")
    from flowcond.datasets import load_dataset

    model = Backbone.load(path)
    x = load_dataset("mnist5k", "test").images[:48]
    exact = copy.deepcopy(model).double()
    exact.fast = False
    with torch.no_grad():
        z64 = exact.encode(x.double())
        model.fast = False
        z_nf = model.encode(x)
        model.fast = True
        z_fast = model.encode(x)
    err_nf = (z_nf.double() - z64).abs().max().item()
    err_fast = (z_fast.double() - z64).abs().max().item()
    assert err_fast <= 1.5 * err_nf + 1e-6, (err_fast, err_nf)
    assert torch.allclose(z_fast, z_nf, rtol=1e-4, atol=1e-4)
