"""Start-up time of the ``flowcond`` command line, next to ``python -c "import torch"``.

Run ``python benchmarks/startup.py`` (``--runs N``, default 5). Each command runs ``N`` times in a
fresh process, interleaved with the others (so that a burst of load elsewhere hits every row
alike); a row shows the median wall time and its ratio to ``import torch`` measured in the same
run. ``flowcond --help``, ``flowcond plugins``, ``flowcond info FILE`` and ``flowcond CMD --help``
load every installed plugin but never import torch (tests/core/test_startup.py checks that), so
they should take a small fraction of ``import torch``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "examples/backbones/glow_mnist5k.safetensors"


def commands() -> list[tuple[str, list[str]]]:
    """(label, argv) of every command timed; the first is the reference."""
    flowcond = shutil.which("flowcond")
    cli = [flowcond] if flowcond else [sys.executable, "-m", "flowcond.cli"]
    return [
        ('python -c "import torch"', [sys.executable, "-c", "import torch"]),
        ('python -c "import flowcond"', [sys.executable, "-c", "import flowcond"]),
        ("flowcond --help", [*cli, "--help"]),
        ("flowcond plugins", [*cli, "plugins"]),
        (f"flowcond info {BACKBONE}", [*cli, "info", BACKBONE]),
        ("flowcond attach --help", [*cli, "attach", "--help"]),
        ("flowcond sample --help", [*cli, "sample", "--help"]),
    ]


def run_once(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (median shown)")
    args = parser.parse_args()
    cmds = commands()
    for _, argv in cmds:  # warm the file cache; not timed
        run_once(argv)
    times: dict[str, list[float]] = {label: [] for label, _ in cmds}
    for _ in range(args.runs):
        for label, argv in cmds:
            times[label].append(run_once(argv))
    reference = statistics.median(times[cmds[0][0]])
    width = max(len(label) for label, _ in cmds)
    python = sys.version.split()[0]
    print(f"start-up time, median of {args.runs} runs each ({os.cpu_count()} CPUs, Python {python})")
    print(f"{'command':<{width}}  {'median s':>8}  {'min s':>6}  {'vs import torch':>15}")
    for label, _ in cmds:
        t = times[label]
        med = statistics.median(t)
        print(f"{label:<{width}}  {med:>8.3f}  {min(t):>6.3f}  {med / reference:>14.2f}x")


if __name__ == "__main__":
    main()
