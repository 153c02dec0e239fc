"""The images of one state of the demo's controls, and the commands that reproduce them.

A :class:`View` is what the controls say (the given conditions as ``NAME=VALUE``, temperature,
seed, cumulative edits, the interpolation's start); :meth:`Renderer.render` writes, into a fresh
folder, the three PNGs the page shows — made by the same functions and with the same arguments as
``flowcond sample``, ``manipulate`` and ``interpolate``, so the printed commands write the same
files byte for byte — the commands themselves (``commands.sh``) and a zip of all of it. No Gradio.
"""

from __future__ import annotations

import math
import shlex
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from flowcond.caglow import generate
from flowcond.caglow.heads import Heads
from flowcond.demo.controls import Control, condition_value, controls_for, default_edits
from flowcond.io.atomic import atomic_write, write_text
from flowcond.io.images import save_grid

SAMPLES, EDITS, INTERPOLATION, COMMANDS, BUNDLE = (
    "samples.png",
    "edits.png",
    "interpolation.png",
    "commands.sh",
    "flowcond-demo.zip",
)


@dataclass(frozen=True)
class View:
    """One state of the controls. ``conditions``: the given ones (``NAME=VALUE``; the others are
    drawn from their priors, per row); ``edits``: cumulative ``--add`` edits; ``start``: the
    interpolation's ``--from`` conditions (it ends at ``conditions``)."""

    conditions: tuple[str, ...]
    temperature: float = 0.8
    seed: int = 0
    edits: tuple[str, ...] = ()
    start: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rendered:
    """What :meth:`Renderer.render` wrote: the PNGs (None where the view has no edits or no
    interpolation), the commands that reproduce them, the zip of both, and the seconds it took."""

    folder: Path
    samples: Path
    edits: Path | None
    interpolation: Path | None
    commands: str
    bundle: Path
    seconds: float


class Renderer:
    """Generates the demo's images with ``heads`` (loaded from ``heads_path``, as the commands
    will). ``n`` samples in the grid, ``edit_rows`` noise draws for the edits (one: a single fixed
    sample, as in the paper's Fig. 4), ``rows`` x ``steps`` for the interpolation (one strip).
    Each render goes to a new folder under ``folder``; only the last ``keep`` are kept."""

    def __init__(
        self,
        heads: Heads,
        heads_path: str,
        backbone: str | None = None,
        n: int = 16,
        edit_rows: int = 1,
        rows: int = 1,
        steps: int = 8,
        folder: str | Path | None = None,
        keep: int = 8,
    ) -> None:
        generate.check_counts(0.8, 0, n=n, edit_rows=edit_rows, rows=rows, steps=steps, keep=keep)
        self.heads = heads
        self.heads_path = str(heads_path)
        self.backbone = backbone
        self.n, self.edit_rows, self.rows, self.steps, self.keep = n, edit_rows, rows, steps, keep
        self.root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="flowcond-demo-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.controls: list[Control] = controls_for(heads.kinds)
        self._lock = threading.Lock()
        self._count = 0
        self._folders: list[Path] = []

    @classmethod
    def load(cls, heads_path: str, backbone: str | None = None, **kwargs) -> Renderer:
        """Load the heads file (and its backbone) as ``flowcond sample`` does."""
        return cls(Heads.load(heads_path, backbone), heads_path, backbone, **kwargs)

    # ------------------------------------------------------------------ views
    def conditions(self, states: Sequence[tuple[bool, Sequence]]) -> tuple[str, ...]:
        """``NAME=VALUE`` of every control, from ``(random, widget values)`` per control in
        :attr:`controls` order; a control set to random (or an empty text box) is left out."""
        out = []
        for control, (random, raw) in zip(self.controls, states, strict=True):
            if random:
                continue
            value = condition_value(control, self.heads.kinds[control.name], raw)
            if value is not None:
                out.append(f"{control.name}={value}")
        return tuple(out)

    def default_edits(self) -> list[str]:
        """The edits the page starts with (every checkbox turned on in turn)."""
        return default_edits(self.controls, self.heads.kinds)

    # ----------------------------------------------------------------- render
    def render(self, view: View) -> Rendered:
        """Write the view's PNGs, commands and zip to a new folder (ConfigError on a bad view,
        FlowcondError on non-finite pixels: then nothing is returned and nothing stays written)."""
        with self._lock:
            t0 = time.perf_counter()
            given = self.heads.parse_conditions(list(view.conditions))
            start = None
            if view.start and view.conditions:
                start = self.heads.parse_conditions(list(view.start))
            generate.check_counts(view.temperature, view.seed)
            folder = self._new_folder()
            try:
                pngs = self._images(view, folder, given, start)
                commands = self.commands(view)
                write_text(folder / COMMANDS, commands)
                bundle = folder / BUNDLE
                with atomic_write(bundle, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w") as zf:
                    for path in (*pngs, folder / COMMANDS):
                        if path is not None:
                            zf.write(path, path.name)
            except BaseException:
                self._folders.remove(folder)
                shutil.rmtree(folder, ignore_errors=True)
                raise
            return Rendered(folder, *pngs, commands, bundle, time.perf_counter() - t0)

    @torch.inference_mode()
    def _images(
        self, view: View, folder: Path, given: dict, start: dict | None
    ) -> tuple[Path, Path | None, Path | None]:
        """The samples, edits and interpolation PNGs, as ``sample``, ``manipulate`` and
        ``interpolate`` write them."""
        heads, t, seed = self.heads, view.temperature, view.seed
        per_row = max(1, int(math.sqrt(self.n)))
        images, _, labels = generate.sample_rows(heads, given, self.n, per_row, t, seed)
        samples = save_grid(images, folder / SAMPLES, nrow=per_row, row_labels=labels)
        edits = interpolation = None
        if view.edits:
            images, cols = generate.manipulate(heads, given, list(view.edits), self.edit_rows, t, seed)
            edits = save_grid(images, folder / EDITS, nrow=len(cols), col_labels=cols)
        if start is not None:
            images = generate.interpolate(heads, start, given, self.steps, self.rows, t, seed)
            weights = [f"{w:.2f}" for w in torch.linspace(0, 1, self.steps).tolist()]
            interpolation = save_grid(images, folder / INTERPOLATION, nrow=self.steps, col_labels=weights)
        return samples, edits, interpolation

    def commands(self, view: View) -> str:
        """The ``flowcond`` commands that write the view's PNGs (run in an empty folder)."""
        common = [f"--temperature={view.temperature!r}", f"--seed={view.seed}"]
        if self.backbone is not None:
            common.append(f"--backbone={self.backbone}")
        given = [f"--condition={c}" for c in view.conditions]
        lines = [
            ["flowcond", "sample", self.heads_path, *given, f"--n={self.n}", *common, f"--out={SAMPLES}"]
        ]
        if view.edits:
            adds = [f"--add={e}" for e in view.edits]
            lines.append(
                ["flowcond", "manipulate", self.heads_path, *given, *adds, f"--rows={self.edit_rows}"]
                + [*common, f"--out={EDITS}"]
            )
        if view.start and view.conditions:
            ends = [f"--from={c}" for c in view.start] + [f"--to={c}" for c in view.conditions]
            lines.append(
                ["flowcond", "interpolate", self.heads_path, *ends, f"--steps={self.steps}"]
                + [f"--rows={self.rows}", *common, f"--out={INTERPOLATION}"]
            )
        return "".join(shlex.join(line) + "\n" for line in lines)

    def _new_folder(self) -> Path:
        self._count += 1
        folder = self.root / f"{self._count:06d}"
        folder.mkdir()
        self._folders.append(folder)
        while len(self._folders) > self.keep:
            shutil.rmtree(self._folders.pop(0), ignore_errors=True)
        return folder
