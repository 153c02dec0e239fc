"""The backbone's configuration: one pydantic model, stored in every backbone file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowcond.errors import ConfigError

#: the largest seed any option accepts (torch's generators take 64-bit seeds)
SEED_MAX = 2**63 - 1
#: the largest sampling temperature (the standard deviation of the noise) accepted: beyond a
#: few, samples are noise, and far beyond decoding overflows to NaN
MAX_TEMPERATURE = 10.0


def check_temperature(value: float, what: str = "temperature", allow_zero: bool = False) -> float:
    """``value`` as a float, or a one-line :class:`ConfigError`: finite, > 0 (>= 0 with
    ``allow_zero``) and at most :data:`MAX_TEMPERATURE`."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r}: not a number") from None
    low_ok = t >= 0 if allow_zero else t > 0
    if not (low_ok and t <= MAX_TEMPERATURE):  # NaN fails both comparisons
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{what} {value}: must be a finite number {bound} and at most {MAX_TEMPERATURE:g}")
    return t


class BackboneConfig(BaseModel):
    """Shape of a multi-scale Glow ``N x K`` (levels x steps per level)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    channels: int = Field(1, ge=1, le=64, description="image channels C")
    height: int = Field(32, ge=2, le=4096, description="image height H")
    width: int = Field(32, ge=2, le=4096, description="image width W")
    levels: int = Field(3, ge=1, le=8, description="N: number of levels (squeeze + K steps + split)")
    steps: int = Field(10, ge=1, le=512, description="K: Glow steps (actnorm, 1x1 conv, coupling) per level")
    hidden: int = Field(128, ge=1, le=16384, description="hidden channels of each coupling network")
    n_bits: int = Field(8, ge=1, le=8, description="bits per colour channel the flow models")
    coupling: Literal["affine", "additive"] = Field("affine", description="coupling layer type")
    scale_map: Literal["softclamp", "sigmoid", "exp"] = Field(
        "softclamp",
        description="affine coupling scale: exp(c*tanh(s/c)) (stable decoding), Glow's "
        "sigmoid(s+2) (files written before this field existed: sigmoid) or RealNVP's exp(s) "
        "(normflows' scale_map='exp', for imported flows)",
    )
    scale_clamp: float = Field(2.0, gt=0, description="c of the softclamp scale map")
    lu: bool = Field(True, description="LU-parametrized invertible 1x1 convolutions")
    prior: Literal["glow", "diag"] = Field(
        "glow",
        description="prior of each level: Glow's per-channel Gaussian (normflows GlowBase) or a "
        "per-dimension diagonal Gaussian (normflows DiagGaussian, for imported flows)",
    )
    seed: int = Field(0, ge=0, le=SEED_MAX)

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

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: str = Field("mnist5k", description="registered dataset name (flowcond plugins --all)")
    root: str | None = Field(None, description="data folder for on-disk datasets (mnist, celeba, folder)")
    download: bool = Field(False, description="let torchvision download the dataset into root")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, le=1.0)
    optimizer: Literal["adamax", "adam"] = "adamax"
    warmup: int = Field(200, ge=0, description="linear learning-rate warmup steps")
    decay_epochs: int = Field(
        0, ge=0, description="decay the learning rate linearly to 0 over the last this many epochs"
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads while training (None: torch's setting)"
    )
    clip: float = Field(50.0, gt=0, le=1e12, description="gradient norm clip")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    seed: int = Field(0, ge=0, le=SEED_MAX)
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
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto (cuda if available, else cpu), cpu, cuda or cuda:N; under torchrun, "
        "auto and cuda mean cuda:LOCAL_RANK",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: autocast the coupling networks (log-determinants, prior and bits/dim "
        "stay fp32; for GPUs with bf16: on CPU it is slower)",
    )
