"""Options of ``flowcond import-backbone`` (torch-free, so ``--help`` imports no torch).

A normflows ``state_dict`` records the Glow's tensors but not every choice its code made: the
scale map and split mode of the couplings, the range the images were fed in, the image size of
``GlowBase`` priors (one mean per channel). Those come from these options; their defaults are
normflows' ``GlowBlock`` defaults and its Glow example's data pipeline.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: libraries ``import-backbone --from`` reads
SOURCES = ("normflows",)


class NormflowsImportConfig(BaseModel):
    """How to read a normflows Glow ``state_dict`` (what its tensors cannot tell)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    image_shape: tuple[int, int, int] | None = Field(
        None,
        description="image shape C,H,W (needed for GlowBase priors, which keep one mean per channel; "
        "default: from DiagGaussian priors or --dataset)",
    )
    scale_map: Literal["sigmoid", "exp", "sigmoid_inv"] = Field(
        "sigmoid", description="GlowBlock scale_map of the affine couplings (normflows' default: sigmoid)"
    )
    split_mode: Literal["channel", "channel_inv", "checkerboard", "checkerboard_inv"] = Field(
        "channel", description="GlowBlock split_mode (flowcond's backbone couples channel halves: channel)"
    )
    input_range: Literal["unit", "centered"] = Field(
        "unit",
        description="range of the images the flow was trained on: unit = [0, 1] (normflows' Glow "
        "example: Scale(255/256) and Jitter(1/256)), centered = [-0.5, 0.5]",
    )
    n_bits: int = Field(8, ge=1, le=8, description="bits per colour channel of the training images")
    logscale_factor: float = Field(3.0, gt=0, le=100, description="GlowBase logscale_factor")
    prior_class: int | None = Field(
        None,
        ge=0,
        description="for a class-conditional prior (ClassCondDiagGaussian, GlowBase with "
        "num_classes): the class whose prior becomes the backbone's prior",
    )
    dataset: str | None = Field(
        None,
        description="registered dataset the flow was trained on (recorded for attach; gives the image shape)",
    )
    verify_samples: int = Field(16, ge=1, le=4096, description="random images compared with normflows")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the random verification inputs")
