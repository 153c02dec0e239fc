"""Streamed latent shards are ordinary safetensors files with the usual content hash, and rows read
from disk equal the latents in memory."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from flowcond.caglow.latents import LatentCache
from flowcond.caglow.shards import ShardFile, write_shard
from flowcond.io import safefile


def test_a_streamed_shard_is_a_safetensors_file_with_the_usual_hash(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(10, 6, generator=g)
    labels = {"digit": torch.arange(10), "attributes": (torch.rand(10, 3, generator=g) > 0.5).float()}
    path = tmp_path / "shard-00000.safetensors"
    digest = write_shard(path, {"kind": "latent-shard", "rows": 10}, labels, 10, 6, iter(z.split(4)))
    tensors, header = safefile.read(path, "latent-shard")  # checks the bytes against the header's hash
    assert header["content_hash"] == digest == safefile.content_hash(tensors)
    assert torch.equal(load_file(str(path))["z"], z) and torch.equal(tensors["label.digit"], labels["digit"])
    shard = ShardFile(path)
    assert shard.verify(digest, 1e20) is None
    assert torch.equal(torch.from_numpy(shard.rows(torch.tensor([7, 0, 7]).numpy(), 6)), z[[7, 0, 7]])
    shard.close()


def test_rows_read_from_disk_equal_the_latents_in_memory(tiny_backbone, tiny_dataset, tmp_path):
    cache = LatentCache.build(tiny_backbone, tiny_dataset, tmp_path / "cache", shard_size=5, progress=False)
    z, labels = cache.load_all()
    rows = cache.rows()
    idx = torch.randint(len(z), (100,), generator=torch.Generator().manual_seed(1))
    assert len(rows) == 32 and torch.equal(rows[idx], z[idx])  # across 7 shards
    assert torch.equal(rows.head(12), z[:12])
    assert all(torch.equal(rows.labels[k], labels[k]) for k in labels)
    rows.close()
