"""The cheap commands never import torch (nor numpy, normflows, torchvision, scipy).

Each command runs in a fresh interpreter with the built-in plugins (and the example plugin, when
installed) loaded, as ``flowcond`` would; the test fails if anything on the way (the CLI, a
command module, a built-in plugin, ``flowcond.conditions``/``datasets``, the header reader) gains
a module-level import of one of those. Timing is ``benchmarks/startup.py``'s job, not this one's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "normflows", "torchvision", "scipy")
BACKBONE = ROOT / "examples" / "backbones" / "glow_mnist5k.safetensors"

#: runs ``flowcond ARGS`` (or, with no ARGS, ``import flowcond``) and prints the heavy modules
PROBE = """
import json, sys
args = json.loads(sys.argv[1])
if args is None:
    import flowcond
else:
    from flowcond.cli import cli
    try:
        cli.main(args=args, prog_name="flowcond")
    except SystemExit as e:
        if e.code:
            raise
print("\\nHEAVY=" + json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
""".replace("{heavy}", repr(HEAVY))


def heavy_modules(args: list[str] | None, extra_env: dict[str, str] | None = None) -> list[str]:
    """The heavy modules imported by ``flowcond ARGS`` in a fresh interpreter."""
    env = {**os.environ, "FLOWCOND_LOAD_PLUGINS": "flowcond,flowcond-parity", **(extra_env or {})}
    env.pop("FLOWCOND_STRICT_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "warning:" not in done.stderr, done.stderr  # every plugin loaded
    return json.loads(done.stdout.rsplit("HEAVY=", 1)[1])


COMMANDS = {
    "import flowcond": None,
    "--help": ["--help"],
    "plugins": ["plugins", "--all"],
    "info": ["info", str(BACKBONE)],
    **{
        f"{cmd} --help": [cmd, "--help"]
        for cmd in (
            "train-backbone",
            "import-backbone",
            "attach",
            "sample",
            "interpolate",
            "explore",
            "manipulate",
            "datasets",
            "evaluate",
            "train-evaluator",
            "demo",
        )
    },
}


@pytest.mark.parametrize("args", list(COMMANDS.values()), ids=list(COMMANDS))
def test_cheap_commands_do_not_import_torch(args):
    assert heavy_modules(args) == []


def test_the_probe_sees_a_torch_import(tmp_path):
    """Not vacuous: a plugin importing torch at module level is caught."""
    (tmp_path / "heavy.py").write_text("import torch\n")
    assert "torch" in heavy_modules(["--plugins-dir", str(tmp_path), "--help"])
