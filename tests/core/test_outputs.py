"""The output rule (flowcond.io.outputs) and stale temp files (flowcond.io.atomic): no command
writes over its inputs or over a file of another kind, derived paths never collide, unwritable
locations fail before any work, killed writes are cleaned up on the next write."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowcond.errors import ConfigError
from flowcond.io import atomic
from flowcond.io.outputs import Output, check_locations, check_outputs, existing_kind

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "examples" / "backbones" / "glow_mnist5k.safetensors"
TINY_TRAIN = ("--dataset", "digits", "--levels", "1", "--steps", "1", "--hidden", "4", "--epochs", "1")
TINY_TRAIN += ("--max-steps", "1", "--warmup", "0", "--threads", "1", "--quiet")


@pytest.fixture
def backbone_copy(tmp_path) -> Path:
    """The shipped backbone, copied (never touch the original)."""
    path = tmp_path / "mybb.safetensors"
    shutil.copyfile(SHIPPED, path)
    return path


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error")]


def _no_work(monkeypatch, module: str, name: str) -> None:
    """Make ``module.name`` (``module`` may end in a class) fail the test if it is ever called:
    the checks must come before any work."""
    import importlib

    def boom(*args, **kwargs):
        raise AssertionError(f"{module}.{name} ran although the outputs are invalid")

    mod, _, cls = module.partition(":")
    target = importlib.import_module(mod)
    monkeypatch.setattr(getattr(target, cls) if cls else target, name, boom)


# ----------------------------------------------------------------- data loss
def test_train_backbone_out_png_is_refused_so_samples_cannot_overwrite_it(tmp_path, flowcond_cli):
    out = tmp_path / "model.png"
    r = flowcond_cli("train-backbone", *TINY_TRAIN, "--out", str(out))
    assert r.exit_code == 1
    assert _error_lines(r) == [f"Error: --out {out}: a backbone file must end in .safetensors"]
    assert not out.exists()


@pytest.mark.parametrize("samples", ["m.safetensors", "m.ckpt.safetensors"])
def test_train_backbone_samples_cannot_be_out_or_its_checkpoint(tmp_path, flowcond_cli, samples):
    out = tmp_path / "m.safetensors"
    r = flowcond_cli("train-backbone", *TINY_TRAIN, "--out", str(out), "--samples", str(tmp_path / samples))
    assert r.exit_code == 1 and len(_error_lines(r)) == 1
    assert "--samples" in r.stderr and not out.exists()


def test_attach_refuses_out_equal_to_backbone_before_any_work(backbone_copy, flowcond_cli, monkeypatch):
    _no_work(monkeypatch, "flowcond.caglow.attach", "attach")
    before = backbone_copy.read_bytes()
    link = backbone_copy.with_name("link.safetensors")
    link.symlink_to(backbone_copy.name)
    hard = backbone_copy.with_name("hard.safetensors")
    os.link(backbone_copy, hard)
    for given in (backbone_copy, link, hard):
        for force in ((), ("--force",)):  # --force never lifts this
            r = flowcond_cli(
                "attach", "--backbone", str(given), "--plugin", "ids", "--out", str(backbone_copy), *force
            )
            assert r.exit_code == 1, r.output
            assert _error_lines(r) == [
                f"Error: --out {backbone_copy} is the input --backbone {given}: writing there would "
                f"destroy it; choose another --out"
            ]
    assert backbone_copy.read_bytes() == before


def test_attach_checkpoint_cannot_overwrite_the_backbone(backbone_copy, flowcond_cli, monkeypatch):
    _no_work(monkeypatch, "flowcond.caglow.attach", "attach")
    ckpt_named = backbone_copy.with_name("h.ckpt.safetensors")
    backbone_copy.rename(ckpt_named)
    r = flowcond_cli(
        "attach",
        "--backbone",
        str(ckpt_named),
        "--plugin",
        "ids",
        "--out",
        str(ckpt_named.with_name("h.safetensors")),
    )
    assert r.exit_code == 1 and "the checkpoint" in r.stderr and "choose another --out" in r.stderr


def test_library_check_locations_refuses_out_equal_to_an_input(backbone_copy):
    with pytest.raises(ConfigError, match="is the input backbone"):
        check_locations({"out": str(backbone_copy)}, {"backbone": backbone_copy})
    with pytest.raises(ConfigError, match="are the same file"):
        check_locations({"out": backbone_copy.with_suffix(".x"), "samples": backbone_copy.with_suffix(".x")})


def test_a_file_of_another_kind_is_replaced_only_with_force(backbone_copy, tmp_path):
    heads_out = [Output(backbone_copy, "--out", "heads")]
    with pytest.raises(
        ConfigError, match="there is a flowcond backbone file there, not a flowcond heads file"
    ):
        check_outputs(heads_out)
    check_outputs(heads_out, force=True)
    check_outputs([Output(backbone_copy, "--out", "backbone")])  # same kind: a rerun may replace it
    png = tmp_path / "grid.npz"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a PNG where an .npz would go
    with pytest.raises(ConfigError, match="there is a PNG image there"):
        check_outputs([Output(png, "--out", "npz")])
    empty = tmp_path / "empty.png"
    empty.touch()
    check_outputs([Output(empty, "--out", "png")])
    assert existing_kind(tmp_path / "missing") is None and existing_kind(empty) == "empty"


def test_sample_will_not_replace_a_backbone_named_png(backbone_copy, flowcond_cli, monkeypatch):
    _no_work(monkeypatch, "flowcond.caglow.heads:Heads", "load")
    target = backbone_copy.with_name("grid.png")
    backbone_copy.rename(target)
    r = flowcond_cli("sample", str(target.with_name("heads.safetensors")), "--out", str(target))
    assert r.exit_code == 1 and "there is a flowcond backbone file there" in r.stderr
    assert "--force" in r.stderr and existing_kind(target) == "backbone"


# -------------------------------------------------------- unwritable outputs
def _bad_outs(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "afile").write_text("x")
    return {
        "proc": "/proc/x.png",
        "directory": str(tmp_path / "adir.png"),
        "parent is a file": str(tmp_path / "afile" / "x.png"),
        "too long": str(tmp_path / ("a" * 300 + ".png")),
    }


@pytest.mark.parametrize("case", ["proc", "directory", "parent is a file", "too long"])
def test_unwritable_out_is_one_line_before_any_work(tmp_path, flowcond_cli, monkeypatch, case):
    _no_work(monkeypatch, "flowcond.caglow.heads:Heads", "load")
    out = _bad_outs(tmp_path)[case]
    r = flowcond_cli("sample", str(tmp_path / "heads.safetensors"), "--out", out)
    assert r.exit_code == 1
    lines = _error_lines(r)
    assert len(lines) == 1 and lines[0].startswith("Error: --out "), r.output
    assert "Traceback" not in r.output


def test_train_backbone_out_in_proc_fails_before_the_first_epoch(flowcond_cli, monkeypatch):
    _no_work(monkeypatch, "flowcond.flow.train", "train_backbone")
    r = flowcond_cli("train-backbone", *TINY_TRAIN, "--out", "/proc/x.safetensors")
    assert r.exit_code == 1
    assert _error_lines(r) == [
        "Error: --out /proc/x.safetensors: cannot write in /proc (No such file or directory)"
    ]


@pytest.mark.parametrize("how", ["option", "environment"])
def test_unwritable_cache_dir_is_one_line(backbone_copy, tmp_path, flowcond_cli, monkeypatch, how):
    _no_work(monkeypatch, "flowcond.caglow.attach", "attach")
    (tmp_path / "afile").write_text("x")
    cache = str(tmp_path / "afile")
    args = [
        "attach",
        "--backbone",
        str(backbone_copy),
        "--plugin",
        "ids",
        "--out",
        str(tmp_path / "h.safetensors"),
    ]
    if how == "option":
        r = flowcond_cli(*args, "--cache-dir", cache)
        expected = f"Error: --cache-dir {cache}: is an existing file, not a folder"
    else:
        r = flowcond_cli(*args, env={"FLOWCOND_CACHE": cache})
        expected = f"Error: FLOWCOND_CACHE={cache}: is an existing file, not a folder"
    assert r.exit_code == 1 and _error_lines(r) == [expected]


def test_evaluate_refuses_an_input_where_it_writes(backbone_copy, tmp_path, flowcond_cli, monkeypatch):
    _no_work(monkeypatch, "flowcond.paper.run", "evaluate")
    evaluator = tmp_path / "out" / "results.json"
    evaluator.parent.mkdir()
    evaluator.write_text("{}")
    r = flowcond_cli(
        "evaluate",
        "--backbone",
        str(backbone_copy),
        "--evaluator",
        str(evaluator),
        "--out",
        str(tmp_path / "out"),
    )
    assert r.exit_code == 1 and "where evaluate writes a file of that name" in r.stderr
    r = flowcond_cli(
        "evaluate", "--backbone", str(backbone_copy), "--evaluator", "e", "--out", str(backbone_copy)
    )
    assert r.exit_code == 2 and "is a file" in r.stderr  # click's own check of --out


# ------------------------------------------------------------ stale temp files
def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_a_killed_write_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "model.safetensors"
    code = (
        "import os, signal, sys\n"
        "from flowcond.io.atomic import atomic_write\n"
        "with atomic_write(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT)
    assert proc.returncode == -9
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".model.safetensors.")]
    assert not target.exists()
    atomic.write_text(target, "fresh")  # too young to be judged stale: kept
    assert left.exists()
    old = time.time() - atomic.STALE_SECONDS - 60
    os.utime(left, (old, old))
    atomic.write_text(target, "again")
    assert not left.exists() and target.read_text() == "again"


def test_temp_files_of_live_writers_young_files_and_other_targets_are_kept(tmp_path):
    target = tmp_path / "h.safetensors"
    dead, old = _dead_pid(), time.time() - 7200
    files = {
        "dead_old": f".h.safetensors.{dead}.abcdefgh.tmp",
        "legacy_old": ".h.safetensors.k2j4h5g6.tmp",
        "live_old": f".h.safetensors.{os.getpid()}.abcdefgh.tmp",
        "dead_young": f".h.safetensors.{dead}.zzzzzzzz.tmp",
        "other_target": f".g.safetensors.{dead}.abcdefgh.tmp",
        "png_dead_old": f".h.safetensors.{dead}.qqqqqqqq.png",
    }
    for key, name in files.items():
        (tmp_path / name).write_text("x")
        if key != "dead_young":
            os.utime(tmp_path / name, (old, old))
    atomic.write_text(target, "new")
    left = {key for key, name in files.items() if (tmp_path / name).exists()}
    assert left == {"live_old", "dead_young", "other_target"}


def test_temp_names_fit_the_filesystem_for_long_targets(tmp_path):
    target = tmp_path / ("n" * 250 + ".png")
    atomic.write_text(target, "ok")
    assert target.read_text() == "ok"
    assert atomic.temp_prefix(target).endswith(f".{os.getpid()}.")
