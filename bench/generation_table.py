#!/usr/bin/env python
"""Rebuild BENCHMARKS.md's generation table from the committed results, and check it.

    python bench/generation_table.py bench/results/2026-12-06             # print the table
    python bench/generation_table.py bench/results/2026-12-06 --check BENCHMARKS.md

Times come from the JSON files bench_generation.py wrote (generation-*.json); the "identical" column is recounted
from the kept generations (generations/<model>-prompts-N-T/<variant>.jsonl) against the plain script's at batch
16. --check fails (exit 1) unless every row printed here appears, as is, in the given file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tables import check_rows

# bench_generation.py's model names -> the start of the folder name its --keep uses (the model folder's name)
KEPT_FOLDER = {"smollm2": "SmolLM2-135M-Instruct", "stories260K": "stories260K-hf"}


def predictions(path: Path) -> dict:
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {row["id"]: row["prediction"] for row in rows}


def identical(folder: Path, variant: str, reference: str) -> str:
    ours, plain = predictions(folder / f"{variant}.jsonl"), predictions(folder / f"{reference}.jsonl")
    return f"{sum(ours.get(key) == text for key, text in plain.items())}/{len(plain)}"


def rows(results: Path) -> list[str]:
    lines = []
    for path in sorted(results.glob("generation-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for key, summary in data["runs"].items():
            model, workload = key.split("/")
            start = KEPT_FOLDER.get(model, Path(model).name)
            model_dir = next(p for p in (results / "generations").iterdir() if p.name.startswith(start)
                             and summary_matches(p, workload))
            reference = next(name for name in summary if name == "plain_bs16")
            for variant, result in summary.items():
                speedups = " / ".join(f"{result[f'speedup_vs_{plain}']:.2f}x" for plain in ("plain_bs16", "plain_bs64")
                                      if f"speedup_vs_{plain}" in result) or "-"
                lines.append(f"| {model} | {workload} | {variant} | {result['median_seconds']:.1f} | "
                             f"{len(result['runs'])} | {speedups} | {identical(model_dir, variant, reference)} |")
    return lines


def summary_matches(folder: Path, workload: str) -> bool:
    return {"small": "-prompts-32-64", "study": "-prompts-300-96"}[workload] in folder.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    parser.add_argument("--check", default=None)
    args = parser.parse_args()
    table = rows(Path(args.results))
    check_rows(["| model | workload | variant | seconds (median) | runs | ours vs plain bs16 / bs64 | identical to plain bs16 |",
                "|---|---|---|---:|---:|---:|---:|", *table], args.check)


if __name__ == "__main__":
    main()
