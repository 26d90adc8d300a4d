#!/usr/bin/env python
"""Training throughput and memory: ours against the plain HF Trainer + peft QLoRA baseline.

Both variants run in separate child processes of this one (so peak memory is per variant), on the
same records, tokenization, model, sequence cap, batch and number of steps:
  baseline  HF Trainer + peft QLoRA (NF4, double quant, r16 all-linear), prompt masked, batches
            padded to their longest member by DataCollatorForSeq2Seq, gradient checkpointing
            (what alpaca-lora / qlora users write);
  ours      training_script.py's own training path with its defaults (alpaca_qlora.train).
Warm-up steps are excluded; tokens/s is the median over windows of timed steps.

    python bench/bench_training.py --model ../shared/models/stories260K-hf --data ../shared/data/alpaca_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from alpaca_qlora.collators import REAL_TOKENS_KEY  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.4  # H100 / H200 SXM spec sheet, dense bf16

# Our training path with one option changed: each is a candidate optimisation measured against "ours".
OUR_VARIANTS = {
    "ours": [],
    "ours_compile": ["--torch_compile", "true"],
    "ours_varlen": ["--attn_implementation", "packed_varlen"],
    "ours_liger": ["--use_liger_kernel", "true"],
    "ours_no_checkpointing": ["--gradient_checkpointing", "false"],
    "ours_checkpointing": ["--gradient_checkpointing", "true"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO_ROOT.parent / "shared/models/stories260K-hf"))
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared/data/alpaca_data.json"))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=14, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--window", type=int, default=3, help="steps per timing window")
    parser.add_argument("--variants", default="baseline,ours", help=f"any of baseline, ours_full_logits, {', '.join(OUR_VARIANTS)}")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child processes
    parser.add_argument("--peak_tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="GPU peak for MFU")
    parser.add_argument("--extra", default="", help="extra training_script flags for 'ours', space separated")
    parser.add_argument("--json_out", help="also write the results as JSON here")
    parser.add_argument("--variant_timeout", type=float, default=None, help="seconds after which a variant is stopped and reported failed")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# Measurement shared by both variants
# ------------------------------------------------------------------------------------------------
class CountingCollator:
    """Wraps a collator and records (tensor tokens, real tokens, trained tokens) of every batch, in order."""

    def __init__(self, inner):
        self.inner = inner
        self.counts = []

    def __call__(self, examples):
        batch = self.inner(examples)
        total = batch["input_ids"].numel()
        real = int(batch[REAL_TOKENS_KEY]) if REAL_TOKENS_KEY in batch else int(batch["attention_mask"].sum())
        trained = int((batch["labels"][:, 1:] != -100).sum())
        self.counts.append((total, real, trained))
        return batch


def timing_callback():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    return StepTimes()


def matmul_parameters(model) -> int:
    """N for MFU: weights of every Linear (quantized ones counted by shape), lm_head included."""
    import torch

    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not any(k in type(module).__name__.lower() for k in ("lora",)):
            total += module.in_features * module.out_features
    return total


def summarise(counts, ends, args, n_matmul: int) -> dict:
    import torch

    durations = [b - a for a, b in zip(ends, ends[1:])]
    steps = list(range(args.warmup, min(len(durations), len(counts))))
    windows = [steps[i : i + args.window] for i in range(0, len(steps) - args.window + 1, args.window)]
    rate = lambda key, w: sum(counts[s][key] for s in w) / sum(durations[s] for s in w)  # noqa: E731
    total = sum(counts[s][0] for s in steps)
    real = sum(counts[s][1] for s in steps)
    result = {
        "trained_tokens_per_s": statistics.median(rate(2, w) for w in windows),
        "real_tokens_per_s": statistics.median(rate(1, w) for w in windows),
        "padding_share": (total - real) / total,
        "seconds_per_step": statistics.median(durations[s] for s in steps),
        "steps_timed": len(steps),
        "step_seconds": [round(durations[s], 3) for s in steps],
        "step_trained_tokens": [counts[s][2] for s in steps],
        "matmul_params": n_matmul,
    }
    if torch.cuda.is_available():
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["mfu"] = 4 * n_matmul * result["real_tokens_per_s"] / (args.peak_tflops * 1e12)
    else:
        result["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def our_config(args, output_dir: str, extra: list[str]):
    from alpaca_qlora.config import parse_training_config

    n_steps = args.warmup + args.steps
    return parse_training_config([
        "--base_model", args.model, "--data_path", args.data, "--output_dir", output_dir,
        "--max_samples", str(args.batch_size * n_steps), "--val_set_size", "0",
        "--max_seq_length", str(args.max_seq_length), "--per_device_train_batch_size", str(args.batch_size),
        "--max_steps", str(n_steps), "--save_strategy", "no", "--logging_steps", "1000", "--disable_tqdm", "true",
        *extra,
    ])


# ------------------------------------------------------------------------------------------------
# The two variants (each runs in its own process)
# ------------------------------------------------------------------------------------------------
def run_baseline(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from alpaca_qlora.train import prepare_data

    with tempfile.TemporaryDirectory() as tmp:
        config = our_config(args, tmp, [])
        data = prepare_data(config)  # the same tokenized examples as ours: only the training loop differs
        on_gpu = torch.cuda.is_available()
        dtype = torch.bfloat16 if on_gpu else torch.float32
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=quant, dtype=dtype,
                                                     device_map={"": 0} if on_gpu else None)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        collator = CountingCollator(DataCollatorForSeq2Seq(data.tokenizer, padding="longest", label_pad_token_id=-100))
        timer = timing_callback()
        training_args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
            learning_rate=2e-4, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
            logging_steps=1000, save_strategy="no", report_to="none", remove_unused_columns=False, disable_tqdm=True,
            optim="paged_adamw_8bit" if on_gpu else "adamw_torch", bf16=on_gpu, dataloader_pin_memory=on_gpu,
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=data.train_examples, data_collator=collator,
                          callbacks=[timer])
        trainer.train()
        return summarise(collator.counts, timer.ends, args, matmul_parameters(model))


def run_ours_full_logits(args) -> dict:
    """Ours with the model's own full-vocabulary loss: isolates what chunked_loss.py brings."""
    import alpaca_qlora.train

    alpaca_qlora.train.install_hidden_states_head = lambda model: None
    return run_ours(args)


def run_ours(args, flags: list[str] = ()) -> dict:
    from alpaca_qlora.train import build_model, build_trainer, prepare_data

    with tempfile.TemporaryDirectory() as tmp:
        config = our_config(args, tmp, [*flags, *args.extra.split()])
        data = prepare_data(config)
        model, collator = build_model(config, data)
        counting = CountingCollator(collator)
        trainer = build_trainer(config, data, model, counting)
        timer = timing_callback()
        trainer.add_callback(timer)
        trainer.train()
        return summarise(counting.counts, timer.ends, args, matmul_parameters(model))


# ------------------------------------------------------------------------------------------------
# The parent: run each variant, print the table and ratios
# ------------------------------------------------------------------------------------------------
def environment() -> dict:
    import torch
    from alpaca_qlora.run_folder import library_versions

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return {"device": device, "date": time.strftime("%Y-%m-%d"), **library_versions()}


def run_child(args, variant: str) -> dict:
    command = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=args.variant_timeout)
    except subprocess.TimeoutExpired:
        print(f"{variant} failed: stopped after {args.variant_timeout:.0f} s", file=sys.stderr)
        return None
    if result.returncode != 0:  # reported, and the other variants still run (one GPU run must give all it can)
        print(f"{variant} failed:\n{result.stderr[-4000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.variant:
        variants = {"baseline": run_baseline, "ours_full_logits": run_ours_full_logits}
        variants.update({name: (lambda a, flags=flags: run_ours(a, flags)) for name, flags in OUR_VARIANTS.items()})
        result = variants[args.variant](args)
        print(json.dumps(result))
        return
    env = environment()
    print(json.dumps(env))
    names = args.variants.split(",")
    unknown = set(names) - {"baseline", "ours_full_logits", *OUR_VARIANTS}
    if unknown:
        sys.exit(f"--variants: unknown {', '.join(sorted(unknown))}")
    results = {}
    for variant in names:  # each result is printed as it comes, so a run stopped early still gives the finished ones
        results[variant] = run_child(args, variant)
        if results[variant]:
            print(f"{variant}: " + json.dumps({k: v for k, v in results[variant].items() if not isinstance(v, list)}), flush=True)
    failed = [variant for variant, r in results.items() if r is None]
    results = {variant: r for variant, r in results.items() if r is not None}
    if not results:
        sys.exit("every variant failed")
    header = f"| variant | trained tok/s | real tok/s | padding | s/step | peak mem (GiB) |{' MFU |' if 'mfu' in next(iter(results.values())) else ''}"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for variant, r in results.items():
        mfu = f" {r['mfu']:.1%} |" if "mfu" in r else ""
        print(f"| {variant} | {r['trained_tokens_per_s']:.0f} | {r['real_tokens_per_s']:.0f} | {r['padding_share']:.1%} | "
              f"{r['seconds_per_step']:.3f} | {r['peak_memory_gib']:.2f} |{mfu}")
    for reference in ("baseline", "ours"):
        ref = results.get(reference)
        for variant, r in results.items():
            if ref and variant not in ("baseline", reference):
                print(f"ratio {variant}/{reference}: trained tokens/s {r['trained_tokens_per_s'] / ref['trained_tokens_per_s']:.2f}x, "
                      f"peak memory {r['peak_memory_gib'] / ref['peak_memory_gib']:.2f}x")
    if failed:
        print(f"failed: {', '.join(failed)} (errors above)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"environment": env, "args": vars(args), "results": results, "failed": failed}, indent=2))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
