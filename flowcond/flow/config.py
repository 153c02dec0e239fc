"""The backbone's configuration: one pydantic model, stored in every backbone file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BackboneConfig(BaseModel):
    """Shape of a multi-scale Glow ``N x K`` (levels x steps per level)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: int = Field(1, ge=1, description="image channels C")
    height: int = Field(32, ge=2, description="image height H")
    width: int = Field(32, ge=2, description="image width W")
    levels: int = Field(3, ge=1, le=8, description="N: number of levels (squeeze + K steps + split)")
    steps: int = Field(10, ge=1, description="K: Glow steps (actnorm, 1x1 conv, coupling) per level")
    hidden: int = Field(128, ge=1, description="hidden channels of each coupling network")
    n_bits: int = Field(8, ge=1, le=8, description="bits per colour channel the flow models")
    coupling: Literal["affine", "additive"] = Field("affine", description="coupling layer type")
    scale_map: Literal["softclamp", "sigmoid"] = Field(
        "softclamp",
        description="affine coupling scale: exp(c*tanh(s/c)) (stable decoding) or Glow's "
        "sigmoid(s+2) (files written before this field existed: sigmoid)",
    )
    scale_clamp: float = Field(2.0, gt=0, description="c of the softclamp scale map")
    lu: bool = Field(True, description="LU-parametrized invertible 1x1 convolutions")
    seed: int = 0

    @model_validator(mode="after")
    def _check_divisible(self) -> BackboneConfig:
        f = 2**self.levels
        for name in ("height", "width"):
            v = getattr(self, name)
            if v % f:
                raise ValueError(
                    f"{name}={v} must be divisible by 2**levels={f} (levels={self.levels}); "
                    f"pad or resize the images, or use fewer levels"
                )
        return self

    @classmethod
    def from_header(cls, data: Any) -> BackboneConfig:
        """The config stored in a file header. Files written before ``scale_map`` existed used
        Glow's ``sigmoid(s + 2)`` scale, so a missing ``scale_map`` means ``"sigmoid"`` there
        (not the current default)."""
        if isinstance(data, dict) and "scale_map" not in data:
            data = {**data, "scale_map": "sigmoid"}
        if not isinstance(data, dict):
            raise TypeError(f"config must be a JSON object, got {type(data).__name__}")
        return cls(**data)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def dim(self) -> int:
        """Number of dimensions D of an image (and of its latent)."""
        return self.channels * self.height * self.width


class TrainConfig(BaseModel):
    """Options of ``flowcond train-backbone``."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("mnist5k", description="registered dataset name (flowcond plugins --all)")
    root: str | None = Field(None, description="data folder for on-disk datasets (mnist, celeba, folder)")
    download: bool = Field(False, description="let torchvision download the dataset into root")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adamax", "adam"] = "adamax"
    warmup: int = Field(200, ge=0, description="linear learning-rate warmup steps")
    decay_epochs: int = Field(
        0, ge=0, description="decay the learning rate linearly to 0 over the last this many epochs"
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads while training (None: torch's setting)"
    )
    clip: float = Field(50.0, gt=0, description="gradient norm clip")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    seed: int = 0
    out: str = "backbone.safetensors"
    resume: bool = False
    progress: bool = True
    compile: bool = Field(
        False,
        description="torch.compile the training loss (about 25% more "
        "images/s on 2 CPU cores after a minute or two of "
        "compiling; falls back to eager if compiling fails)",
    )
    fast: bool = Field(
        True,
        description="channels-last fast path and malloc tuning "
        "(flowcond.flow.fast); False: normflows' own code "
        "(same model and results up to float rounding, slower)",
    )
