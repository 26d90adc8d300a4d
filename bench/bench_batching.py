#!/usr/bin/env python
"""Batched vs one-prompt-at-a-time generation, on the same prompts and settings (greedy).

    python bench/bench_batching.py                               # stories260K, 64 Alpaca prompts, batch 16
    python bench/bench_batching.py --threads 1 --max_new_tokens 128
    python bench/bench_batching.py --adapter runs/my-run         # the base named by the adapter, adapter on
    python bench/bench_batching.py --base_model <dir> --quantization nf4 --compute_dtype bf16 --cpu_kernels
                                                                   # bitsandbytes' packed CPU kernel vs dequantize

Both ways go through alpaca_qlora.generate.generate_answers (left padding, KV cache), the batched one
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

from alpaca_qlora.data.tokenization import encode_text  # noqa: E402
from alpaca_qlora.generation import generate  # noqa: E402
from alpaca_qlora.generation.batch import plan_batches  # noqa: E402
from alpaca_qlora.generation.settings import GenerationSettings, resolve_settings  # noqa: E402
from alpaca_qlora.generation.source import InferenceModelArguments, resolve_model_source  # noqa: E402
from alpaca_qlora.run_folder import cpu_name, library_versions  # noqa: E402

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
    parser.add_argument("--compute_dtype", default=None, choices=("auto", "bf16", "fp16", "fp32"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cpu_kernels", action="store_true",
                        help="instead: batched generation with bitsandbytes' packed AVX512-BF16 kernel forbidden, then allowed")
    return parser.parse_args()


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def run_batches(model, tokenizer, prompts: list[str], batches: list[list[int]], settings: dict) -> list:
    answers = [None] * len(prompts)
    for batch in batches:
        for i, answer in zip(batch, generate.generate_answers(model, tokenizer, [prompts[i] for i in batch], settings)):
            answers[i] = answer
    return answers


def compare_cpu_kernels(model, tokenizer, prompts: list[str], batches: list[list[int]], settings: dict) -> None:
    """The same batches with bitsandbytes' packed bf16 kernel forbidden, then allowed (where the widths fit)."""
    from alpaca_qlora.modeling import set_packed_cpu_kernel

    results = {}
    for allowed in (False, True):  # forbidden first: the repack happens in place at the first allowed call
        set_packed_cpu_kernel(model, allowed)
        run_batches(model, tokenizer, prompts, batches[:1], settings)  # warm-up (and the repack)
        results[allowed] = timed(lambda: run_batches(model, tokenizer, prompts, batches, settings))
    tokens = {allowed: sum(a.new_tokens for a in answers) for allowed, (answers, _) in results.items()}
    agree = sum(a == b for a, b in zip(results[True][0], results[False][0]))
    for allowed, label in ((True, "packed kernel allowed"), (False, "dequantize + matmul ")):
        seconds = results[allowed][1]
        print(f"{label}: {seconds:7.2f} s  {tokens[allowed] / seconds:8.1f} answer tokens/s")
    print(f"packed / dequantize: {results[False][1] / results[True][1]:.2f}x; identical answers: {agree}/{len(prompts)}")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_args = InferenceModelArguments(base_model=None if args.adapter else args.base_model, adapter=args.adapter,
                                quantization=args.quantization, compute_dtype=args.compute_dtype)
    source = resolve_model_source(model_args)
    model, tokenizer = generate.load_for_inference(source)
    records = json.loads(Path(args.data_path).read_text(encoding="utf-8"))[: args.num_prompts]
    prompts = [generate.prompt_for(record, source.prompt_template, tokenizer) for record in records]
    settings = resolve_settings(GenerationSettings(max_new_tokens=args.max_new_tokens))
    batches = plan_batches([len(encode_text(tokenizer, prompt)) for prompt in prompts], args.batch_size)
    device = generate.describe_device(model)
    print(f"model: {source.base_model}" + (f" + adapter {source.adapter}" if source.adapter else "")
          + f" ({source.quantization} weights, {source.compute_dtype} compute) on {device}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch thread(s), {platform.platform()}")
    print("versions: " + ", ".join(f"{name} {version}" for name, version in library_versions().items()))
    print(f"{len(prompts)} Alpaca prompts, greedy, max_new_tokens {args.max_new_tokens}, batch {args.batch_size}")
    if args.cpu_kernels:
        compare_cpu_kernels(model, tokenizer, prompts, batches, settings)
        return
    generate.generate_answers(model, tokenizer, prompts[:2], settings)  # warm-up

    sequential, sequential_s = timed(lambda: [generate.generate_answers(model, tokenizer, [p], settings)[0] for p in prompts])
    batched, batched_s = timed(lambda: run_batches(model, tokenizer, prompts, batches, settings))
    tokens = sum(answer.new_tokens for answer in sequential)
    agree = sum(a == b for a, b in zip(sequential, batched))
    print(f"{tokens} answer tokens in all")
    print(f"one at a time:  {sequential_s:7.2f} s  {tokens / sequential_s:8.1f} answer tokens/s")
    print(f"batch of {args.batch_size:<4}:  {batched_s:7.2f} s  {tokens / batched_s:8.1f} answer tokens/s")
    print(f"speed-up: {sequential_s / batched_s:.1f}x; identical answers: {agree}/{len(prompts)}")


if __name__ == "__main__":
    main()
