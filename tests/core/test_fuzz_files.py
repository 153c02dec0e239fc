"""Seeded byte mutations of valid flowcond files: every outcome is a load or a flowcond error.

The engine is ``benchmarks/fuzz_files.py`` (which runs thousands of cases and prints figures);
here a few hundred cases, 60 per kind of file: backbone, heads (with the backbone given or
found from the recorded path), attach checkpoint, latent-cache shard, evaluator, pre-stored
features. A case fails on any exception that is not a FlowcondError, on running past its time
limit, or on an allocation beyond its address-space budget.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES_PER_KIND = 60
KINDS = ["backbone", "heads", "heads+path", "checkpoint", "shard", "evaluator", "prestored"]


def _engine():
    spec = importlib.util.spec_from_file_location("fuzz_files", ROOT / "benchmarks" / "fuzz_files.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fuzz_files = _engine()


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> dict[str, object]:
    return {t.name: t for t in fuzz_files.make_targets(tmp_path_factory.mktemp("fuzz"))}


def test_the_valid_files_load(targets):
    assert sorted(targets) == sorted(KINDS)
    for t in targets.values():
        assert fuzz_files.run_case(t, t.data, timeout=30) == ("loaded", "")


@pytest.mark.parametrize("kind", KINDS)
def test_mutated_files_load_or_raise_flowcond_errors(targets, kind):
    report = fuzz_files.fuzz([targets[kind]], CASES_PER_KIND, seed=KINDS.index(kind), timeout=10)
    failures = "\n".join(f"{m}: {o}: {d}" for _, m, o, d in report.failures)
    assert not report.failures, failures
    assert report.cases == CASES_PER_KIND
    assert report.counts[kind]["FileFormatError"] > CASES_PER_KIND // 2  # the mutations do bite


def test_mutations_are_seeded_and_cover_every_kind(targets):
    data = targets["heads"].data
    first = [fuzz_files.mutate(data, random.Random(3))[0] for _ in range(1)]
    assert first == [fuzz_files.mutate(data, random.Random(3))[0]]
    kinds = {fuzz_files.mutate(data, random.Random(i))[0].split()[0] for i in range(300)}
    assert {"bitflip", "overwrite", "truncate", "insert", "length", "json", "entry", "nest"} <= kinds


def test_a_case_past_its_time_limit_or_memory_budget_is_a_failure(targets, monkeypatch):
    import time

    t = fuzz_files.Target(
        "slow", targets["backbone"].path, lambda path: time.sleep(5), targets["backbone"].data
    )
    assert fuzz_files.run_case(t, t.data, timeout=0.2)[0] == "timeout"
    t.load = lambda path: bytearray(8 << 30)  # more than the budget
    assert fuzz_files.run_case(t, t.data, timeout=10)[0] == "memory"
    t.load = lambda path: {}["missing"]
    assert fuzz_files.run_case(t, t.data, timeout=10)[0] == "other:KeyError"
    assert fuzz_files.is_failure("other:KeyError") and not fuzz_files.is_failure("FileFormatError")
