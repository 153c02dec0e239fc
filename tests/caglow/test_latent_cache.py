"""The latent cache verifies what it loads and rebuilds what fails, saying so in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flowcond import Backbone, BackboneConfig
from flowcond.caglow.latents import LatentCache
from flowcond.errors import ConfigError, FileFormatError, FlowcondError
from flowcond.io import safefile
from flowcond.testing import tiny_image_dataset


def _build(backbone, dataset, tmp_path, **kw) -> LatentCache:
    return LatentCache.build(backbone, dataset, tmp_path / "cache", shard_size=12, progress=False, **kw)


def _fresh(backbone, dataset) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with torch.inference_mode():
        return backbone.encode(dataset.images).float(), dict(dataset.labels)


def _assert_correct(cache: LatentCache, backbone, dataset) -> None:
    z, labels = cache.load_all()
    want_z, want_labels = _fresh(backbone, dataset)
    assert torch.equal(z, want_z)
    assert labels.keys() == want_labels.keys()
    for k in labels:
        assert torch.equal(labels[k], want_labels[k]), k


def _read(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def _tamper(path, change, rehash: bool = False, manifest: bool = False) -> None:
    """Rewrite shard ``path`` with ``change(tensors)`` applied; keep its header (and with it the old
    content hash) unless ``rehash``; with ``manifest`` also record the new hash in the manifest."""
    tensors, meta = _read(path)
    change(tensors)
    header = json.loads(meta["flowcond"])
    if rehash:
        header["content_hash"] = safefile.content_hash(tensors)
    save_file(tensors, str(path), metadata={"flowcond": json.dumps(header)})
    if manifest:
        m_path = path.parent / "manifest.json"
        m = json.loads(m_path.read_text())
        for entry in m["shards"]:
            if entry["file"] == path.name:
                entry["content_hash"] = header["content_hash"]
        m_path.write_text(json.dumps(m))


def _load_with_message(cache_factory, capsys) -> tuple[LatentCache, str]:
    capsys.readouterr()
    cache = cache_factory()
    cache.load_all()
    return cache, capsys.readouterr().err


def test_a_fresh_cache_is_reused_silently_and_equals_a_fresh_encoding(
    tiny_backbone, tiny_dataset, tmp_path, capsys
):
    cache = _build(tiny_backbone, tiny_dataset, tmp_path)
    assert len(cache.shards) == 3 and len(cache) == 32
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [12, 12, 8]
    assert manifest["shards"][0]["shapes"]["z"] == ["float32", [12, 64]]
    header = safefile.read_header(cache.shards[0], "latent-shard")
    assert header["content_hash"] == manifest["shards"][0]["content_hash"]
    assert header["backbone_hash"] == tiny_backbone.content_hash and header["dataset"]["name"] == "tiny"
    stamp = cache.shards[0].stat().st_mtime_ns
    again, err = _load_with_message(lambda: _build(tiny_backbone, tiny_dataset, tmp_path), capsys)
    assert err == "" and again.shards[0].stat().st_mtime_ns == stamp
    _assert_correct(again, tiny_backbone, tiny_dataset)


def _zero_latents(t):
    t["z"].zero_()


def _wrong_classes(t):
    t["label.digit"] = (t["label.digit"] + 3) % 10  # still valid classes


def _huge_latents(t):
    t["z"][0, 0] = 1e30


@pytest.mark.parametrize(
    ("change", "rehash", "manifest", "reason"),
    [
        (_zero_latents, False, False, "content hash mismatch"),
        (_zero_latents, True, False, "content hash differs from the manifest's"),
        (_wrong_classes, False, False, "content hash mismatch"),
        (_wrong_classes, True, True, "labels 'digit' differ from the dataset's"),
        (_huge_latents, False, False, "content hash mismatch"),
        (_huge_latents, True, True, "non-finite or implausibly large"),
    ],
    ids=[
        "zeroed-latents",
        "zeroed-latents-own-hash",
        "wrong-classes",
        "wrong-classes-hash-and-manifest-updated",
        "latents-1e30",
        "latents-1e30-hash-and-manifest-updated",
    ],
)
def test_a_tampered_shard_is_rebuilt_with_a_message(
    tiny_backbone, tiny_dataset, tmp_path, capsys, change, rehash, manifest, reason
):
    shard = _build(tiny_backbone, tiny_dataset, tmp_path).shards[1]
    _tamper(shard, change, rehash, manifest)
    cache, err = _load_with_message(lambda: _build(tiny_backbone, tiny_dataset, tmp_path), capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(shard) in lines[0] and reason in lines[0], err
    assert "re-encoding its 12 rows" in lines[0]
    _assert_correct(cache, tiny_backbone, tiny_dataset)
    # the shard on disk is repaired: the next run is silent
    _, err = _load_with_message(lambda: _build(tiny_backbone, tiny_dataset, tmp_path), capsys)
    assert err == ""


def test_a_shard_of_another_backbone_is_rebuilt(tiny_backbone, tiny_dataset, tmp_path, capsys):
    other = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8, seed=5))
    other.initialize(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(5)))
    other.freeze()
    theirs = _build(other, tiny_dataset, tmp_path / "other").shards[0]
    ours = _build(tiny_backbone, tiny_dataset, tmp_path).shards[0]
    ours.write_bytes(theirs.read_bytes())  # a valid shard with a valid hash, of another backbone
    m_path = ours.parent / "manifest.json"
    m = json.loads(m_path.read_text())
    m["shards"][0]["content_hash"] = safefile.read_header(theirs)["content_hash"]
    m_path.write_text(json.dumps(m))
    cache, err = _load_with_message(lambda: _build(tiny_backbone, tiny_dataset, tmp_path), capsys)
    assert f"{ours}: written for backbone {other.content_hash[:12]}" in err and err.count("\n") == 1
    _assert_correct(cache, tiny_backbone, tiny_dataset)


@pytest.mark.parametrize("damage", ["truncated", "missing", "not-safetensors"])
def test_a_truncated_or_missing_shard_is_rebuilt(tiny_backbone, tiny_dataset, tmp_path, capsys, damage):
    shard = _build(tiny_backbone, tiny_dataset, tmp_path).shards[2]
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(b"\x80\x04garbage" * 10)
    cache, err = _load_with_message(lambda: _build(tiny_backbone, tiny_dataset, tmp_path), capsys)
    assert str(shard) in err and err.count("\n") == 1, err
    assert {"truncated": "truncated", "missing": "missing", "not-safetensors": "not a safetensors"}[
        damage
    ] in err
    _assert_correct(cache, tiny_backbone, tiny_dataset)


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (None, "shards wrongly"),  # shard list edited to point outside the folder
    ],
)
def test_a_corrupt_manifest_rebuilds_the_cache(
    tiny_backbone, tiny_dataset, tmp_path, capsys, manifest, reason
):
    cache = _build(tiny_backbone, tiny_dataset, tmp_path)
    m_path = cache.folder / "manifest.json"
    if manifest is None:
        m = json.loads(m_path.read_text())
        m["shards"][0]["file"] = "../../../../etc/passwd"
        manifest = json.dumps(m)
    m_path.write_text(manifest)
    cache, err = _load_with_message(lambda: _build(tiny_backbone, tiny_dataset, tmp_path), capsys)
    assert reason in err and "rebuilding it" in err and err.count("\n") == 1, err
    _assert_correct(cache, tiny_backbone, tiny_dataset)


def test_an_old_cache_without_hashes_is_rebuilt_once(tiny_backbone, tiny_dataset, tmp_path, capsys):
    cache = _build(tiny_backbone, tiny_dataset, tmp_path)
    # the layout written before content hashes: shard names only, no format, no hashes
    for path in cache.shards:
        tensors, meta = _read(path)
        header = {"kind": "latent-shard", "format_version": 1, "backbone_hash": tiny_backbone.content_hash}
        tensors["z"].zero_()  # and wrong: it must not be used
        save_file(tensors, str(path), metadata={"flowcond": json.dumps(header)})
    old = {
        "backbone_hash": tiny_backbone.content_hash,
        "dataset": tiny_dataset.spec,
        "size": 32,
        "latent_dim": 64,
        "shards": [p.name for p in cache.shards],
    }
    (cache.folder / "manifest.json").write_text(json.dumps(old))
    cache, err = _load_with_message(lambda: _build(tiny_backbone, tiny_dataset, tmp_path), capsys)
    assert "written by an older flowcond without content hashes; rebuilding it" in err, err
    _assert_correct(cache, tiny_backbone, tiny_dataset)
    _, err = _load_with_message(lambda: _build(tiny_backbone, tiny_dataset, tmp_path), capsys)
    assert err == ""


def test_changed_dataset_labels_rebuild_the_cache(tiny_backbone, tmp_path, capsys):
    _build(tiny_backbone, tiny_image_dataset(), tmp_path)
    changed = tiny_image_dataset()
    changed.labels["digit"] = changed.labels["digit"].flip(0)
    cache, err = _load_with_message(lambda: _build(tiny_backbone, changed, tmp_path), capsys)
    assert "made for other data (labels_fingerprint differ)" in err
    _assert_correct(cache, tiny_backbone, changed)


def test_a_cache_without_its_backbone_refuses_a_damaged_shard(tiny_backbone, tiny_dataset, tmp_path):
    built = _build(tiny_backbone, tiny_dataset, tmp_path)
    _tamper(built.shards[0], _zero_latents)
    bare = LatentCache(built.folder, built.manifest)
    with pytest.raises(
        FileFormatError, match="content hash mismatch.*rebuild the cache with LatentCache.build"
    ):
        bare.load_all()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("digit", 10, r"'digit' \(categorical, size 10\) have values 0\.\.10 outside the 10 classes 0\.\.9"),
        ("digit", -1, r"'digit' \(categorical, size 10\) have values -1\.\.9 outside"),
        ("attributes", 2.0, r"'attributes' \(binary, size 3\) have values other than 0 and 1"),
        ("attributes", float("nan"), r"'attributes' \(binary, size 3\) have values other than 0 and 1"),
    ],
)
def test_out_of_range_dataset_labels_are_a_one_line_error(tiny_backbone, tmp_path, field, value, message):
    ds = tiny_image_dataset()
    ds.labels[field][3] = value
    with pytest.raises(ConfigError, match=r"dataset 'tiny' \(train split\): labels of field " + message) as e:
        _build(tiny_backbone, ds, tmp_path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "cache").exists()  # refused before encoding anything


def test_a_backbone_that_encodes_to_huge_latents_is_named(tiny_backbone, tiny_dataset, tmp_path, monkeypatch):
    real = Backbone.encode

    def broken(self, x):
        z = real(self, x)
        z[1, 0] = float("inf")
        return z

    monkeypatch.setattr(Backbone, "encode", broken)
    with pytest.raises(
        FlowcondError, match=r"encodes 1 image\(s\) of dataset 'tiny' \(train\) to non-finite"
    ) as e:
        _build(tiny_backbone, tiny_dataset, tmp_path)
    assert "image 1" in str(e.value) and "\n" not in str(e.value)


def test_an_exploding_but_finite_latent_is_data_not_damage(
    tiny_backbone, tiny_dataset, tmp_path, monkeypatch, capsys
):
    """A flow's inverse can explode on an unseen image (the shipped backbone encodes one MNIST-5k
    test digit to a latent of norm 1e8): that is what the backbone computes, so it is cached,
    and loading it again neither fails nor rebuilds."""
    real = Backbone.encode

    def exploding(self, x):
        z = real(self, x)
        z[:, 0] = torch.where(torch.arange(len(z)) == 1, torch.tensor(1.2e8), z[:, 0])
        return z

    monkeypatch.setattr(Backbone, "encode", exploding)
    first = _build(tiny_backbone, tiny_dataset, tmp_path)
    z, _ = first.load_all()
    assert float(z.abs().max()) == pytest.approx(1.2e8)
    capsys.readouterr()
    again = _build(tiny_backbone, tiny_dataset, tmp_path)
    assert torch.equal(again.load_all()[0], z)
    assert "re-encoding" not in capsys.readouterr().err


def test_the_shipped_backbone_caches_the_test_digit_it_explodes_on(tmp_path):
    """The README's main job: the shipped backbone's inverse explodes on MNIST-5k test digit 934
    (latent norm about 1e8). Caching the test split must keep it, not refuse it."""
    from pathlib import Path

    from flowcond.datasets import load_dataset

    shipped = Path(__file__).resolve().parents[2] / "examples" / "backbones" / "glow_mnist5k.safetensors"
    test = load_dataset("mnist5k", "test")
    cache = LatentCache.build(Backbone.load(shipped), test, tmp_path / "cache", progress=False)
    z, _ = cache.load_all()
    assert torch.isfinite(z).all() and len(z) == len(test)
    assert float(z[934].norm()) > 1e7
