"""CelebA from its real on-disk layout: the loader, its one-line errors, and the whole job end to end
(train-backbone -> attach ids + attributes + codes -> sample -> manipulate -> evaluate) at tiny size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from flowcond_plugins.celeba_layout import ATTRIBUTE_NAMES, write_celeba_folder

from flowcond.datasets import load_dataset
from flowcond.errors import ConfigError


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory) -> Path:
    """A folder in CelebA's layout: 60 generated 178x218 JPEGs of 3 identities, all five files
    (48 train, 6 valid, 6 test: every identity twice in the test split, as evaluate needs)."""
    root = tmp_path_factory.mktemp("celeba-root")
    write_celeba_folder(root, n=60, n_ids=3, seed=0)
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(root / "celeba", tmp_path / "celeba")
    return tmp_path


def test_the_loader_reads_the_real_layout(celeba_root):
    train = load_dataset("celeba", "train", root=str(celeba_root))
    test = load_dataset("celeba", "test", root=str(celeba_root / "celeba"))  # the folder itself
    assert (len(train), len(test)) == (48, 6)
    assert train.image_shape == (3, 64, 64) and callable(train.images)  # decoded lazily
    x = train.images_at([0, 5])
    assert x.shape == (2, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    ids, attrs = train.schema["identity"], train.schema["attributes"]
    assert ids.kind == "categorical" and ids.size == 3 and len(ids.names) == 3
    assert attrs.kind == "binary" and attrs.names == ATTRIBUTE_NAMES
    assert set(train.labels["attributes"].unique().tolist()) <= {0.0, 1.0}
    # identities are numbered over the whole identity file: the same person, the same id, in
    # every split (image i shows person i % 3 in the fixture)
    lines = (celeba_root / "celeba" / "identity_CelebA.txt").read_text().split()
    number = {lines[i]: int(lines[i + 1]) for i in range(0, len(lines), 2)}
    for ds, first in ((train, 0), (test, 54)):
        for j in range(len(ds)):
            name = ds.schema["identity"].names[int(ds.labels["identity"][j])]
            assert name == f"id_{number[f'{first + j + 1:06d}.jpg']}"


def test_landmarks_and_boxes_are_optional(celeba_root):
    ds = load_dataset("celeba-landmarks", "train", root=str(celeba_root))
    assert ds.labels["landmarks"].shape == (48, 10) and ds.labels["bbox"].shape == (48, 4)
    assert ds.schema["landmarks"].kind == "continuous"
    assert "landmarks" not in load_dataset("celeba", "train", root=str(celeba_root)).labels


@pytest.mark.parametrize(
    ("fname", "edit", "message"),
    [
        (
            "list_attr_celeba.txt",
            lambda t: t.replace(" 1", " 7", 1),
            r"list_attr_celeba\.txt line 3: values must be",
        ),
        (
            "list_attr_celeba.txt",
            lambda t: t.replace("60", "59", 1),
            r"line 1: says 59 images, the file lists 60",
        ),
        (
            "identity_CelebA.txt",
            lambda t: t.replace(".jpg ", ".jpg x", 1),
            r"identity_CelebA\.txt line 1: not all",
        ),
        (
            "list_eval_partition.txt",
            lambda t: t + "000099.jpg 0 1\n",
            r"list_eval_partition\.txt line 61: 3 fields",
        ),
        (
            "list_eval_partition.txt",
            lambda t: t + "000099.jpg 0\n",
            r"identity_CelebA\.txt has no line for image 000099\.jpg \(listed in list_eval",
        ),
        ("identity_CelebA.txt", None, r"identity_CelebA\.txt is missing"),
    ],
    ids=["bad-attribute", "bad-count", "bad-identity", "extra-field", "unlisted-image", "missing-file"],
)
def test_a_malformed_file_is_one_line_naming_file_and_line(celeba_root, tmp_path, fname, edit, message):
    root = _copy(celeba_root, tmp_path)
    path = root / "celeba" / fname
    if edit is None:
        path.unlink()
    else:
        path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError, match=message) as e:
        load_dataset("celeba", "train", root=str(root))
    assert "\n" not in str(e.value) and "dataset 'celeba'" in str(e.value)


def test_a_missing_image_is_named_with_the_line_listing_it(celeba_root, tmp_path):
    root = _copy(celeba_root, tmp_path)
    (root / "celeba" / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(
        ConfigError, match=r"image .*000003\.jpg is missing \(listed in .*partition\.txt line 3\)"
    ):
        load_dataset("celeba", "test", root=str(root))


def test_checksums_only_when_asked(celeba_root):
    from flowcond_plugins.celeba import load_celeba

    load_celeba("train", str(celeba_root))  # generated files: their MD5s are not CelebA's
    with pytest.raises(ConfigError, match=r"list_attr_celeba\.txt: MD5 [0-9a-f]{32}, CelebA's is 75e2"):
        load_celeba("train", str(celeba_root), verify=True)


def test_a_broken_jpeg_is_named_also_from_a_decoding_worker(celeba_root, tmp_path):
    from flowcond.caglow.shards import image_batches

    root = _copy(celeba_root, tmp_path)
    (root / "celeba" / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    ds = load_dataset("celeba", "train", root=str(root))
    with pytest.raises(ConfigError, match=r"^dataset 'celeba': image .*000002\.jpg cannot be decoded"):
        list(image_batches(ds, 0, 8, 4, workers=1))


def _run(flowcond_cli, *args: str) -> str:
    result = flowcond_cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def test_celeba_end_to_end_at_tiny_size(celeba_root, tmp_path, flowcond_cli):
    """train-backbone -> attach ids (on identities, through the learned embedding) + attributes +
    codes -> sample -> manipulate -> train-evaluator -> evaluate, on the 64x64 fixture."""
    root, cache = str(celeba_root), str(tmp_path / "cache")
    bb, heads = str(tmp_path / "glow_celeba.safetensors"), str(tmp_path / "faces.heads.safetensors")
    size = ["--levels", "3", "--steps", "1", "--hidden", "8", "--n-bits", "5"]
    _run(flowcond_cli, "train-backbone", "--dataset", "celeba", "--root", root, *size, "--epochs", "1",
         "--batch-size", "16", "--threads", "1", "--quiet", "--out", bb)  # fmt: skip
    _run(flowcond_cli, "attach", "--backbone", bb, "--root", root, "--plugin", "ids", "--plugin",
         "attributes", "--plugin", "codes", "--option", "ids.field=identity", "--option",
         "ids.embedding_threshold=2", "--option", "codes.n=2", "--steps", "6", "--batch-size", "8",
         "--cache-dir", cache, "--quiet", "--out", heads)  # fmt: skip
    header = json.loads(_run(flowcond_cli, "info", heads))
    assert header["attach_config"]["encoder"] == "auto"
    from flowcond import Heads

    h = Heads.load(heads)
    assert h.encoder.spatial and h.supervision.spatial  # the paper's 64x64 heads: conv E and block
    assert type(h.inputs["ids"]).__name__ == "Embedding"  # identity embedding + FC + deconvolutions
    assert (
        h.supervision.heads["ids"].out_features == 3 and h.supervision.heads["attributes"].out_features == 40
    )
    name = h.kinds["ids"].names[1]
    _run(flowcond_cli, "sample", heads, "--condition", f"ids={name}", "--condition", "attributes=Smiling",
         "--n", "4", "--out", str(tmp_path / "s.png"))  # fmt: skip
    _run(flowcond_cli, "manipulate", heads, "--condition", "ids=2", "--add", "attributes=Smiling", "--add",
         "attributes=Eyeglasses", "--out", str(tmp_path / "edits.png"))  # fmt: skip
    assert (tmp_path / "s.png").stat().st_size and (tmp_path / "edits.png").stat().st_size
    ev = str(tmp_path / "ev.safetensors")
    _run(flowcond_cli, "train-evaluator", "--dataset", "celeba", "--root", root, "--label", "identity",
         "--epochs", "1", "--threads", "1", "--quiet", "--out", ev)  # fmt: skip
    out = tmp_path / "results"
    _run(flowcond_cli, "evaluate", "--backbone", bb, "--evaluator", ev, "--dataset", "celeba", "--root", root,
         "--out", str(out), "--cglow-max-steps", "2", "--cglow-batch-size", "8", "--attach-steps", "4",
         "--attach-batch-size", "8", "--samples-per-class", "2", "--fid-real", "4",
         "--attr-evaluator-epochs", "1", "--codes", "1", "--threads", "1", "--cache-dir", cache,
         "--quiet")  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == {"field": "identity", "n": 3}
    assert results["attributes"]["names"] == ATTRIBUTE_NAMES
    assert {"CAGlow", "CGlow"} <= set(results["results"])
    fid = results["results"]["CAGlow"]["fid"]
    assert math.isfinite(fid["mean"] if isinstance(fid, dict) else fid)
    assert (out / "fig4_cumulative_edits_caglow.png").stat().st_size
