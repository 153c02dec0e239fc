"""Trained CGlow baselines kept in the model cache: reused under the same key, retrained when the
file records another run, and a dead trainer's marker does not block."""

from __future__ import annotations

import os

from flowcond import BackboneConfig
from flowcond.paper.baselines import CGlow, CGlowTrainConfig
from flowcond.paper.model_cache import cached_cglow, training_marker
from flowcond.testing import tiny_image_dataset

TINY = BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8)


def test_the_cache_reuses_the_same_run_and_retrains_another(tmp_path):
    train, test = tiny_image_dataset(n=20, seed=0), tiny_image_dataset(n=10, seed=1)
    opts = CGlowTrainConfig(epochs=1, max_steps=1, batch_size=8, seed=0)
    args = (TINY, train, test, opts, "digit", "attributes")
    _, _, reused = cached_cglow(tmp_path, *args, progress=False)
    assert not reused
    (path,) = tmp_path.glob("cglow-seed0-*.safetensors")
    model, summary, reused = cached_cglow(tmp_path, *args, progress=False)
    assert reused and summary["training"]["steps"] == 1
    # another seed is another key: trained, not the seed-0 file
    _, _, reused = cached_cglow(
        tmp_path,
        TINY,
        train,
        test,
        opts.model_copy(update={"seed": 1}),
        "digit",
        "attributes",
        progress=False,
    )
    assert not reused and len(list(tmp_path.glob("cglow-seed1-*.safetensors"))) == 1
    # a file under the key that records another run (edited binding) is retrained, not used
    tampered = CGlow.load(path)
    tampered.save(path, cache_binding={"options": "other"})
    _, _, reused = cached_cglow(tmp_path, *args, progress=False)
    assert not reused and CGlow.load(path).metadata["cache_binding"]["options"]["seed"] == 0
    # a marker left by a dead trainer does not block
    training_marker(path).write_text(str(2**22 + os.getpid()))
    _, _, reused = cached_cglow(tmp_path, *args, progress=False)
    assert reused
