"""Fuzz flowcond's file loaders with seeded byte mutations of valid files.

Run ``python benchmarks/fuzz_files.py`` (``--iterations N``, default 3000; ``--seed S``;
``--timeout SECONDS`` per case; ``--kinds backbone,heads,...``). It writes a tiny valid backbone,
heads file, attach checkpoint, latent-cache shard, evaluator and pre-stored file, then loads
thousands of mutated copies: bit flips, byte overwrites, truncations, insertions, a wrong header
length, edits of the flowcond header JSON (a field replaced by a hostile value, deleted or added,
deep nesting) and of the safetensors tensor entries (dtype, shape, offsets, names). Every outcome
must be a load or one of flowcond's own errors (:class:`flowcond.errors.FlowcondError`): never
another exception, a hang (each case has a time limit) or a large allocation (each case runs
under an address-space limit). It prints the count of each outcome per file kind and the time per
case, and exits 1 if any case failed. ``tests/core/test_fuzz_files.py`` runs a few hundred cases
of the same engine.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: outcomes that fail the fuzz
FAILURES = ("timeout", "memory")
#: address space a case may add (bytes): a header promising a huge model must not allocate it
MEMORY_BUDGET = 3 << 30

HOSTILE: list[Any] = [
    None,
    True,
    False,
    -1,
    0,
    1,
    7,
    10**9,
    10**30,
    2**70,
    -(2**70),
    1.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    "",
    "ten",
    "x" * 5000,
    "../../etc/passwd",
    [],
    [{}],
    [None],
    [1, 2, 3],
    {},
    {"a": 1},
    {"name": 5},
]


@dataclass
class Target:
    """A valid file, where a loader expects it, and the loader."""

    name: str
    path: Path
    load: Callable[[Path], Any]
    data: bytes = b""


@dataclass
class Report:
    """Outcome counts per target and the failing cases."""

    counts: dict[str, Counter] = field(default_factory=dict)
    #: per target, the kinds of mutation (bitflip, json...) after which the file still loaded
    loaded_after: dict[str, Counter] = field(default_factory=dict)
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    cases: int = 0
    slowest: tuple[float, str, str] = (0.0, "", "")

    def add(self, target: str, mutation: str, outcome: str, detail: str, seconds: float) -> None:
        self.counts.setdefault(target, Counter())[outcome] += 1
        if outcome == "loaded":
            self.loaded_after.setdefault(target, Counter())[mutation.split()[0]] += 1
        self.cases += 1
        self.seconds += seconds
        if seconds > self.slowest[0]:
            self.slowest = (seconds, target, mutation)
        if is_failure(outcome):
            self.failures.append((target, mutation, outcome, detail))

    def table(self) -> str:
        outcomes = sorted({o for c in self.counts.values() for o in c}, key=_outcome_order)
        rows = [["file", *outcomes, "total"]]
        for target, c in self.counts.items():
            rows.append([target, *(str(c.get(o, 0)) for o in outcomes), str(sum(c.values()))])
        total = Counter()
        for c in self.counts.values():
            total.update(c)
        rows.append(["all", *(str(total.get(o, 0)) for o in outcomes), str(sum(total.values()))])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def is_failure(outcome: str) -> bool:
    return outcome in FAILURES or outcome.startswith("other:")


def _outcome_order(o: str) -> tuple[int, str]:
    order = ["loaded", "FileFormatError", "ConfigError", "PluginError"]
    return (order.index(o), o) if o in order else (len(order) + is_failure(o), o)


# ---------------------------------------------------------------- the files
def make_targets(folder: Path) -> list[Target]:
    """Tiny valid files of every kind in ``folder``, each with its loader."""
    import torch

    from flowcond import registry
    from flowcond.caglow.config import AttachConfig
    from flowcond.caglow.heads import Heads
    from flowcond.caglow.latents import LatentCache
    from flowcond.flow.backbone import Backbone
    from flowcond.flow.config import BackboneConfig
    from flowcond.io.checkpoint import load_checkpoint, save_checkpoint
    from flowcond.paper.baselines.prestored import PreStored
    from flowcond.paper.config import EvaluatorConfig
    from flowcond.paper.evaluator import Evaluator, EvaluatorNet
    from flowcond.testing import tiny_image_dataset

    folder.mkdir(parents=True, exist_ok=True)
    ds = tiny_image_dataset()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8))
        bb.initialize(ds.images[:16])
        bb.freeze()
    bb_path = folder / "backbone.safetensors"
    bb.save(bb_path, dataset={"name": "tiny", "split": "train"}, test_bits_per_dim=3.5)

    plugins = ["ids", "attributes", "codes"]
    config = AttachConfig(plugins=plugins, hidden=8, trunk_hidden=8, noise_dim=4)

    def new_heads() -> Heads:
        kinds = {n: registry.get_condition_kind(n).from_dataset(None, ds) for n in plugins}
        return Heads(bb, kinds, config)

    heads = new_heads()
    heads_path = folder / "heads.safetensors"
    heads.save(heads_path, backbone_path=bb_path.name, summary={"steps": 0})

    def parts(h: Heads) -> dict[str, Any]:
        enc = list(h.encoder.parameters()) + list(h.inputs.parameters())
        return {
            "modules": {"heads": h},
            "optimizers": {
                "optim_e": torch.optim.Adam(enc, lr=1e-3),
                "optim_d": torch.optim.Adam(list(h.supervision.parameters()), lr=1e-3),
            },
            "generators": {"rng": torch.Generator().manual_seed(0)},
        }

    p = parts(heads)
    for opt in p["optimizers"].values():  # one step, so that the optimizers have state
        for group in opt.param_groups:
            for param in group["params"]:
                param.grad = torch.ones_like(param) * 1e-3
        opt.step()
    ckpt_path = folder / "heads.ckpt.safetensors"
    state = {"step": 1, "skipped": 0, "train_seconds": 0.1, "attach_config": config.model_dump()}
    save_checkpoint(ckpt_path, "heads-checkpoint", state, **p)

    cache = LatentCache.build(bb, ds, cache_dir=folder / "cache", shard_size=64, progress=False)
    shard_path = cache.shards[0]
    folder_, manifest = cache.folder, json.loads(json.dumps(cache.manifest))

    ecfg = EvaluatorConfig(channels=1, height=8, width=8, n_outputs=10, widths=[4, 8], feature_dim=8)
    evaluator = Evaluator(EvaluatorNet(ecfg), ecfg, "digit", [str(i) for i in range(10)])
    eval_path = folder / "evaluator.safetensors"
    evaluator.save(eval_path)

    z = torch.randn(32, bb.latent_dim, generator=torch.Generator().manual_seed(1))
    pre = PreStored.fit(z, ds.labels["digit"], ds.labels["attributes"], None, ["s", "e", "m"], 10)
    pre_path = folder / "prestored.safetensors"
    pre.save(pre_path)

    def load_checkpoint_(path: Path) -> Any:
        return load_checkpoint(path, "heads-checkpoint", **parts(new_heads()), require=("step",))

    def load_shard(path: Path) -> Any:
        return LatentCache(folder_, json.loads(json.dumps(manifest))).load_shard(0)

    targets = [
        Target("backbone", bb_path, Backbone.load),
        Target("heads", heads_path, lambda path: Heads.load(path, bb)),
        Target("heads+path", heads_path, Heads.load),
        Target("checkpoint", ckpt_path, load_checkpoint_),
        Target("shard", shard_path, load_shard),
        Target("evaluator", eval_path, Evaluator.load),
        Target("prestored", pre_path, PreStored.load),
    ]
    for t in targets:
        t.data = t.path.read_bytes()
    return targets


# ---------------------------------------------------------------- mutations
def split(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(safetensors header JSON, data section) of valid file bytes."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    try:
        return json.loads(data[8 : 8 + n]), data[8 + n :]
    except ValueError:
        return None


def join(meta: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(meta).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:20]):
            out += _paths(v, (*prefix, i))
    return out


def _nested(depth: int) -> Any:
    return json.loads("[" * depth + "]" * depth) if depth < 900 else "NESTED"


def _edit(node: Any, rng: random.Random) -> tuple[Any, str]:
    """``node`` with one random field replaced, deleted or added; (new node, what was done)."""
    paths = _paths(node)
    path = rng.choice(paths)
    value: Any = rng.choice(HOSTILE) if rng.random() < 0.9 else _nested(rng.choice([70, 500]))
    what = rng.random()
    if not path:
        return value, f"whole -> {_show(value)}"
    parent = node
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if what < 0.15 and isinstance(parent, dict):
        del parent[last]
        return node, f"del {'.'.join(map(str, path))}"
    if what < 0.25 and isinstance(parent[last], dict):
        parent[last]["fuzz"] = value
        return node, f"add {'.'.join(map(str, path))}.fuzz = {_show(value)}"
    if what < 0.35 and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
        value = parent[last] * rng.choice([2, 10, 1000, -1, 10**6])
    parent[last] = value
    return node, f"{'.'.join(map(str, path))} = {_show(value)}"


def _show(value: Any) -> str:
    text = json.dumps(value) if value != "NESTED" else "[[[...]]]"
    return text if len(text) < 40 else text[:37] + "..."


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of valid file bytes: (description, mutated bytes)."""
    parts = split(data)
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    kind = rng.choices(
        ["bitflip", "overwrite", "truncate", "insert", "length", "json", "entry", "nest"],
        weights=[4, 2, 1, 1, 1, 6, 3, 1],
    )[0]
    buf = bytearray(data)
    if kind == "bitflip":
        flips = rng.randint(1, 4)
        for _ in range(flips):
            end = 8 + n if rng.random() < 0.6 else len(buf)
            i = rng.randrange(min(end, len(buf)))
            buf[i] ^= 1 << rng.randrange(8)
        return f"bitflip x{flips}", bytes(buf)
    if kind == "overwrite":
        i = rng.randrange(len(buf))
        k = rng.randint(1, 16)
        buf[i : i + k] = bytes(rng.randrange(256) for _ in range(k))
        return f"overwrite {k} at {i}", bytes(buf[: len(data)])
    if kind == "truncate":
        i = rng.randrange(len(buf))
        return f"truncate at {i}", bytes(buf[:i])
    if kind == "insert":
        i = rng.randrange(len(buf) + 1)
        k = rng.randint(1, 16)
        return f"insert {k} at {i}", bytes(buf[:i]) + bytes(rng.randrange(256) for _ in range(k)) + bytes(
            buf[i:]
        )
    if kind == "length":
        value = rng.choice([0, 1, n - 1, n + 1, n * 2, 2**40, 2**64 - 1, rng.randrange(2**64)])
        return f"length {value}", struct.pack("<Q", value) + data[8:]
    if parts is None:
        return "unchanged", data
    meta, body = parts
    if kind in ("json", "nest"):
        header = json.loads(meta["__metadata__"]["flowcond"])
        if kind == "nest":
            path = rng.choice(_paths(header)[1:] or [("fuzz",)])
            parent = header
            for p in path[:-1]:
                parent = parent[p]
            depth = rng.choice([65, 200, 5000, 100_000])
            parent[path[-1]] = "@@NEST@@"
            text = json.dumps(header).replace('"@@NEST@@"', "[" * depth + "]" * depth)
            meta["__metadata__"]["flowcond"] = text
            return f"nest {depth} at {'.'.join(map(str, path))}", join(meta, body)
        header, what = _edit(header, rng)
        meta["__metadata__"]["flowcond"] = json.dumps(header)
        return f"json {what}", join(meta, body)
    # an edit of the safetensors entries: a tensor's dtype, shape, offsets or name
    names = [k for k in meta if k != "__metadata__"]
    if not names:
        return "unchanged", data
    name = rng.choice(names)
    entry = meta[name]
    what = rng.choice(["dtype", "shape", "offsets", "rename", "delete", "metadata", "outer-nest"])
    if what == "dtype":
        entry["dtype"] = rng.choice(["F16", "F64", "I64", "U8", "BOOL", "X9", 5, None])
    elif what == "shape":
        entry["shape"] = rng.choice(
            [[], [0], [10**9], [-1], [1, 1, 1], "3", entry["shape"][::-1], [*entry["shape"], 1], [2**62, 4]]
        )
    elif what == "offsets":
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            [[b, a], [a, b + 4], [a + 4, b + 4], [0, 2**62], [a], "x", [-1, b]]
        )
    elif what == "rename":
        meta[name + "x"] = meta.pop(name)
    elif what == "delete":
        del meta[name]
    elif what == "metadata":
        meta["__metadata__"] = rng.choice([None, "x", {}, {"flowcond": 5}, {"flowcond": "{"}])
    else:
        meta["__metadata__"]["fuzz"] = "@@NEST@@"
        text = json.dumps(meta).replace('"@@NEST@@"', "[" * 5000 + "]" * 5000).encode()
        return "entry outer-nest", struct.pack("<Q", len(text)) + text + body
    return f"entry {what} {name}", join(meta, body)


# ---------------------------------------------------------------- running
class CaseTimeout(BaseException):
    """A case ran past its time limit (a BaseException, so that no ``except Exception`` eats it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout()


def _address_space() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_case(target: Target, data: bytes, timeout: float) -> tuple[str, str]:
    """Write ``data`` where ``target`` loads from, load it; (outcome, detail)."""
    from flowcond.errors import FlowcondError

    target.path.write_bytes(data)
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    vm = _address_space()
    try:
        if vm is not None:
            soft = vm + MEMORY_BUDGET
            if old_limit[1] != resource.RLIM_INFINITY:
                soft = min(soft, old_limit[1])
            resource.setrlimit(resource.RLIMIT_AS, (soft, old_limit[1]))
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            target.load(target.path)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            resource.setrlimit(resource.RLIMIT_AS, old_limit)
        return "loaded", ""
    except CaseTimeout:
        return "timeout", f"more than {timeout:g} s"
    except MemoryError as e:
        return "memory", f"MemoryError {e}"
    except FlowcondError as e:
        return type(e).__name__, str(e)[:300]
    except Exception as e:
        if "can't allocate memory" in str(e) or "not enough memory" in str(e):
            return "memory", str(e)[:300]
        return f"other:{type(e).__name__}", f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        target.path.write_bytes(target.data)


def fuzz(
    targets: list[Target],
    iterations: int,
    seed: int = 0,
    timeout: float = 10.0,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """``iterations`` mutated loads, round-robin over ``targets``, seeded."""
    rng = random.Random(seed)
    report = Report()
    for t in targets:  # warm up (thread pools, lazy imports) outside any limit; must load
        t.load(t.path)
    for i in range(iterations):
        target = targets[i % len(targets)]
        mutation, data = mutate(target.data, rng)
        t0 = time.perf_counter()
        outcome, detail = run_case(target, data, timeout)
        report.add(target.name, mutation, outcome, detail, time.perf_counter() - t0)
        if progress:
            progress(i)
    return report


def main(argv: list[str] | None = None) -> int:
    import tempfile
    import warnings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--kinds", default="", help="comma-separated file kinds (default: all)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        targets = make_targets(Path(tmp))
        if args.kinds:
            wanted = set(args.kinds.split(","))
            targets = [t for t in targets if t.name in wanted]
        print(f"files written in {time.perf_counter() - t0:.1f} s; {args.iterations} cases, seed {args.seed}")
        report = fuzz(targets, args.iterations, args.seed, args.timeout)
    print(report.table())
    per_case = 1000 * report.seconds / max(report.cases, 1)
    print(
        f"{report.cases} cases in {report.seconds:.1f} s ({per_case:.1f} ms per case; slowest "
        f"{report.slowest[0] * 1000:.0f} ms: {report.slowest[1]}, {report.slowest[2]})"
    )
    for target, c in report.loaded_after.items():
        print(f"{target} loaded after: {', '.join(f'{k} {v}' for k, v in c.most_common())}")
    for target, mutation, outcome, detail in report.failures[:50]:
        print(f"FAIL {target}: {mutation}: {outcome}: {detail}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
