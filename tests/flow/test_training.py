"""The training skeleton every trainer uses: skipped steps, skip budget, checkpoints, resume checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from flowcond.errors import ConfigError, FileFormatError, FlowcondError
from flowcond.io import safefile
from flowcond.io.checkpoint import load_checkpoint, save_checkpoint
from flowcond.training import (
    SkipBudget,
    Stopwatch,
    changed_fields,
    checkpoint_path,
    optimizer_step,
    refuse_changes,
)


def _model_and_adam(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    return model, torch.optim.Adam(model.parameters(), lr=0.1)


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b


def test_checkpoint_path_keeps_the_out_ckpt_naming(tmp_path):
    assert checkpoint_path(tmp_path / "bb.safetensors") == tmp_path / "bb.ckpt.safetensors"
    assert checkpoint_path("x/heads") == checkpoint_path("x/heads.safetensors")


def test_non_finite_loss_or_gradient_is_skipped_without_changing_anything():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    params = list(model.parameters())
    x = torch.randn(8, 3)
    assert optimizer_step(model(x).pow(2).mean(), opt, params)  # a real step: optimizer state
    with torch.no_grad():
        model[2].bias.zero_()  # d sqrt(|b|) / db is not finite at b = 0
    before = _snapshot(model, opt)
    budget = SkipBudget(2, lambda n: f"run diverged: {n} non-finite steps")

    assert not optimizer_step(model(x).pow(2).mean() * float("nan"), opt, params)  # the loss
    budget.skip()
    assert _same(_snapshot(model, opt), before)
    loss = model(x).pow(2).mean() + model[2].bias.abs().sqrt().sum()
    assert torch.isfinite(loss)
    assert not optimizer_step(loss, opt, params, clip=5.0)  # the gradient, clipped or not
    budget.skip()
    assert not optimizer_step(model(x).pow(2).mean() + model[2].bias.abs().sqrt().sum(), opt, params)
    assert _same(_snapshot(model, opt), before)
    assert all(p.grad is None for p in params)
    assert budget.skipped == 2
    with pytest.raises(FlowcondError, match="run diverged: 3 non-finite steps"):
        budget.skip()
    assert optimizer_step(model(x).pow(2).mean(), opt, params, clip=5.0)  # finite again: a step
    assert not _same(_snapshot(model, opt), before)


def test_skip_budget_continues_from_a_resumed_count():
    budget = SkipBudget(3, lambda n: f"{n} skipped", skipped=3)
    with pytest.raises(FlowcondError, match="^4 skipped$"):
        budget.skip()


def test_checkpoint_round_trip_restores_modules_optimizers_and_generators(tmp_path):
    model, opt = _model_and_adam()
    x = torch.randn(8, 3)
    for _ in range(3):
        optimizer_step(model(x).pow(2).mean(), opt, list(model.parameters()))
    g = torch.Generator().manual_seed(5)
    torch.rand(7, generator=g)
    path = tmp_path / "run.ckpt.safetensors"
    save_checkpoint(
        path, "test-checkpoint", {"step": 3, "history": [1.5]}, {"model": model}, {"optim": opt}, {"rng": g}
    )
    other, other_opt = _model_and_adam(seed=1)
    g2 = torch.Generator().manual_seed(0)
    state = load_checkpoint(
        path, "test-checkpoint", {"model": other}, {"optim": other_opt}, {"rng": g2}, require=["step"]
    )
    assert state["step"] == 3 and state["history"] == [1.5]
    assert _same(_snapshot(other, other_opt), _snapshot(model, opt))
    assert torch.equal(torch.rand(5, generator=g2), torch.rand(5, generator=g))
    # both continue identically
    for m, o in ((model, opt), (other, other_opt)):
        optimizer_step(m(x).pow(2).mean(), o, list(m.parameters()))
    assert _same(_snapshot(other, other_opt), _snapshot(model, opt))


def test_a_checkpoint_of_another_kind_or_shape_is_a_one_line_file_error(tmp_path):
    model, opt = _model_and_adam()
    path = tmp_path / "a.ckpt.safetensors"
    save_checkpoint(path, "heads-checkpoint", {"step": 1}, {"heads": model}, {"optim": opt})
    with pytest.raises(FileFormatError, match="expected a 'backbone-checkpoint' file") as e:
        load_checkpoint(path, "backbone-checkpoint", {"heads": model})
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    small = nn.Linear(3, 2)
    with pytest.raises(FileFormatError, match="invalid checkpoint") as e:
        load_checkpoint(path, "heads-checkpoint", {"heads": small})
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileFormatError, match="invalid checkpoint: .*epoch"):
        load_checkpoint(path, "heads-checkpoint", require=["step", "epoch"])


def test_checkpoints_in_the_old_layouts_still_load(tmp_path):
    """train-backbone wrote ``param_groups`` as a list, attach as ``{"e": ..., "d": ...}``."""
    model, opt = _model_and_adam()
    x = torch.randn(8, 3)
    optimizer_step(model(x).pow(2).mean(), opt, list(model.parameters()))
    sd = opt.state_dict()

    def flat(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{i}.{k}": v.clone() for i, st in sd["state"].items() for k, v in st.items()}

    # train-backbone's layout, written by hand as the old code did
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **flat("optim")}
    old = tmp_path / "bb.ckpt.safetensors"
    safefile.write(
        old, tensors, {"kind": "backbone-checkpoint", "param_groups": sd["param_groups"], "epoch": 2}
    )
    m2, o2 = _model_and_adam(seed=1)
    assert load_checkpoint(old, "backbone-checkpoint", {"model": m2}, {"optim": o2})["epoch"] == 2
    assert _same(_snapshot(m2, o2), _snapshot(model, opt))
    # attach's layout: two optimizers and the generator state as tensor ``rng``
    g = torch.Generator().manual_seed(3)
    tensors = {
        **{f"heads.{k}": v for k, v in model.state_dict().items()},
        **flat("optim_e"),
        **flat("optim_d"),
        "rng": g.get_state(),
    }
    groups = {"e": sd["param_groups"], "d": sd["param_groups"]}
    old = tmp_path / "h.ckpt.safetensors"
    safefile.write(old, tensors, {"kind": "heads-checkpoint", "param_groups": groups, "step": 6})
    m3, oe = _model_and_adam(seed=1)
    od = torch.optim.Adam(m3.parameters(), lr=0.5)
    g3 = torch.Generator()
    parts = {
        "modules": {"heads": m3},
        "optimizers": {"optim_e": oe, "optim_d": od},
        "generators": {"rng": g3},
    }
    assert load_checkpoint(old, "heads-checkpoint", **parts)["step"] == 6
    assert _same(_snapshot(m3, oe), _snapshot(model, opt)) and _same(od.state_dict(), opt.state_dict())
    assert torch.equal(g3.get_state(), g.get_state())


def test_refuse_changes_names_every_changed_field_on_one_line(tmp_path):
    old = {"lr": 0.1, "seed": 0, "steps": 10, "hidden": 8}
    new = {"lr": 0.2, "seed": 0, "steps": 20, "hidden": 16, "added": 1}
    assert changed_fields(old, new) == ["lr", "steps", "hidden"]
    assert changed_fields(old, new, ["lr", "seed", "added"]) == ["lr"]  # unknown to old: no change
    with pytest.raises(ConfigError) as e:
        refuse_changes(tmp_path / "x.ckpt.safetensors", "options", old, new, ["lr", "seed", "hidden"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "x.ckpt.safetensors"))
    assert "written for options lr=0.1, hidden=8 (now lr=0.2, hidden=16)" in msg
    refuse_changes(tmp_path / "x", "options", old, new, ["seed"])  # no change: nothing raised


def test_stopwatch_counts_from_the_resumed_seconds_and_skips_pauses(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("flowcond.training.time.perf_counter", lambda: now[0])
    clock = Stopwatch(5.0)
    clock.start()
    now[0] += 2.0
    with clock.paused():
        now[0] += 50.0
    now[0] += 1.0
    assert clock.seconds == 8.0
    assert clock.stop() == 8.0
    now[0] += 10.0
    assert clock.seconds == 8.0


# ------------------------------------------------------------------ data bindings and label checks
def test_dataset_binding_names_the_data_not_where_it_lives():
    from flowcond.testing import tiny_image_dataset
    from flowcond.training import dataset_binding

    ds = tiny_image_dataset()
    binding = dataset_binding(ds)
    assert binding["name"] == "tiny" and binding["split"] == "train" and binding["size"] == 32
    ds.spec = {**ds.spec, "root": "/moved/elsewhere"}
    assert dataset_binding(ds) == binding  # the data may move
    ds.labels["digit"] = ds.labels["digit"].roll(1)  # the same classes on other images
    assert dataset_binding(ds)["labels"] != binding["labels"]
    assert dataset_binding(tiny_image_dataset(n=30))["size"] == 30


def test_refuse_shorter_refuses_stopping_before_the_checkpoint(tmp_path):
    from flowcond.training import refuse_shorter

    refuse_shorter(tmp_path / "c", "--steps", 6, 6, "steps")  # equal: nothing more to run
    refuse_shorter(tmp_path / "c", "--max-steps", None, 6, "steps")  # no limit
    with pytest.raises(ConfigError, match=r"already run 6 steps, more than --steps 4; resume with --steps 6"):
        refuse_shorter(tmp_path / "c", "--steps", 4, 6, "steps")


def test_check_labels_accepts_valid_labels_and_names_the_field_of_bad_ones():
    from flowcond.datasets import LabelField
    from flowcond.testing import tiny_image_dataset
    from flowcond.training import check_labels, label_problem

    check_labels(tiny_image_dataset())
    cont = LabelField("m", "continuous", 2)
    assert label_problem(torch.tensor([[float("nan"), 1.0]]), cont, 1) is None  # "not measured"
    cat = LabelField("d", "categorical", 10)
    assert "float32, expected integer" in label_problem(torch.tensor([1.0]), cat, 1)
    assert "shape (2,), expected (3,)" in label_problem(torch.tensor([1, 2]), cat, 3)
    ds = tiny_image_dataset()
    del ds.labels["attributes"]
    with pytest.raises(
        ConfigError, match=r"dataset 'tiny' \(train split\): labels of field 'attributes'.* are missing"
    ):
        check_labels(ds)


def test_cglow_and_evaluator_resume_refuse_other_data(tmp_path):
    from flowcond.flow.config import BackboneConfig
    from flowcond.paper.baselines.cglow_train import CGlowTrainConfig, train_cglow
    from flowcond.paper.train_evaluator import train_evaluator
    from flowcond.testing import tiny_image_dataset

    tiny = BackboneConfig(channels=1, height=8, width=8, levels=1, steps=1, hidden=8)
    ds, other = tiny_image_dataset(), tiny_image_dataset()
    other.labels["digit"] = other.labels["digit"].roll(1)
    opts = CGlowTrainConfig(epochs=1, batch_size=16, warmup=2)
    out = tmp_path / "cg.safetensors"
    train_cglow(tiny, ds, options=opts, out=out, progress=False, checkpoint=True)
    with pytest.raises(ConfigError, match=r"written for dataset labels="):
        train_cglow(
            tiny, other, options=opts.model_copy(update={"epochs": 2}), out=out, progress=False, resume=True
        )
    with pytest.raises(ConfigError, match=r"already run 2 steps, more than max_steps 1"):
        train_cglow(
            tiny, ds, options=opts.model_copy(update={"max_steps": 1}), out=out, progress=False, resume=True
        )
    ev = dict(epochs=1, batch_size=16, widths=[4, 8], feature_dim=8, progress=False)
    out = tmp_path / "ev.safetensors"
    train_evaluator((ds, ds), out=out, checkpoint=True, **ev)
    with pytest.raises(ConfigError, match=r"written for dataset train=.* \(now train="):
        train_evaluator((other, ds), out=out, resume=True, **{**ev, "epochs": 2})


def test_a_checkpoint_whose_data_changed_or_whose_counters_are_wrong_is_refused(tmp_path):
    model, opt = _model_and_adam()
    optimizer_step(model(torch.randn(4, 3)).pow(2).mean(), opt, list(model.parameters()))
    path = tmp_path / "c.ckpt.safetensors"
    save_checkpoint(path, "heads-checkpoint", {"step": 1}, {"heads": model}, {"optim": opt})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="content hash mismatch"):
        load_checkpoint(path, "heads-checkpoint", {"heads": model}, {"optim": opt})
    for state, field in (
        ({"step": -5}, "step"),
        ({"step": 1, "train_seconds": "x"}, "train_seconds"),
        ({"epoch": 1.5}, "epoch"),
    ):
        save_checkpoint(path, "heads-checkpoint", state, {"heads": model})
        with pytest.raises(FileFormatError, match=f"invalid checkpoint: {field}"):
            load_checkpoint(path, "heads-checkpoint", {"heads": model})
