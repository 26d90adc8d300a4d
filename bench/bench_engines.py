#!/usr/bin/env python
"""Each engine with 1 and with 2 processes: training tokens/s (scaling efficiency) and memory per process.

Runs `accelerate launch --config_file configs/accelerate/<engine>_cpu.yaml --num_processes N training_script.py ...`
as a user would, then reads what the run folder records: train_log.jsonl (real tokens/s per step, summed over
the processes), eval_results.json (peak resident memory per process, and the bytes of weights and optimizer
states each process holds, counted tensor by tensor).

    python bench/make_bench_model.py --data ../shared/data/alpaca_data.json --output_dir /tmp/llama-34m \\
        --hidden_size 512 --num_layers 8 --num_heads 8 --num_kv_heads 8 --intermediate_size 1408 --vocab_size 8192
    python bench/bench_engines.py --model /tmp/llama-34m --data ../shared/data/alpaca_data.json --json_out engines.json

Every process gets one thread (OMP_NUM_THREADS=1): 2 processes use 2 cores, 1 process 1 core, so the
efficiency is per-core weak scaling (the per-process batch is fixed; 2 processes train twice the tokens per step).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"ddp": "ddp_cpu.yaml", "fsdp": "fsdp_cpu.yaml", "zero2": "deepspeed_zero2_cpu.yaml",
           "zero3": "deepspeed_zero3_cpu.yaml"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(engine: str, processes: int, args, work: Path) -> dict:
    output = work / f"{engine}-{processes}"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" / CONFIGS[engine]),
               "--num_processes", str(processes), "--main_process_port", str(free_port()),
               "training_script.py", "--base_model", args.model, "--data_path", args.data, "--output_dir", str(output),
               "--max_samples", "2000", "--val_set_size", "0", "--max_steps", str(args.steps), "--logging_steps", "1",
               "--per_device_train_batch_size", str(args.batch_size), "--max_seq_length", str(args.max_seq_length),
               "--quantization", args.quantization, "--save_strategy", "no", "--eval_strategy", "no",
               "--learning_rate", "1e-4", "--dataloader_num_workers", "0", "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    load_before = load_average()
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        return {"engine": engine, "processes": processes, "failed": result.stderr[-1500:]}
    rows = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row and row["step"] > args.warmup]
    results = json.loads((output / "eval_results.json").read_text())
    held = results["memory_held_per_process"]
    return {
        "engine": engine, "processes": processes,
        "tokens_per_second": statistics.mean(row["tokens_per_second"] for row in steps),
        "peak_rss_gib": results["peak_memory_gib_per_process"],
        "parameters_mib": [h["parameters_mib"] for h in held],
        "trainable_mib": [h["trainable_parameters_mib"] for h in held],
        "optimizer_states_mib": [h["optimizer_states_mib"] for h in held],
        "seconds": round(seconds, 1), "load_before": load_before, "load_after": load_average(),
    }


def table(rows: list[dict]) -> str:
    lines = ["| engine | processes | real tok/s (all processes) | scaling efficiency | peak RSS per process (GiB) | "
             "weights held per process (MiB) | AdamW states per process (MiB) | load average before -> after |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    one = {row["engine"]: row for row in rows if row["processes"] == 1 and "failed" not in row}
    for row in rows:
        if "failed" in row:
            lines.append(f"| {row['engine']} | {row['processes']} | failed | | | | | |")
            continue
        base = one.get(row["engine"])
        efficiency = (f"{row['tokens_per_second'] / (row['processes'] * base['tokens_per_second']):.0%}"
                      if base and row["processes"] > 1 else "")
        lines.append(f"| {row['engine']} | {row['processes']} | {row['tokens_per_second']:,.0f} | {efficiency} | "
                     f"{' / '.join(f'{v:.2f}' for v in row['peak_rss_gib'])} | "
                     f"{' / '.join(f'{v:.1f}' for v in row['parameters_mib'])} | "
                     f"{' / '.join(f'{v:.2f}' for v in row['optimizer_states_mib'])} | "
                     f"{row['load_before']} -> {row['load_after']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--engines", default="ddp,fsdp,zero2,zero3")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--json_out")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as work:
        for engine in args.engines.split(","):
            for processes in (int(n) for n in args.processes.split(",")):
                row = run(engine, processes, args, Path(work))
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
