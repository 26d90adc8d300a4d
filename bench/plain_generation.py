#!/usr/bin/env python
"""The baseline of bench/bench_generation.py: the plain script a user would write to answer Alpaca prompts.

    python bench/plain_generation.py MODEL_DIR PROMPTS.jsonl OUT.jsonl --max_new_tokens 64 --batch_size 16

Load, left-pad, `model.generate` (greedy, full precision), write JSONL; prompts in file order, nothing else.
"""

import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
WITHOUT_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n{instruction}\n\n### Response:")

parser = argparse.ArgumentParser()
parser.add_argument("model"), parser.add_argument("prompts"), parser.add_argument("output")
parser.add_argument("--max_new_tokens", type=int, default=64)
parser.add_argument("--batch_size", type=int, default=16)
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
device = "cuda" if torch.cuda.is_available() else "cpu"
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device).eval()
records = [json.loads(line) for line in open(args.prompts, encoding="utf-8") if line.strip()]
prompts = [(WITH_INPUT if r["input"] else WITHOUT_INPUT).format(**r) for r in records]
with open(args.output, "w", encoding="utf-8") as out, torch.no_grad():
    for start in range(0, len(prompts), args.batch_size):
        batch = tokenizer(prompts[start : start + args.batch_size], return_tensors="pt", padding=True).to(device)
        output = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        for record, row in zip(records[start : start + args.batch_size], output[:, batch["input_ids"].shape[1] :]):
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            out.write(json.dumps({"id": record["id"], "prediction": text}) + "\n")
