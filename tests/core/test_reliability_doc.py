"""docs/reliability.md: every row names a test, and every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_row_of_the_reliability_table_names_existing_tests():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert len(rows) > 60
    last_file = None
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        refs = re.findall(r"`([\w/]+\.py)?(?:::(\w+))?`", cells[-1])
        refs = [(f, t) for f, t in refs if f or t]
        assert refs or cells[-1] == "same test", f"row without a test: {row[:80]}"
        for file, test in refs:
            if file:
                last_file = file
            path = ROOT / ("benchmarks" if file and file.startswith("benchmarks") else "tests")
            path = ROOT / file if file and file.startswith("benchmarks") else path / (last_file or "")
            assert path.is_file(), f"{path} (row: {row[:60]})"
            if test:
                assert re.search(rf"def {test}\b", path.read_text()), f"{file or last_file}::{test}"
