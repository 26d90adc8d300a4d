"""Where one training step of training_script.py goes: the step as the script builds it, then the same step with the
attention replaced by a pass-through of the values (no attention cost at all), on the same packed batches.

    python bench/step_breakdown.py --model ../shared/models/stories260K-hf --batch_size 16

The pass-through is not a model anyone should train: it is a lower bound on the step without attention (it also
drops the query/key gradients that attention feeds), so `1 - without / with` is an upper bound on attention's share,
and `stock seconds per step / without` bounds what any attention kernel could bring against the stock baseline.
Run it alone: a figure taken while another job shares the cores means nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_training  # (the records and options of the speed runs, and the environment record)

PASS_THROUGH = "values_pass_through"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO_ROOT.parent / "shared" / "models" / "stories260K-hf"))
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "alpaca_data.json"))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after one untimed)")
    parser.add_argument("--profile", type=int, default=0, help="also print torch.profiler's N most expensive operators of one step")
    parser.add_argument("--json_out")
    return parser.parse_args(argv)


def values_pass_through(module, query, key, value, attention_mask, **kwargs):
    """(batch, length, heads, dim): each position's own value, repeated over the query heads."""
    return value.repeat_interleave(query.shape[1] // value.shape[1], dim=1).transpose(1, 2).contiguous(), None


def script_model_and_batches(args):
    """The model, plan and packed batches that training_script.py builds for these options (the records and options
    of bench_training.py's speed runs)."""
    from alpaca_qlora.modeling import load_model_config
    from alpaca_qlora.training.plan import make_plan
    from alpaca_qlora.training.train import build_model, check_engine, largest_batch_tokens, make_collator

    options = bench_training.parse_args(["--model", args.model, "--data", args.data, "--batch_size", str(args.batch_size)])
    config, data = bench_training.prepared(options, args.batch_size * (args.steps + 1), 0, 1)
    engine, precision = check_engine(config)
    plan = make_plan(config, load_model_config(args.model, False), False, engine, largest_batch_tokens(data, config), precision)
    model = build_model(config, plan)
    collate = make_collator(plan, data.tokenizer)
    examples = data.train_examples
    batches = [collate(examples[i : i + args.batch_size]) for i in range(0, len(examples) - args.batch_size + 1, args.batch_size)]
    return model, plan, batches


def train_step(model, optimizer, batch) -> None:
    """Forward, the script's loss (labelled positions only), backward, AdamW."""
    import torch

    from alpaca_qlora.training.loss import labelled_loss_sum, no_positions

    features = {name: value for name, value in batch.items() if name != "labels"}
    outputs = model(**features, output_hidden_states=True, logits_to_keep=no_positions(torch.device("cpu")), use_cache=False)
    total, count = labelled_loss_sum(outputs.hidden_states[-1], batch["labels"], model.get_output_embeddings())
    (total / count).backward()
    optimizer.step()
    optimizer.zero_grad()


def seconds_per_step(model, batches, profile_rows: int = 0) -> tuple[float, float]:
    """(seconds per step after the first, real tokens per second)."""
    import torch

    from alpaca_qlora.training.collators import token_counts

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        train_step(model, optimizer, batch)
        times.append(time.perf_counter() - start)
    if profile_rows:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            train_step(model, optimizer, batches[-1])
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile_rows))
    tokens = sum(token_counts(batch["labels"])[1] for batch in batches[1:])
    return sum(times[1:]) / len(times[1:]), tokens / sum(times[1:])


def main() -> None:
    from transformers import AttentionInterface

    args = parse_args()
    model, plan, batches = script_model_and_batches(args)
    results = {"environment": bench_training.environment(), "args": vars(args), "plan_attention": plan.attention,
               "compute_dtype": plan.compute_dtype}
    step, rate = seconds_per_step(model, batches, args.profile)
    results["script"] = {"seconds_per_step": step, "real_tokens_per_s": rate}
    AttentionInterface.register(PASS_THROUGH, values_pass_through)
    model.base_model.model.set_attn_implementation(PASS_THROUGH)
    step, rate = seconds_per_step(model, batches)
    results["without_attention"] = {"seconds_per_step": step, "real_tokens_per_s": rate}
    results["attention_share_at_most"] = 1 - results["without_attention"]["seconds_per_step"] / results["script"]["seconds_per_step"]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")


if __name__ == "__main__":
    main()
