"""Run by tests/flow/test_distributed.py under torchrun: train the tiny CGlow with DDP, write argv[1]."""

import sys

from flowcond.datasets import load_dataset
from flowcond.distributed import teardown
from flowcond.flow.config import BackboneConfig
from flowcond.paper.baselines.cglow_train import CGlowTrainConfig, train_cglow

CONFIG = BackboneConfig(channels=1, height=8, width=8, levels=2, steps=2, hidden=16)
OPTIONS = CGlowTrainConfig(epochs=1, batch_size=15, warmup=1, max_steps=4, weight_y=0.5)


def run(out: str) -> None:
    train = load_dataset("digits", "train")
    train_cglow(CONFIG, train, options=OPTIONS, out=out, progress=False)


if __name__ == "__main__":
    run(sys.argv[1])
    teardown()
