"""bf16 autocast is applied to the coupling networks only (flowcond.flow.precision): bits/dim, its
gradient and the exact inverse stay within stated tolerances of float32. Runs on CPU
(``torch.autocast("cpu", dtype=torch.bfloat16)``), the same code path as CUDA autocast."""

from __future__ import annotations

import pytest
import torch

from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig
from flowcond.flow.precision import autocast_dtype, training_autocast

#: bits/dim of a batch under bf16 vs fp32, absolute (bf16 has 8 mantissa bits; only the coupling
#: networks' shift and scale are rounded, and the log-determinants are summed in fp32)
BPD_TOLERANCE = 2e-3


def _backbone(fast: bool) -> tuple[Backbone, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Backbone(BackboneConfig(channels=3, height=16, width=16, levels=2, steps=3, hidden=32))
    model.fast = fast
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model.initialize(x)
    with torch.no_grad():  # Glow zero-initializes each coupling's last conv: give them weights
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(m.weight.numel()))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    return model, x, noise


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_bits_per_dim_and_gradient_match_fp32(fast):
    model, x, noise = _backbone(fast)
    weight = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    fp32 = model.bits_per_dim(x, noise)
    (g32,) = torch.autograd.grad(fp32.mean(), [weight])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.bits_per_dim(x, noise)
        assert autocast_dtype("cpu") == torch.bfloat16  # the caller's autocast is left as it was
    assert bf16.dtype == torch.float32  # log-dets, prior and the reduction in fp32
    diff = float((bf16 - fp32).detach().abs().max())
    assert diff < BPD_TOLERANCE
    if fast:  # the coupling networks really ran in bf16
        assert diff > 0
    else:  # normflows' own path runs entirely in fp32 under autocast
        assert diff == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (g16,) = torch.autograd.grad(model.bits_per_dim(x, noise).mean(), [weight])
    cos = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
    assert float(cos) > 0.99


def test_bf16_inverse_reconstructs_the_images():
    model, x, _ = _backbone(fast=True)
    model.freeze()
    with torch.no_grad():
        z32 = model.encode(x)
        exact = model.decode(z32)  # the images at n_bits, as the flow models them
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z16 = model.encode(x)
            back = model.decode(z16)
    assert z16.dtype == back.dtype == torch.float32
    assert 0 < float((z16 - z32).abs().max()) < 0.05  # latents: bf16-rounded shifts and scales
    # x -> z -> x under bf16: both directions round the coupling networks' output to bf16, so the
    # images come back within a quarter of a quantization level (1e-3; 1/255 at n_bits = 8; measured
    # 3e-4) of the fp32 round trip, and every image at exactly its quantized levels
    assert float((back - exact).abs().max()) < 1e-3
    assert torch.equal(model.quantize(back), model.quantize(x))


def test_training_autocast():
    cpu = torch.device("cpu")
    with training_autocast(cpu, "fp32"):
        assert autocast_dtype("cpu") is None
    with training_autocast(cpu, "bf16"):
        assert autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        training_autocast(cpu, "fp16")
