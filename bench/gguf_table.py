#!/usr/bin/env python
"""Rebuild BENCHMARKS.md's GGUF round-trip table from bench/gguf_roundtrip.py's JSON, and check it.

    python bench/gguf_table.py bench/results/2026-12-06c/gguf-smollm2.json --check BENCHMARKS.md

--check fails (exit 1) unless every row printed here appears, as is, in the given file (as generation_table.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tables import check_rows


def count(share: float, n: int) -> str:
    return f"{round(share * n)}/{n}"


def rows(results: dict) -> list[str]:
    n = results["n"]
    lines = []
    for kind, figures in results["types"].items():
        tf, cpp = figures["transformers"], figures["llama_cpp"]
        lines.append(f"| {kind} | {figures['file_bytes'] / 1e6:.1f} MB | {figures['export_seconds']:.1f} | "
                     f"{tf['max_abs_logit_diff']:.3g} ({tf['relative_logit_diff']:.2%}) | "
                     f"{count(tf['greedy_same_as_merged_share'], n)} | {count(cpp['prompt_tokens_equal_share'], n)} | "
                     f"{count(cpp['greedy_same_as_transformers_share'], n)} | {count(cpp['greedy_same_as_merged_share'], n)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    parser.add_argument("--check", default=None)
    args = parser.parse_args()
    check_rows(rows(json.loads(Path(args.results).read_text(encoding="utf-8"))), args.check)


if __name__ == "__main__":
    main()
