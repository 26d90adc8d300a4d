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
