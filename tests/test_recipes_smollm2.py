"""The data and recipes of issue 26 on the real SmolLM2-135M-Instruct (`real_model` tier), end to end, in two short
training runs (CI time): conversations mixed with Alpaca records by weight, under the model's own chat template,
with PiSSA, rsLoRA and NEFTune; then an alpaca-lora template file with DoRA, generation from both with stop strings.
The tiny model's tests assert the exact values (masks, proportions, noise scales, conversions); this tier proves
that the same paths hold on a real model and tokenizer."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import run_script, training_args
from test_gguf import SMOLLM2, smollm2_gguf

pytestmark = pytest.mark.real_model

CONVERSATION = [
    {"role": "user", "content": "Name a primary colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "And another one?"},
    {"role": "assistant", "content": "Blue."},
]
SHORT_TEMPLATE = {  # alpaca-lora's templates/alpaca_short.json
    "description": "A shorter template to experiment with.",
    "prompt_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "prompt_no_input": "### Instruction:\n{instruction}\n\n### Response:\n",
    "response_split": "### Response:",
}
SHORT = ["--max_steps", "2", "--max_samples", "40", "--val_set_size", "8", "--per_device_train_batch_size", "4"]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_conversations_mixed_by_weight_with_pissa_rslora_and_neftune_then_generation_that_stops(tiny_data, tmp_path):
    base = smollm2_gguf()
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"id": f"chat{i}", "messages": CONVERSATION}) + "\n" for i in range(30)),
                     encoding="utf-8")
    held_out_chats = tmp_path / "held-out-chats.jsonl"  # held out: conversations only (their history is checked below)
    held_out_chats.write_text("".join(json.dumps({"id": f"held{i}", "messages": CONVERSATION}) + "\n" for i in range(4)),
                              encoding="utf-8")
    run = tmp_path / "chat-run"
    result = run_script(*training_args(base, tiny_data, run, "--max_steps", "2", "--max_samples", "40",
                                       "--per_device_train_batch_size", "4"),
                        "--data_path", str(tiny_data), str(chats), "--data_weights", "0.5", "0.5",
                        "--val_data_path", str(held_out_chats), "--val_set_size", "0", "--prompt_template", "chat",
                        "--init_lora_weights", "pissa", "--use_rslora", "true", "--neftune_noise_alpha", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    sources = json.loads((run / "run_info.json").read_text())["data"]["sources"]
    by_path = {facts["path"]: facts for facts in sources["files"]}
    assert by_path[str(chats)]["sha256"] == hashlib.sha256(chats.read_bytes()).hexdigest()
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["r"] == 32 and adapter["use_rslora"] and adapter["base_model_name_or_path"] == SMOLLM2  # PiSSA: 2r
    plan = json.loads((run / "run_config.json").read_text())["plan"]
    assert "NEFTune" in plan["reasons"]
    assert {facts["path"]: facts["train"] for facts in sources["files"]} == {str(tiny_data): 20, str(chats): 20}
    held_out = read_jsonl(run / "val.jsonl")
    assert len(held_out) == 4 and all("messages" in record for record in held_out)

    generations = tmp_path / "chat-generations.jsonl"
    result = run_script("inference.py", "--adapter", str(run), "--prompts_file", str(run / "val.jsonl"), "--output_file",
                        str(generations), "--max_new_tokens", "24", "--stop", ".")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = read_jsonl(generations)
    assert len(lines) == len(held_out) and all(line["settings"]["stop"] == ["."] for line in lines)
    assert all("." not in line["prediction"] for line in lines)  # each answer ends before its first full stop
    assert all(line["history"] for line in lines)  # a conversation's earlier turns come with its last question


def test_a_template_file_with_dora_then_a_base_that_stops_before_the_next_instruction(tiny_data, tmp_path):
    base = smollm2_gguf()
    template = tmp_path / "alpaca_short.json"
    template.write_text(json.dumps(SHORT_TEMPLATE), encoding="utf-8")
    run = tmp_path / "dora-run"
    result = run_script(*training_args(base, tiny_data, run, *SHORT, "--prompt_template", str(template),
                                       "--use_dora", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "adapter_config.json").read_text())["use_dora"]
    assert json.loads((run / "prompt_template.json").read_text())["prompt_input"] == SHORT_TEMPLATE["prompt_input"]
    answer = run_script("inference.py", "--adapter", str(run), "--instruction", "Name a primary colour.",
                        "--max_new_tokens", "48", "--stop", "### Instruction:")
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "### Instruction:" not in answer.stdout.split("Name a primary colour.")[-1]
