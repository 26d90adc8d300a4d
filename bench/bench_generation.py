#!/usr/bin/env python
"""Batched vs one-prompt-at-a-time generation, on the same prompts and settings (greedy).

    python bench/bench_generation.py                               # stories260K, 64 Alpaca prompts, batch 16
    python bench/bench_generation.py --threads 1 --max_new_tokens 128
    python bench/bench_generation.py --adapter runs/my-run         # the base named by the adapter, adapter on

Both ways go through alpaca_qlora.generation.generate_answers (left padding, KV cache), the batched one
in the batches batch mode uses (sorted by prompt length). Prints wall times, generated tokens per
second, the speed-up, whether the answers agree, the machine and the library versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from alpaca_qlora import generation  # noqa: E402
from alpaca_qlora.batch_generation import plan_batches  # noqa: E402
from alpaca_qlora.generation import GenerationSettings, ModelArguments  # noqa: E402
from alpaca_qlora.run_folder import library_versions  # noqa: E402

SHARED = REPO.parent / "shared"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base_model", default=str(SHARED / "models" / "stories260K-hf"))
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--quantization", default=None, choices=("nf4", "fp4", "int8", "none"))
    parser.add_argument("--data_path", default=str(SHARED / "data" / "alpaca_data.json"))
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser.parse_args()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_args = ModelArguments(base_model=None if args.adapter else args.base_model, adapter=args.adapter, quantization=args.quantization)
    source = generation.resolve_model_source(model_args)
    model, tokenizer = generation.load_for_inference(source)
    records = json.loads(Path(args.data_path).read_text(encoding="utf-8"))[: args.num_prompts]
    prompts = [generation.prompt_for(record, source.prompt_template, tokenizer) for record in records]
    settings = generation.resolve_settings(GenerationSettings(max_new_tokens=args.max_new_tokens))
    generation.generate_answers(model, tokenizer, prompts[:2], settings)  # warm-up

    sequential, sequential_s = timed(lambda: [generation.generate_answers(model, tokenizer, [p], settings)[0] for p in prompts])
    batches = plan_batches([len(ids) for ids in tokenizer(prompts)["input_ids"]], args.batch_size)

    def run_batches():
        answers = [None] * len(prompts)
        for batch in batches:
            for i, answer in zip(batch, generation.generate_answers(model, tokenizer, [prompts[i] for i in batch], settings)):
                answers[i] = answer
        return answers

    batched, batched_s = timed(run_batches)
    tokens = sum(answer.new_tokens for answer in sequential)
    agree = sum(a == b for a, b in zip(sequential, batched))
    device = generation.describe_device(model)
    print(f"model: {source.base_model}" + (f" + adapter {source.adapter}" if source.adapter else "") + f" ({source.quantization} weights) on {device}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch thread(s), {platform.platform()}")
    print("versions: " + ", ".join(f"{name} {version}" for name, version in library_versions().items()))
    print(f"{len(prompts)} Alpaca prompts, greedy, max_new_tokens {args.max_new_tokens}; {tokens} answer tokens in all")
    print(f"one at a time:  {sequential_s:7.2f} s  {tokens / sequential_s:8.1f} answer tokens/s")
    print(f"batch of {args.batch_size:<4}:  {batched_s:7.2f} s  {tokens / batched_s:8.1f} answer tokens/s")
    print(f"speed-up: {sequential_s / batched_s:.1f}x; identical answers: {agree}/{len(prompts)}")


if __name__ == "__main__":
    main()
