import math

import numpy as np
import pytest
import torch

from flowcond.datasets import ImageDataset, LabelField
from flowcond.paper import morpho


def bar(width=4, top=6, bottom=26, left=14):
    img = np.zeros((32, 32), np.float32)
    img[top:bottom, left : left + width] = 1.0
    return img


def sheared_bar(lean=8):
    """A 3-pixel-wide stroke, rows 4 to 27, whose top is ``lean`` pixels right of its bottom."""
    img = np.zeros((32, 32), np.float32)
    for r in range(4, 28):
        c = int(round(16 + lean / 2 - lean * (r - 4) / 23))
        img[r, c - 1 : c + 2] = 1.0
    return img


def test_thickness_of_vertical_bars_of_known_width():
    m = morpho.measure(np.stack([bar(4), bar(6, left=12), bar(2)]))
    np.testing.assert_allclose(m["thickness"], [4.0, 6.0, 2.0], atol=0.25)


def test_upright_bar_has_zero_slant_and_exact_extent():
    m = morpho.measure(bar(4), bound_frac=0.0)
    assert m["slant"][0] == 0.0
    assert m["width"][0] == pytest.approx(4.0)
    assert m["height"][0] == pytest.approx(20.0)


def test_slant_sign_and_magnitude():
    right, left = sheared_bar(8), sheared_bar(-8)
    m = morpho.measure(np.stack([right, left]), bound_frac=0.0)
    expected = math.atan(8 / 23)
    assert m["slant"][0] == pytest.approx(expected, abs=0.03)
    assert m["slant"][1] == pytest.approx(-expected, abs=0.03)
    # deslanting recovers the narrow stroke, not the 11-pixel bounding box
    assert m["width"][0] < 5.0
    assert m["height"][0] == pytest.approx(24.0)


def test_width_and_height_of_a_rectangle():
    img = np.zeros((32, 32), np.float32)
    img[8:20, 5:27] = 1.0  # 22 wide, 12 tall
    exact = morpho.measure(img, bound_frac=0.0)
    assert (exact["width"][0], exact["height"][0]) == pytest.approx((22.0, 12.0))
    robust = morpho.measure(img)  # default trims 2 % at each side
    assert 0.9 * 22 < robust["width"][0] <= 22.0
    assert 0.9 * 12 < robust["height"][0] <= 12.0


def test_batch_shapes_tensor_input_and_empty_images():
    x = torch.zeros(3, 1, 32, 32)
    x[0, 0] = torch.from_numpy(bar(4))
    m = morpho.measure(x, chunk=2)
    assert set(m) == set(morpho.MEASURES)
    assert all(v.shape == (3,) for v in m.values())
    assert math.isfinite(m["thickness"][0]) and all(math.isnan(m[k][1]) for k in morpho.MEASURES)
    assert morpho.as_array(m).shape == (3, 4)
    assert morpho.binarize(x, upscale=2).shape == (3, 64, 64)
    with pytest.raises(ValueError):
        morpho.measure(torch.zeros(2, 3, 8, 8))


def test_skeleton_of_a_thin_line_is_the_line_and_a_thick_bar_gets_thin():
    line = np.zeros((1, 12, 12), bool)
    line[0, 2:10, 5] = True
    np.testing.assert_array_equal(morpho.skeletonize(line), line)
    thick = morpho.binarize(bar(4), upscale=4)[0]
    skel = morpho.skeletonize(thick)
    assert skel.sum() > 0 and skel.sum() < thick.sum() / 10
    assert (skel & ~thick).sum() == 0  # inside the shape
    assert np.abs(np.nonzero(skel)[1] - np.nonzero(thick)[1].mean()).max() <= 1  # on the centre line


# ------------------------------------------------------------------ the mnist5k-morpho plugin
def _tiny(name, split, widths):
    imgs = torch.from_numpy(np.stack([bar(w, left=16 - w // 2) for w in widths])).unsqueeze(1)
    return ImageDataset(
        imgs,
        {"digit": torch.arange(len(widths)) % 10},
        [LabelField("digit", "categorical", 10, [str(i) for i in range(10)])],
        {"name": name, "split": split},
    )


def test_morpho_labels_use_training_medians_and_a_cache(tmp_path, monkeypatch):
    from flowcond_plugins import morpho as plugin

    monkeypatch.setenv("FLOWCOND_CACHE", str(tmp_path))
    train = _tiny("tiny", "train", [2, 3, 4, 6, 8])
    test = _tiny("tiny", "test", [2, 10])
    ds_train = plugin.with_morpho_labels(train, train, "tiny-morpho")
    ds_test = plugin.with_morpho_labels(test, train, "tiny-morpho")
    med = ds_test.spec["medians"]
    assert med == ds_train.spec["medians"]
    assert med["thickness"] == pytest.approx(4.0, abs=0.25)
    np.testing.assert_array_equal(ds_train.labels["attributes"][:, 0].numpy(), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(ds_test.labels["attributes"][:, 0].numpy(), [0, 1])
    assert ds_test.schema["attributes"].names == ["thick", "slanted", "wide", "tall"]
    assert ds_test.labels["morphometrics"].shape == (2, 4)
    assert ds_test.spec["name"] == "tiny-morpho" and ds_test.spec["split"] == "test"
    cached = sorted(p.name for p in (tmp_path / "morpho").iterdir())
    assert len(cached) == 2 and all(n.endswith(".safetensors") for n in cached)

    # second time: read from the cache, nothing measured
    def boom(*a, **k):
        raise AssertionError("measured again instead of using the cache")

    monkeypatch.setattr(plugin, "measure", boom)
    again = plugin.with_morpho_labels(test, train, "tiny-morpho")
    assert torch.equal(again.labels["attributes"], ds_test.labels["attributes"])
    # a damaged cache file is recomputed, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("FLOWCOND_CACHE", str(tmp_path))
    for p in (tmp_path / "morpho").iterdir():
        p.write_bytes(b"garbage")
    fixed = plugin.with_morpho_labels(test, train, "tiny-morpho")
    assert torch.equal(fixed.labels["attributes"], ds_test.labels["attributes"])


def test_plugin_registers_mnist5k_morpho():
    from flowcond_plugins import morpho as plugin

    seen = []
    plugin.register_datasets(
        register=lambda name, loader, description="", extends=None: seen.append((name, loader, extends))
    )
    assert seen == [("mnist5k-morpho", plugin.load_mnist5k_morpho, "mnist5k")]
