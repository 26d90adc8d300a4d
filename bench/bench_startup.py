#!/usr/bin/env python
"""inference.py against a plain Hugging Face script doing the same batched greedy generation, whole process.

    python bench/bench_startup.py                      # stories260K, 32 Alpaca prompts, 64 new tokens, batch 16

Both write their answers; the benchmark checks they are identical and reports the median wall time over
`--pairs` alternating runs, and the import time of each (python -X importtime). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

PLAIN = '''
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, prompts_path, output, max_new_tokens, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
tokenizer = AutoTokenizer.from_pretrained(model_dir)
tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
tokenizer.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the request."
            "\\n\\n### Instruction:\\n{instruction}\\n\\n### Response:")
records = [json.loads(line) for line in open(prompts_path)]
prompts = [TEMPLATE.replace("{instruction}", r["instruction"]) for r in records]
order = sorted(range(len(prompts)), key=lambda i: (-len(tokenizer(prompts[i])["input_ids"]), i))
answers = {}
with torch.no_grad():
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True)
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        for i, row in zip(batch, out[:, encoded["input_ids"].shape[1]:]):
            ids = row.tolist()
            ids = ids[:ids.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in ids else ids
            answers[records[i]["id"]] = tokenizer.decode(ids, skip_special_tokens=True).strip()
json.dump(answers, open(output, "w"))
'''


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def import_seconds(code: str) -> float:
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return max(int(line.split("|")[1]) for line in result.stderr.splitlines()[1:] if line.count("|") >= 2) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "stories260K-hf"))
    parser.add_argument("--data", default=str(SHARED / "data" / "alpaca_data.json"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    records = [{**r, "id": i} for i, r in enumerate(json.loads(Path(args.data).read_text())) if not r["input"]][: args.prompts]
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    plain_script = folder / "plain.py"
    plain_script.write_text(PLAIN)
    ours, plain = [], []
    for pair in range(args.pairs):
        output = folder / f"ours{pair}.jsonl"
        ours.append(timed([sys.executable, "inference.py", "--base_model", args.model, "--prompts_file", str(prompts),
                           "--output_file", str(output), "--max_new_tokens", str(args.max_new_tokens),
                           "--batch_size", str(args.batch_size)]))
        plain.append(timed([sys.executable, str(plain_script), args.model, str(prompts), str(folder / "plain.json"),
                            str(args.max_new_tokens), str(args.batch_size)]))
    ours_answers = {json.loads(line)["id"]: json.loads(line)["prediction"] for line in (folder / "ours0.jsonl").read_text().splitlines()}
    plain_answers = {int(k): v for k, v in json.loads((folder / "plain.json").read_text()).items()}
    same = sum(ours_answers[i] == plain_answers[i] for i in plain_answers)
    print(f"{args.prompts} prompts x {args.max_new_tokens} new tokens, batch {args.batch_size}, greedy; {args.pairs} pairs")
    print(f"inference.py   median {statistics.median(ours):.2f} s  (runs {', '.join(f'{t:.2f}' for t in ours)})")
    print(f"plain HF       median {statistics.median(plain):.2f} s  (runs {', '.join(f'{t:.2f}' for t in plain)})")
    print(f"ratio (ours / plain): {statistics.median(ours) / statistics.median(plain):.2f}; identical answers {same}/{len(plain_answers)}")
    print(f"imports: inference.py {import_seconds('import inference'):.2f} s, transformers' own "
          f"{import_seconds('from transformers import AutoModelForCausalLM, AutoTokenizer; import torch'):.2f} s")


if __name__ == "__main__":
    main()
