"""The whole CelebA job from a folder in CelebA's on-disk layout, one ``flowcond`` command at a time.

    python examples/celeba.py --root DATA --out celeba-run          # paper sizes: wants a GPU
    python examples/celeba.py --tiny --out celeba-tiny              # minutes on a CPU, fake faces

``--root`` holds ``celeba/img_align_celeba/*.jpg`` and the five annotation files (or is the
``celeba`` folder itself). The steps, each printed before it runs:

1. ``train-backbone``: the paper's 64x64 5-bit Glow ``3x32`` (hidden 512);
2. ``attach``: ``ids`` on the identities (a learned embedding: 10,177 of them), the 40
   ``attributes`` and 2 unsupervised ``codes`` -- the paper's convolutional ``E`` and supervision
   block, chosen automatically for a 12,288-dimensional latent;
3. ``sample`` (one identity, smiling) and ``manipulate`` (+Smiling, +Eyeglasses, +Blond_Hair);
4. ``train-evaluator`` (identity classifier) and ``evaluate`` (CAGlow vs CGlow vs Glow +
   pre-stored). In real CelebA the test identities are not in the training split, so the class
   accuracy of ``evaluate`` measures nothing there; the attribute tables do.

``--tiny`` writes a fake CelebA folder (generated JPEGs, all five files) unless ``--root`` is
given, and shrinks every size so that the job runs on a CPU in a few minutes. ``--device`` is
passed to the commands that accept it.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

#: (paper / GPU sizes, --tiny sizes)
SIZES = {
    "backbone": (
        ["--levels", "3", "--steps", "32", "--hidden", "512", "--n-bits", "5", "--epochs", "20"],
        ["--levels", "3", "--steps", "2", "--hidden", "16", "--n-bits", "5", "--epochs", "2"],
    ),
    "batch": (["--batch-size", "64"], ["--batch-size", "16"]),
    "attach": (["--steps", "20000", "--batch-size", "128"], ["--steps", "30", "--batch-size", "16"]),
    "evaluator": (["--epochs", "10"], ["--epochs", "1"]),
    "evaluate": (
        ["--cglow-epochs", "5", "--attach-steps", "20000", "--samples-per-class", "2", "--fid-real", "5000"],
        [
            "--cglow-max-steps",
            "4",
            "--cglow-batch-size",
            "8",
            "--attach-steps",
            "10",
            "--attach-batch-size",
            "8",
            "--samples-per-class",
            "2",
            "--fid-real",
            "8",
            "--attr-evaluator-epochs",
            "1",
            "--codes",
            "1",
        ],
    ),  # fmt: skip
}


def flowcond(*args: str) -> None:
    """Run ``flowcond ARGS`` (printed first); stop the job if it fails."""
    cmd = [sys.executable, "-m", "flowcond", *args]
    print("$ flowcond " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    if subprocess.run(cmd, check=False).returncode:
        sys.exit(f"flowcond {args[0]} failed")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def accepts(command: str, option: str) -> bool:
    """Whether ``flowcond COMMAND`` has ``option`` (``--help`` imports no torch: fast)."""
    out = subprocess.run(
        [sys.executable, "-m", "flowcond", command, "--help"], capture_output=True, text=True
    )
    return option in out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="folder holding celeba/ (required unless --tiny)")
    ap.add_argument("--out", default="celeba-run")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (and fake data without --root)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--threads", default=None, help="torch CPU threads of the training loops")
    ap.add_argument("--skip-evaluate", action="store_true", help="stop after sample and manipulate")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pick = int(args.tiny)
    root = args.root
    if root is None:
        if not args.tiny:
            ap.error("--root DIR is required (or --tiny for fake data)")
        from flowcond_plugins.celeba_layout import write_celeba_folder

        root = str(out / "fake-celeba")
        if not (Path(root) / "celeba" / "list_eval_partition.txt").exists():
            write_celeba_folder(root, n=80, n_ids=4, seed=0)
            print(f"wrote a fake CelebA folder (80 generated faces, 4 identities) to {root}")

    def extra(command: str) -> list[str]:
        more = []
        if accepts(command, "--device"):
            more += ["--device", args.device]
        if args.threads and accepts(command, "--threads"):
            more += ["--threads", args.threads]
        return more

    data = ["--dataset", "celeba", "--root", root]
    bb, heads = str(out / "glow_celeba.safetensors"), str(out / "faces.heads.safetensors")
    cache = ["--cache-dir", str(out / "latent-cache")]
    flowcond("train-backbone", *data, *SIZES["backbone"][pick], *SIZES["batch"][pick],
             *extra("train-backbone"), "--out", bb)  # fmt: skip
    flowcond("attach", "--backbone", bb, "--root", root, "--plugin", "ids", "--plugin", "attributes",
             "--plugin", "codes", "--option", "ids.field=identity", "--option", "codes.n=2",
             *SIZES["attach"][pick], *cache, *extra("attach"), "--out", heads)  # fmt: skip
    flowcond("sample", heads, "--condition", "ids=0", "--condition", "attributes=Smiling", "--n", "16",
             "--temperature", "0.7", *extra("sample"), "--out", str(out / "samples.png"))  # fmt: skip
    flowcond("manipulate", heads, "--condition", "ids=0", "--add", "attributes=Smiling", "--add",
             "attributes=Eyeglasses", "--add", "attributes=Blond_Hair", *extra("manipulate"),
             "--out", str(out / "edits.png"))  # fmt: skip
    if args.skip_evaluate:
        return
    ev = str(out / "identity_evaluator.safetensors")
    flowcond("train-evaluator", *data, "--label", "identity", *SIZES["evaluator"][pick],
             *extra("train-evaluator"), "--out", ev)  # fmt: skip
    flowcond("evaluate", "--backbone", bb, "--evaluator", ev, *data, *SIZES["evaluate"][pick], *cache,
             *extra("evaluate"), "--out", str(out / "results"))  # fmt: skip
    print(f"done: {out / 'results' / 'results.md'}")


if __name__ == "__main__":
    main()
