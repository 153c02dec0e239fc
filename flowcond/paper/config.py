"""Configuration of the paper layer: the evaluator's network and training, and ``flowcond evaluate``.

Torch-free, so that the CLI can build its options from these models without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowcond.flow.config import MAX_TEMPERATURE, SEED_MAX


class EvaluatorConfig(BaseModel):
    """Shape of an evaluator network (stored in its file)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    channels: int = Field(ge=1)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    n_outputs: int = Field(ge=1, description="classes (categorical) or attributes (binary)")
    label_kind: Literal["categorical", "binary"] = "categorical"
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    feature_dim: int = Field(128, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)


class EvaluatorTrainConfig(BaseModel):
    """Options of :func:`train_evaluator` / ``flowcond train-evaluator`` (stored in the file)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    label: str | None = Field(None, description="label field to learn; default: the first one")
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0, le=1.0, description="peak learning rate (warmup, then cosine decay)")
    weight_decay: float = Field(5e-4, ge=0, le=1.0)
    shift: float = Field(2.0, ge=0, le=1024, description="random shift augmentation, pixels")
    rotate: float | None = Field(
        None, ge=0, le=180, description="random rotation, degrees; default 10 (categorical), 0"
    )
    scale: float | None = Field(
        None, ge=0, lt=1, description="random zoom, 1 +- scale; default 0.1 (categorical), 0"
    )
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    feature_dim: int = Field(128, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    seed: int = Field(0, ge=0, le=SEED_MAX)


class EvaluateConfig(BaseModel):
    """Options of ``flowcond evaluate``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backbone: str
    evaluator: str
    attr_evaluator: str | None = None
    dataset: str | None = Field(None, description="default: the backbone's training dataset")
    root: str | None = None
    out: str = "results"
    cglow_epochs: int = Field(1, ge=1)
    cglow_max_steps: int | None = Field(None, ge=1)
    cglow_batch_size: int = Field(64, ge=1)
    cglow_lr: float = Field(1e-3, gt=0, le=1.0)
    attach_steps: int = Field(1000, ge=1)
    attach_batch_size: int = Field(128, ge=2)
    codes: int = Field(2, ge=0, description="unsupervised codes attached with CAGlow (0: none)")
    class_plugin: str | None = Field(
        None, description="condition plugin for the class field; default: the one categorical kind"
    )
    attribute_plugin: str | None = Field(
        None, description="condition plugin for the attribute field; default: the one binary kind"
    )
    code_plugin: str | None = Field(
        None, description="unsupervised condition plugin for the codes; default: the only one"
    )
    samples_per_class: int = Field(50, ge=2)
    fid_real: int = Field(1000, ge=2, description="real test images for FID")
    temperature: float = Field(0.7, gt=0, le=MAX_TEMPERATURE)
    alpha: float = Field(1.0, ge=-100, le=100, description="scale of the pre-stored attribute deltas")
    attr_evaluator_epochs: int = Field(5, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="seeds to train and sample every method with, e.g. 0,1,2 (tables show mean "
        "+- std over seeds); default: --seed alone",
    )
    prior: Literal["joint", "independent"] = Field(
        "joint",
        description="attributes requested with each class: those of a random training image of "
        "the class (joint) or drawn from their overall frequencies (independent)",
    )
    model_cache: str | None = Field(
        None, description="folder of trained CGlow baselines, reused across runs; default: OUT/models"
    )
    threads: int | None = Field(None, ge=1)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N: where the flows and evaluators run")
    cache_dir: str | None = None
    progress: bool = True

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        from flowcond.distributed import check_device_spec
        from flowcond.errors import ConfigError

        try:
            return check_device_spec(value)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("--device ")) from None

    @field_validator("seeds", mode="before")
    @classmethod
    def _parse_seeds(cls, value: object) -> object:
        """``"0,1,2"`` (the command line) -> ``[0, 1, 2]``."""
        if isinstance(value, str):
            try:
                return [int(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"{value!r}: expected comma-separated integers, e.g. 0,1,2") from None
        return value

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        bad = [v for v in value if not 0 <= v <= SEED_MAX]
        if bad:
            raise ValueError(f"seed {bad[0]} is outside [0, {SEED_MAX}]")
        if len(set(value)) != len(value):
            raise ValueError("a seed is listed twice")
        return value

    @property
    def seed_list(self) -> list[int]:
        """The seeds of the run: ``seeds``, else ``[seed]``."""
        return list(self.seeds) if self.seeds else [self.seed]
