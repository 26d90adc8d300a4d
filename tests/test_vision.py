"""Image-text students on the tiny random LLaVA (tests/conftest.py: a CLIP tower, a projector and the tiny Llama):
records with images in the Alpaca form and in LLaVA's conversations form, prompt and image tokens masked from the
loss with EOS learned, QLoRA on the language model only, training, resume, inference (--image and a prompts file)
and merge, through the scripts themselves. Random weights: the plumbing is tested, not the quality."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alpaca_qlora.data.records import load_records
from alpaca_qlora.data.tokenization import IGNORE_INDEX, tokenize_example
from alpaca_qlora.modeling import load_processor
from conftest import run_script, training_args


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def write_data(folder, tiny_images, tiny_records) -> "Path":
    """Image questions in both forms (paths relative to the file), with some text-only records mixed in."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, path in enumerate(tiny_images):
        (folder / "images" / path.name).write_bytes(path.read_bytes())
        shape = "circle" if i % 2 else "square"
        for k in range(3):
            rows.append({"id": f"a{i}-{k}", "image": f"images/{path.name}", "instruction": "What shape is in the picture?",
                         "input": "", "output": f"A {shape}."})
        rows.append({"id": f"c{i}", "image": f"images/{path.name}", "conversations": [
            {"from": "human", "value": "<image>\nWhat shape is it?"}, {"from": "gpt", "value": f"It is a {shape}."},
            {"from": "human", "value": "Is there a shape?"}, {"from": "gpt", "value": "Yes."}]})
    rows += tiny_records[:16]
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


@pytest.fixture(scope="module")
def image_data(tmp_path_factory, tiny_images, tiny_records):
    return write_data(tmp_path_factory.mktemp("image_data"), tiny_images, tiny_records)


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory, tiny_llava, image_data):
    output = tmp_path_factory.mktemp("llava_run") / "run"
    result = run_script(*training_args(tiny_llava, image_data, output, "--max_steps", "8", "--val_set_size", "8",
                                       "--save_strategy", "steps", "--save_steps", "4", "--prompt_template", "chat"))
    assert result.returncode == 0, result.stderr[-3000:]
    (output.parent / "stdout.txt").write_text(result.stdout)
    return output


def test_both_record_forms_load_with_their_images(image_data, tiny_images):
    records = load_records(str(image_data))
    conversation = [r for r in records if str(r["id"]).startswith("c0")]
    assert [r["id"] for r in conversation] == ["c0-0", "c0-1"]
    assert conversation[0]["instruction"] == "What shape is it?" and conversation[1]["output"] == "Yes."
    images = {r["image"] for r in records if "image" in r}
    assert images == {str((image_data.parent / "images" / p.name).resolve()) for p in tiny_images}
    assert sum("image" not in r for r in records) == 16  # text records keep their form (no image field)


def test_image_tokens_are_masked_and_eos_is_learned(tiny_llava, image_data):
    processor = load_processor(str(tiny_llava))
    record = next(r for r in load_records(str(image_data)) if r["id"] == "a1-0")
    example = tokenize_example(record, processor, "chat", 256, train_on_inputs=False)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    ids, labels = example.input_ids, example.labels
    assert ids.count(image_id) == 16  # (32 / 8)^2 patches, the CLS feature dropped
    assert all(label == IGNORE_INDEX for token, label in zip(ids, labels) if token == image_id)
    answer = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert answer[-1] == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(answer[:-1]) == "A circle."


# ChatML over content parts only, as LLaVA-style processor templates are written: a plain string content writes nothing
PARTS_ONLY_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_conversation_is_rendered_in_content_parts_by_a_processor_template(tiny_llava, tmp_path):
    """A conversation goes through the one chat renderer (prompts.render_chat), which gives a processor's own template
    content parts, as it gives them for a single question."""
    from alpaca_qlora.data.prompts import build_prompt

    processor = load_processor(str(tiny_llava))
    processor.chat_template = PARTS_ONLY_TEMPLATE
    messages = [{"role": "user", "content": "Add 2 and 2."}, {"role": "assistant", "content": "4."},
                {"role": "user", "content": "And 3 and 3?"}, {"role": "assistant", "content": "6."}]
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"id": "c", "messages": messages}) + "\n")
    [record] = load_records(str(path))
    assert build_prompt(record, "chat", processor) == (
        "<|im_start|>user\nAdd 2 and 2.<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n"
        "<|im_start|>user\nAnd 3 and 3?<|im_end|>\n<|im_start|>assistant\n")
    example = tokenize_example(record, processor, "chat", 256, train_on_inputs=False)
    answers = [token for token, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert processor.tokenizer.decode(answers) == "4.<|im_end|>\n6.<|im_end|>\n" + processor.tokenizer.eos_token


def test_training_tunes_the_language_model_only(llava_run, tiny_llava):
    config = json.loads((llava_run / "run_config.json").read_text())
    assert config["plan"]["model_kind"] == "image_text_to_text" and config["plan"]["packing"] is False
    weights = load_file(llava_run / "adapter_model.safetensors")
    assert weights and all(".language_model." in name for name in weights)
    assert not any("vision_tower" in name or "multi_modal_projector" in name for name in weights)
    assert any(float(w.abs().sum()) > 0 for name, w in weights.items() if "lora_B" in name)
    results = json.loads((llava_run / "eval_results.json").read_text())
    assert results["after_training"]["eval_loss"] < results["before_training"]["eval_loss"]
    for name in ("processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (llava_run / name).is_file(), name
    val = [json.loads(line) for line in (llava_run / "val.jsonl").read_text().splitlines()]
    assert any("image" in row for row in val)


def test_vision_side_stays_unquantized_and_frozen(tiny_llava):
    from peft import LoraConfig, get_peft_model

    from alpaca_qlora.modeling import load_base_model
    from alpaca_qlora.vision import LORA_EXCLUDE_PATTERN

    model = load_base_model(str(tiny_llava), "nf4", torch.float32, kind="image_text_to_text")
    quantized = {name for name, module in model.named_modules() if type(module).__name__ == "Linear4bit"}
    assert quantized and all(".language_model." in name for name in quantized)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", exclude_modules=LORA_EXCLUDE_PATTERN))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".language_model." in name and "lora_" in name for name in trainable)


def test_training_resumes_from_its_checkpoint(llava_run, tiny_llava, image_data):
    assert (llava_run / "checkpoint-4").is_dir()
    result = run_script(*training_args(tiny_llava, image_data, llava_run, "--max_steps", "10", "--val_set_size", "8",
                                       "--save_strategy", "steps", "--save_steps", "4", "--prompt_template", "chat",
                                       "--resume_from_checkpoint", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (llava_run / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row][-1] == 10
    assert json.loads((llava_run / "eval_results.json").read_text())["finished_at_step"] == 10


def test_inference_with_an_image_and_a_prompts_file_then_merge(llava_run, tiny_images, tmp_path):
    image = str(tiny_images[1])
    one = run_script("inference.py", "--adapter", str(llava_run), "--instruction", "What shape is in the picture?",
                     "--image", image, "--max_new_tokens", "5")
    assert one.returncode == 0, one.stderr[-3000:]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "x", "instruction": "What shape is in the picture?", "image": image}) + "\n"
                       + json.dumps({"id": "y", "instruction": "Add 2 and 3."}) + "\n")
    output = tmp_path / "gen.jsonl"
    batch = run_script("inference.py", "--adapter", str(llava_run), "--prompts_file", str(prompts), "--output_file",
                       str(output), "--max_new_tokens", "5", "--batch_size", "2")
    assert batch.returncode == 0, batch.stderr[-3000:]
    lines = {row["id"]: row for row in map(json.loads, output.read_text().splitlines())}
    assert lines["x"]["image"] == image and "image" not in lines["y"]
    assert last_line(one.stdout) == lines["x"]["prediction"]  # the same greedy answer, alone or batched

    merged = tmp_path / "merged"
    merge = run_script("-m", "alpaca_qlora.merge", "--adapter", str(llava_run), "--output_dir", str(merged), "--dtype", "fp32")
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert (merged / "processor_config.json").is_file()
    from_merged = run_script("inference.py", "--base_model", str(merged), "--quantization", "none", "--instruction",
                             "What shape is in the picture?", "--image", image, "--max_new_tokens", "5")
    unquantized = run_script("inference.py", "--adapter", str(llava_run), "--quantization", "none", "--instruction",
                             "What shape is in the picture?", "--image", image, "--max_new_tokens", "5")
    assert from_merged.returncode == 0 and unquantized.returncode == 0, from_merged.stderr[-2000:] + unquantized.stderr[-2000:]
    assert last_line(from_merged.stdout) == last_line(unquantized.stdout)


def test_image_bad_inputs_are_one_line(llava_run, tiny_model, image_data, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "What is it?", "output": "A cat.", "image": "fake.png"}) + "\n")
    cases = [
        (["inference.py", "--adapter", str(llava_run), "--instruction", "Hi", "--image", str(fake)], "--image: "),
        (["inference.py", "--base_model", str(tiny_model), "--instruction", "Hi", "--image", str(image_data.parent / "images" / "image_0.png")],
         "is a text-only model"),
        (training_args(tiny_model, image_data, tmp_path / "r1", "--val_set_size", "4"), "is a text-only model"),
        (training_args(tiny_model, bad, tmp_path / "r2", "--val_set_size", "0"), "record 0: field 'image'"),
    ]
    for argv, message in cases:
        result = run_script(*argv)
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr[-2000:])
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
