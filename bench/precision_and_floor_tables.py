#!/usr/bin/env python
"""Rebuild BENCHMARKS.md's like-for-like precision tables (training) and the small workload's generation floor from
the committed results, and check them.

    python bench/precision_and_floor_tables.py bench/results/2026-12-06b
    python bench/precision_and_floor_tables.py bench/results/2026-12-06b --check BENCHMARKS.md

Reads what bench_training.py wrote: training-speed.json (variants' speed, one run), training-speed-gradients.json
(--check_gradients) and training-learning.json (--learning); and floor-small.json (bench/generation_floor.py).
--check fails (exit 1) unless every row printed here appears, as is, in the given file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tables import check_rows

NAMES = {"stock": "stock fp32", "stock_bf16": "stock bf16 (autocast + bf16 4-bit layers)",
         "stock_bf16_matmul": "stock bf16 4-bit layers, no autocast", "ours": "ours (default: bf16 4-bit layers)",
         "ours_fp32": "ours fp32", "stock_random": "stock fp32", "stock_bf16_random": "stock bf16 (autocast + bf16 4-bit layers)"}


def gradient_rows(results: dict) -> list[str]:
    """Each of our precisions against stock fp32 (and against stock's loss in float64), beside stock bf16's own distance."""
    rows = []
    for check, label in (("check_gradients_fp32", "ours fp32"), ("check_gradients", "ours default (bf16 4-bit layers)"),
                         ("check_gradients_bf16_autocast", "ours with bf16 autocast")):
        r = results[check]
        rows.append(f"| {label} | {r['worst_relative_grad_difference']:.3g} | "
                    f"{r['worst_relative_grad_difference_vs_float64_loss']:.3g} | {r['loss_ours']:.5f} |")
    r = results["check_gradients"]
    rows.append(f"| stock bf16 (autocast + bf16 4-bit layers) | {r['stock_bf16_worst_relative_grad_difference']:.3g} | "
                f"{r['stock_bf16_worst_relative_grad_difference_vs_float64_loss']:.3g} | {r['loss_stock_bf16']:.5f} |")
    rows.append(f"| stock fp32 (the reference) | 0 | - | {r['loss_stock']:.5f} (float64 loss {r['loss_stock_float64']:.5f}) |")
    return rows


def learning_rows(results: dict) -> list[str]:
    variants = dict.fromkeys(key.partition(":")[0] for key in results)
    rows = []
    for variant in variants:
        losses = [results[key]["heldout_loss"] for key in results if key.partition(":")[0] == variant and results[key]]
        seeds = [key.partition(":")[2] for key in results if key.partition(":")[0] == variant and results[key]]
        rows.append(f"| {NAMES.get(variant, variant)} (`{variant}`) | {' / '.join(f'{loss:.4f}' for loss in losses)} | "
                    f"{sum(losses) / len(losses):.4f} | {', '.join(seeds)} |")
    return rows


def speed_rows(results: dict) -> list[str]:
    stock = {name: r for name, r in results.items() if r and name.startswith("stock")}
    best = max(stock, key=lambda name: stock[name]["real_tokens_per_s"])
    rows = []
    for name, r in results.items():
        if not r:
            continue
        ratio = r["real_tokens_per_s"] / stock[best]["real_tokens_per_s"]
        memory = r["peak_memory_gib"] / stock[best]["peak_memory_gib"]
        rows.append(f"| {NAMES.get(name, name)} (`{name}`){' (best stock)' if name == best else ''} | "
                    f"{r['real_tokens_per_s']:,.0f} | {r['seconds_per_step']:.2f} | {r['peak_memory_gib']:.2f} | "
                    f"{ratio:.2f}x | {memory:.2f}x |")
    return rows


def floor_rows(floor: dict) -> list[str]:
    parts = (("start-up (import torch, transformers)", "startup_s"), ("load tokenizer and model", "load_s"),
             (f"prefill of the {floor['prompt_tokens']:,} prompt tokens, one sequence", "prefill_s"),
             (f"decode: {floor['answer_tokens']:,} answer tokens, rows dropped as they end", "decode_s"),
             ("**floor, in all**", "floor_s"))
    return [f"| {label} | {floor[key]:.1f} |" for label, key in parts]


def tables(folder: Path) -> list[str]:
    lines = []
    floor = folder / "floor-small.json"
    if floor.is_file():
        lines += ["| part of the small workload (SmolLM2 fp32, 32 prompts, 64 new tokens) | seconds |", "|---|---:|",
                  *floor_rows(json.loads(floor.read_text())), ""]
    speed = folder / "training-speed.json"
    if speed.is_file():
        lines += ["| variant | real tok/s | s/step | peak RSS (GiB) | speed / best stock | memory / best stock |",
                  "|---|---:|---:|---:|---:|---:|", *speed_rows(json.loads(speed.read_text())["results"]), ""]
    gradients = json.loads((folder / "training-speed-gradients.json").read_text())["results"]
    lines += ["| path | worst tensor vs stock fp32 | vs stock fp32 with the loss in float64 | loss of the batch |",
              "|---|---:|---:|---:|", *gradient_rows(gradients), ""]
    learning = json.loads((folder / "training-learning.json").read_text())["results"]
    lines += ["| variant | held-out loss, seed 1 / seed 2 | mean | seeds |", "|---|---:|---:|---|", *learning_rows(learning)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--check", type=Path, help="a markdown file that must hold every row, as is")
    args = parser.parse_args()
    check_rows(tables(args.folder), args.check)


if __name__ == "__main__":
    main()
