#!/usr/bin/env python
"""Rebuild BENCHMARKS.md's GGUF round-trip table from bench/gguf_roundtrip.py's JSON, and check it.

    python bench/gguf_table.py bench/results/2026-12-06c/gguf-smollm2.json --check BENCHMARKS.md

--check fails (exit 1) unless every row printed here appears, as is, in the given file (as generation_table.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    table = rows(json.loads(Path(args.results).read_text(encoding="utf-8")))
    print("\n".join(table))
    if args.check:
        text = Path(args.check).read_text(encoding="utf-8")
        missing = [line for line in table if line not in text]
        if missing:
            sys.exit(f"{args.check}: {len(missing)} row(s) differ from the results, e.g.\n{missing[0]}")
        print(f"{args.check}: all {len(table)} rows match")


if __name__ == "__main__":
    main()
