"""Under torchrun, each rank encodes its share of the latent shards and rank 0 writes the one
manifest; the cache equals a one-process encoding (2 gloo processes on CPU)."""

from __future__ import annotations

import json

import torch
import torch.multiprocessing as mp

from flowcond import Backbone
from flowcond.caglow.latents import LatentCache
from flowcond.testing import tiny_image_dataset


def _encode_on_rank(rank: int, size: int, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # a forked child: no OpenMP pool shared with the parent
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=size)
    try:
        backbone = Backbone.load(f"{folder}/bb.safetensors")
        LatentCache.build(backbone, tiny_image_dataset(), f"{folder}/cache", shard_size=12, progress=False)
    finally:
        dist.destroy_process_group()


def test_two_ranks_write_their_shards_and_one_manifest(tiny_backbone, tmp_path):
    tiny_backbone.save(tmp_path / "bb.safetensors", dataset={"name": "tiny", "split": "train"})
    mp.start_processes(_encode_on_rank, args=(2, str(tmp_path)), nprocs=2, start_method="fork")
    backbone = Backbone.load(tmp_path / "bb.safetensors")
    cache = LatentCache.build(
        backbone, tiny_image_dataset(), tmp_path / "cache", shard_size=12, progress=False
    )
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    assert [s["rank"] for s in manifest["shards"]] == [0, 1, 0]  # shard j by rank j % 2
    assert [s["rows"] for s in manifest["shards"]] == [12, 12, 8]
    z, labels = cache.load_all()  # every shard checked: hashes, backbone, labels
    with torch.inference_mode():
        assert torch.equal(z, backbone.encode(tiny_image_dataset().images).float())
    assert torch.equal(labels["digit"], tiny_image_dataset().labels["digit"])
    assert sorted(p.name for p in cache.folder.iterdir()) == [
        "manifest.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
