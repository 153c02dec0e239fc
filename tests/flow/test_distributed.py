"""torchrun DDP: ``torchrun --nproc-per-node 2 -m flowcond train-backbone`` with gloo on CPU gives the
1-process result, resuming a checkpoint under torchrun; plus the device and process helpers.

Why the comparison is exact up to float rounding: both runs draw the same epoch order and
dequantization noise from the ``(seed, epoch)`` generator; with 2 processes each takes every other
image of each global batch of ``--batch-size`` (15 here: shares of 8 and 7), each backpropagates
its share of the global mean, and DDP averages the gradients, so every optimizer step sees the
gradient of the same global mean bits/dim as one process does. Only the summation order differs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowcond import distributed
from flowcond.errors import ConfigError
from flowcond.flow.config import BackboneConfig, TrainConfig
from flowcond.flow.train import train_backbone
from flowcond.io.safefile import read_header

#: largest |difference| of any weight between the 2-process and the 1-process run after 6 steps
#: (float32 summation order; measured 3e-8); 6 steps move the weights by ~1e-2, 1000x more
WEIGHT_TOLERANCE = 1e-5
SHAPE = {"levels": 2, "steps": 2, "hidden": 16}
TRAIN = {"dataset": "digits", "batch_size": 15, "epochs": 1, "warmup": 1, "threads": 1, "device": "cpu"}


def _args(max_steps: int, out: str) -> list[str]:
    args = ["train-backbone", "--dataset", "digits", "--out", out, "--max-steps", str(max_steps), "--quiet"]
    for k, v in {**SHAPE, **TRAIN}.items():
        if k != "dataset":
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "flowcond", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _one_process(out, max_steps: int, resume: bool = False) -> dict[str, torch.Tensor]:
    cfg = TrainConfig(**TRAIN, max_steps=max_steps, out=str(out), progress=False, resume=resume)
    train_backbone(BackboneConfig(channels=1, height=8, width=8, **SHAPE), cfg)
    return load_file(out)


def test_two_gloo_processes_match_one_process_and_resume(tmp_path):
    out = tmp_path / "ddp.safetensors"
    one_at_3 = _one_process(out, 3)  # 3 steps in one process, then 3 more in two: --resume
    proc = _torchrun([*_args(6, str(out)), "--resume"])
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone writes and reports
    two = load_file(out)
    one = _one_process(tmp_path / "one.safetensors", 6)
    diff = max(float((two[k] - one[k]).abs().max()) for k in one)
    moved = max(float((one[k] - one_at_3[k]).abs().max()) for k in one)
    assert diff < WEIGHT_TOLERANCE < moved / 100
    header, ref = read_header(out), read_header(tmp_path / "one.safetensors")
    assert header["training"]["steps"] == 6
    assert [s["to"] for s in header["training"]["segments"]] == [3, 6]
    assert abs(header["history"][-1]["train_bpd"] - ref["history"][-1]["train_bpd"]) < 1e-6
    assert abs(header["test_bits_per_dim"] - ref["test_bits_per_dim"]) < 1e-4


def test_cglow_under_torchrun_matches_one_process(tmp_path):
    """CGlow's loss is bits/dim plus a weighted classification loss, both means over the batch."""
    import importlib.util

    worker = Path(__file__).with_name("ddp_cglow_worker.py")
    spec = importlib.util.spec_from_file_location("ddp_cglow_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, str(worker), str(tmp_path / "two.safetensors")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    module.run(str(tmp_path / "one.safetensors"))
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    module.OPTIONS = module.OPTIONS.model_copy(update={"max_steps": 2})
    module.run(str(tmp_path / "half.safetensors"))  # how far the last 2 steps move the weights
    half = load_file(tmp_path / "half.safetensors")
    moved = max(float((one[k] - half[k]).abs().max()) for k in one)  # measured 2e-3
    assert max(float((two[k] - one[k]).abs().max()) for k in one) < WEIGHT_TOLERANCE < moved / 100


def test_resolve_device_and_one_process_world(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "cuda:-1", ""):
        with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
            distributed.resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here"):
            distributed.resolve_device("cuda")
    else:
        with pytest.raises(ConfigError, match="does not exist"):
            distributed.resolve_device(f"cuda:{torch.cuda.device_count()}")
    with distributed.session("cpu") as world:
        assert (world.rank, world.size, world.backend) == (0, 1, None)
        assert distributed.is_main() and world.shard(5) == slice(0, 5, 1)
        assert distributed.all_reduce_mean({"loss": 2.0}) == {"loss": 2.0}
        distributed.barrier()
        loader = distributed.sharded_loader(list(range(6)), batch_size=4)
        assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5]]
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main()


def test_device_option_is_checked_before_any_work(tmp_path):
    from click.testing import CliRunner

    from flowcond.cli import cli

    result = CliRunner().invoke(cli, [*_args(1, str(tmp_path / "b.safetensors")), "--device", "gpu"])
    assert result.exit_code == 2 and "expected auto, cpu, cuda or cuda:N" in result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(cli, [*_args(1, str(tmp_path / "b.safetensors")), "--device", "cuda"])
        assert result.exit_code == 1
        assert "Error: --device cuda: CUDA is not available here" in result.output
        assert not (tmp_path / "b.safetensors").exists()
