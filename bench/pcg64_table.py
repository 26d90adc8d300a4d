#!/usr/bin/env python
"""Rebuild BENCHMARKS.md's LoRA-dropout table (PCG64 masks against torch's) from bench_training.py's JSON files.

    python bench/pcg64_table.py bench/results/2026-12-06d --check BENCHMARKS.md

Reads every pcg64-*.json in the folder: one bench_training.py run each, `--variants ours,ours_no_pcg64` in
alternating orders on one quiet machine; a row per run and the mean ratio over the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tables import check_rows


def rows(folder: Path) -> list[str]:
    lines, ratios = [], []
    for path in sorted(folder.glob("pcg64-*.json")):
        results = json.loads(path.read_text(encoding="utf-8"))["results"]
        pcg64, torch_masks = results["ours"], results["ours_no_pcg64"]
        ratios.append(torch_masks["seconds_per_step"] / pcg64["seconds_per_step"])
        order = " then ".join(name for name in results)
        lines.append(f"| {path.name} | {order} | {pcg64['seconds_per_step']:.2f} | {torch_masks['seconds_per_step']:.2f} | "
                     f"{ratios[-1]:.2f}x | {pcg64['peak_memory_gib']:.2f} / {torch_masks['peak_memory_gib']:.2f} |")
    lines.append(f"| mean of {len(ratios)} runs | | | | {statistics.mean(ratios):.2f}x "
                 f"(range {min(ratios):.2f}-{max(ratios):.2f}x) | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--check", default=None)
    args = parser.parse_args()
    check_rows(rows(args.results), args.check)


if __name__ == "__main__":
    main()
