"""Baselines of the paper's comparisons: CGlow (end to end, conditional prior) and Glow with
pre-stored features (openai/glow's latent mean differences)."""

from flowcond.paper.baselines.cglow import CGlow, CGlowConfig
from flowcond.paper.baselines.cglow_train import CGlowTrainConfig, train_cglow
from flowcond.paper.baselines.prestored import PreStored

__all__ = ["CGlow", "CGlowConfig", "CGlowTrainConfig", "PreStored", "train_cglow"]
