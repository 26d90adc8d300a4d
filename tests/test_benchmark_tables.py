"""BENCHMARKS.md's tables are rebuilt from the committed raw results by the bench scripts, and must match."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT

CHECKS = [
    ("bench/generation_table.py", "bench/results/2026-12-06"),
    ("bench/generation_table.py", "bench/results/2026-12-06/startup-fix"),
    ("bench/generation_table.py", "bench/results/2026-12-06/prefix-only"),
    ("bench/precision_and_floor_tables.py", "bench/results/2026-12-06b"),
    ("bench/gguf_table.py", "bench/results/2026-12-06c/gguf-smollm2.json"),
    ("bench/pcg64_table.py", "bench/results/2026-12-06d"),
]


@pytest.mark.parametrize("script,results", CHECKS, ids=[f"{s.split('/')[-1]}:{r.split('/', 2)[-1]}" for s, r in CHECKS])
def test_benchmark_table_rebuilds_from_its_raw_results(script, results):
    result = subprocess.run([sys.executable, script, results, "--check", "BENCHMARKS.md"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_a_table_with_no_rows_fails_the_check(tmp_path):
    """An empty results folder must not pass as "all rows match": the check fails on a table that has no row."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        from tables import check_rows
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("| a | b |\n|---|---:|\n| x | 1 |\n", encoding="utf-8")
    check_rows(["| a | b |", "|---|---:|", "| x | 1 |"], markdown)  # passes
    with pytest.raises(SystemExit, match="no results gave a row of the table"):
        check_rows(["| a | b |", "|---|---:|", ""], markdown)
    with pytest.raises(SystemExit, match="row\\(s\\) differ"):
        check_rows(["| a | b |", "|---|---:|", "| x | 2 |"], markdown)
