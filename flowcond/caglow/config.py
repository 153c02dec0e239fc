"""Configuration of attaching heads (stage 2): ``AttachConfig`` and the loss weights of Eq. 15.

Torch-free, so that the CLI can build its options from these models without importing torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowcond.flow.config import SEED_MAX

#: the largest loss weight accepted (the losses are O(1): larger weights only overflow)
MAX_LAMBDA = 1e6


class Lambdas(BaseModel):
    """Loss weights of Eq. 15 (``L_F`` belongs to backbone training and is not used here)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    E: float = Field(1.0, ge=0, le=MAX_LAMBDA, description="encoder adversarial loss, Eq. 10")
    Di: float = Field(1.0, ge=0, le=MAX_LAMBDA, description="discriminator loss, Eq. 11")
    C: float = Field(1.0, ge=0, le=MAX_LAMBDA, description="classification of supervised conditions, Eq. 12")
    De: float = Field(1.0, ge=0, le=MAX_LAMBDA, description="decoding of unsupervised codes, Eq. 13")
    FM: float = Field(1.0, ge=0, le=MAX_LAMBDA, description="pairwise feature matching, Eq. 14")
    MM: float = Field(
        0.0,
        ge=0,
        le=MAX_LAMBDA,
        description="not in the paper: match per-dimension mean and std of generated latents",
    )
    MS: float = Field(
        0.0,
        ge=0,
        le=MAX_LAMBDA,
        description="not in the paper: mode seeking (Mao et al., 2019), keeps latents generated "
        "with the same conditions and different noise apart",
    )
    kinds: dict[str, Annotated[float, Field(ge=0, le=MAX_LAMBDA)]] = Field(
        default_factory=dict,
        description="per-kind weights inside C or De: 'C.NAME' or 'De.NAME' -> weight (default: "
        "the kind's ConditionKind.loss_weight)",
    )

    @model_validator(mode="before")
    @classmethod
    def _per_kind(cls, data: Any) -> Any:
        """``{"C.thickness": 2}`` (as ``--lambda C.thickness=2`` gives it) -> ``kinds``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        dotted = {k: data.pop(k) for k in list(data) if isinstance(k, str) and "." in k}
        kinds = dict(data.get("kinds") or {})
        for key, value in dotted.items():
            kinds[key.strip()] = value
        for key in kinds:
            group, _, name = str(key).partition(".")
            if group not in ("C", "De") or not name:
                raise ValueError(f"per-kind weight {key!r}: expected C.NAME or De.NAME")
        if kinds:
            data["kinds"] = kinds
        return data

    def kind_weight(self, group: str, name: str, default: float = 1.0) -> float:
        """The weight of kind ``name``'s loss inside ``group`` (``C`` or ``De``)."""
        return float(self.kinds.get(f"{group}.{name}", default))


class AttachConfig(BaseModel):
    """Everything ``attach`` needs besides the backbone; stored in the heads file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    plugins: list[str] = Field(min_length=1)
    plugin_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    dataset: str | None = Field(None, description="default: the dataset the backbone was trained on")
    root: str | None = Field(None, description="data folder for on-disk datasets")
    download: bool = False
    encoder: Literal["auto", "mlp", "conv"] = Field(
        "auto",
        description="encoder E architecture; auto: MLP for latents of up to 4096 dimensions, "
        "else convolutional",
    )
    supervision: Literal["auto", "mlp", "conv"] = Field(
        "auto", description="supervision block architecture (auto as for encoder)"
    )
    hidden: int = Field(64, ge=1, description="encoder hidden units (paper MNIST: 64)")
    trunk_hidden: int = Field(64, ge=1, description="supervision trunk units (paper MNIST: 64)")
    noise_dim: int = Field(64, ge=1)
    residual_noise: bool = True
    feature_matching: Literal["pairwise", "mean"] = Field(
        "pairwise",
        description="Eq. 14 as in the paper (L2 between paired real/generated features) or the L2 "
        "between their batch means (does not pull generated latents towards the mean)",
    )
    conditional_discriminator: bool = Field(
        False, description="projection discriminator D(z, c) on supervised conditions (paper: D(z))"
    )
    steps: int = Field(3000, ge=1, description="training steps (D and E updates)")
    classifier_noise: float = Field(
        0.0,
        ge=0,
        le=10,
        description="std of Gaussian noise added to the real latents the condition heads learn "
        "from (not in the paper): a smoother classifier, harder for the encoder to satisfy with "
        "latents that decode to another class; 0: off",
    )
    image_check: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="steps training the image check (not in the paper): a CNN of the evaluator's kind "
        "reading the supervised conditions back from real training images, stored with the heads; sampling "
        "then draws again (noise, and un-given conditions unless a row shares them) the samples "
        "whose image disagrees with a given condition; 0: none",
    )
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-4, gt=0, le=1.0, description="Adam learning rate")
    beta1: float = Field(0.5, ge=0, lt=1)
    lambdas: Lambdas = Field(default_factory=Lambdas)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    checkpoint_every: int = Field(500, ge=1)
    threads: int | None = Field(
        1,
        ge=1,
        description="torch CPU threads for the training loop (its small MLPs run best on one; "
        "more threads on a busy machine can be 10x slower); None keeps torch's setting",
    )
    cache_dir: str | None = Field(
        None, description="latent cache folder; default: $FLOWCOND_CACHE/latents or ~/.cache/flowcond/latents"
    )
