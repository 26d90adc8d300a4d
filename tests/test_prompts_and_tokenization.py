"""Prompt templates, label masking, EOS handling, truncation and packing, on the tiny random Llama."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM

from alpaca_qlora.cli import UserError
from alpaca_qlora.data.prompts import build_prompt
from alpaca_qlora.data.tokenization import IGNORE_INDEX, tokenize_example, tokenize_records
from alpaca_qlora.modeling import load_tokenizer
from alpaca_qlora.training.collators import PackedCollator, PaddedCollator, pack_into_rows, token_counts

# The two templates exactly as tatsu-lab/stanford_alpaca train.py renders them.
EXPECTED_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
    "### Input:\nHallo {x}\n\n### Response:"
)
EXPECTED_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nName three colors.\n\n### Response:"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def test_alpaca_templates_are_byte_exact():
    assert build_prompt({"instruction": "Translate.", "input": "Hallo {x}"}, "alpaca") == EXPECTED_WITH_INPUT
    assert build_prompt({"instruction": "Name three colors.", "input": ""}, "alpaca") == EXPECTED_NO_INPUT


def test_chat_template_missing_is_a_user_error(tokenizer):
    tokenizer = load_tokenizer(tokenizer.name_or_path)
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        build_prompt({"instruction": "Hi", "input": ""}, "chat", tokenizer)


def test_chat_template_is_used_when_present(tokenizer):
    tokenizer = load_tokenizer(tokenizer.name_or_path)
    tokenizer.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
    assert build_prompt({"instruction": "Hi", "input": "there"}, "chat", tokenizer) == "<|user|>Hi\n\nthere<|assistant|>"


def test_a_prompt_that_begins_with_the_bos_gets_no_second_one_in_training_and_generation(tokenizer, tiny_model):
    """Llama-3's, Mistral-Instruct's and Gemma's chat templates write {{ bos_token }}, and their tokenizers add a BOS
    too (the tiny one does): such a prompt is encoded as apply_chat_template(tokenize=True) encodes it, one BOS; a
    template without one (ChatML) keeps the tokenizer's own, once. Generation is given the same tokens as training."""
    from transformers.generation.streamers import BaseStreamer

    from alpaca_qlora.data.synthetic import CHAT_TEMPLATE
    from alpaca_qlora.generation.generate import generate_answers
    from alpaca_qlora.generation.settings import GenerationSettings, resolve_settings

    class SeenIds(BaseStreamer):
        """transformers' streamer interface: `generate` puts the prompt's ids first, then each new token."""
        def __init__(self):
            self.puts = []

        def put(self, value):
            self.puts.append(value.tolist())

        def end(self):
            pass

    tokenizer = load_tokenizer(tokenizer.name_or_path)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    bos = tokenizer.bos_token_id
    assert tokenizer("Hi")["input_ids"][0] == bos
    record = {"instruction": "Name three colors.", "input": "", "output": "Red, green and blue."}
    for chat_template, added in (("{{ bos_token }}" + CHAT_TEMPLATE, []), (CHAT_TEMPLATE, [bos])):
        tokenizer.chat_template = chat_template
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": record["instruction"]}],
                                                 add_generation_prompt=True, tokenize=True, return_dict=False)
        expected = added + rendered
        assert expected.count(bos) == 1
        example = tokenize_example(record, tokenizer, "chat", 512, train_on_inputs=False)
        n_prompt = sum(1 for label in example.labels if label == IGNORE_INDEX)
        assert example.input_ids[:n_prompt] == expected

        seen = SeenIds()
        generate_answers(model, tokenizer, [build_prompt(record, "chat", tokenizer)],
                         resolve_settings(GenerationSettings(max_new_tokens=2)), streamer=seen)
        assert seen.puts[0] == [expected]


def test_prompt_is_masked_and_eos_is_the_last_label(tokenizer):
    record = {"instruction": "Name three colors.", "input": "", "output": "Red, green and blue."}
    example = tokenize_example(record, tokenizer, "alpaca", 512, train_on_inputs=False)
    prompt_length = len(tokenizer(build_prompt(record, "alpaca"))["input_ids"])
    assert example.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert example.labels[prompt_length:] == example.input_ids[prompt_length:]
    assert IGNORE_INDEX not in example.labels[prompt_length:]
    assert example.input_ids[-1] == example.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.input_ids[prompt_length:-1]) == record["output"]
    assert not example.truncated


def test_eos_is_learned_even_when_pad_equals_eos(tokenizer):
    tokenizer = load_tokenizer(tokenizer.name_or_path)
    tokenizer.pad_token = tokenizer.eos_token
    examples, _ = tokenize_records(
        [{"id": 0, "instruction": "Say hi.", "input": "", "output": "Hi."}], tokenizer, "alpaca", 512, False
    )
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(examples + [{"input_ids": [1, 2], "labels": [-100, 2]}])
    assert batch["labels"][0, len(examples[0]["labels"]) - 1] == tokenizer.eos_token_id


def test_train_on_inputs_keeps_prompt_labels(tokenizer):
    record = {"instruction": "Name three colors.", "input": "", "output": "Red."}
    example = tokenize_example(record, tokenizer, "alpaca", 512, train_on_inputs=True)
    assert example.labels[0] == IGNORE_INDEX  # nothing predicts the first token
    assert example.labels[1:] == example.input_ids[1:]


def test_truncation_is_counted_and_drops_eos_only_when_cut(tokenizer):
    short = {"id": 0, "instruction": "Say hi.", "input": "", "output": "Hi."}
    long = {"id": 1, "instruction": "Say hi.", "input": "", "output": "word " * 400}
    hopeless = {"id": 2, "instruction": "x " * 600, "input": "", "output": "y"}
    examples, report = tokenize_records([short, long, hopeless], tokenizer, "alpaca", 128, False)
    assert report.examples == 2 and report.truncated == 1 and report.prompt_too_long == 1 and report.left_out_ids == [2]
    assert examples[0]["input_ids"][-1] == tokenizer.eos_token_id
    assert len(examples[1]["input_ids"]) == 128 and examples[1]["input_ids"][-1] != tokenizer.eos_token_id


def test_pack_into_rows_never_exceeds_the_row_length():
    lengths = [300, 200, 120, 500, 80, 12, 400, 256]
    rows = pack_into_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    assert len(rows) == 4


def test_packed_batch_has_no_attention_across_examples(tokenizer, tiny_model, tiny_records):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), attn_implementation="sdpa").eval()
    records = [dict(r, id=i) for i, r in enumerate(tiny_records[:6])]
    examples, _ = tokenize_records(records, tokenizer, "alpaca", 512, False)
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id, max_row_length=512)(examples)
    total, real, trained = token_counts(batch["labels"])
    assert real == sum(len(e["input_ids"]) for e in examples) and total >= real
    assert trained == sum(label != IGNORE_INDEX for e in examples for label in e["labels"])
    assert batch["input_ids"].shape[0] < len(examples)  # several examples share a row
    with torch.no_grad():
        packed_logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        for row, positions in zip(packed_logits, batch["position_ids"]):
            starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [len(positions)]
            for start, end in zip(starts, starts[1:]):
                ids = batch["input_ids"][batch["position_ids"].tolist().index(positions.tolist())][start:end]
                if bool((ids == tokenizer.pad_token_id).all()):
                    continue  # the padding tail of the row
                alone = model(input_ids=ids[None], use_cache=False).logits[0]
                assert torch.allclose(row[start:end], alone, atol=1e-4), (start, end)


def test_packed_and_padded_batches_give_the_same_loss(tokenizer, tiny_model, tiny_records):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    records = [dict(r, id=i) for i, r in enumerate(tiny_records[10:18])]
    examples, _ = tokenize_records(records, tokenizer, "alpaca", 512, False)
    packed = PackedCollator(pad_token_id=tokenizer.pad_token_id, max_row_length=512)(examples)
    padded = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(examples)
    assert token_counts(padded["labels"])[1] == int(padded["attention_mask"].sum())  # real tokens, derived from labels
    with torch.no_grad():  # no KV cache: with one, transformers cannot see the packing (field notes)
        packed_loss = float(model(**packed, use_cache=False).loss)
        padded_loss = float(model(**padded, use_cache=False).loss)
    assert abs(packed_loss - padded_loss) < 1e-4


def test_packed_cpu_attention_equals_masked_sdpa(tokenizer, tiny_model, tiny_records):
    """The per-example CPU attention gives the logits and gradients of transformers' own masked sdpa."""
    from alpaca_qlora.training.packed_attention import register_packed_attention

    records = [dict(r, id=i) for i, r in enumerate(tiny_records[20:30])]
    examples, _ = tokenize_records(records, tokenizer, "alpaca", 512, False)
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id, max_row_length=512)(examples)
    results = []
    for implementation in ("sdpa", register_packed_attention()):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model), attn_implementation="sdpa")
        model.set_attn_implementation(implementation)
        output = model(**batch, use_cache=False)
        output.loss.backward()
        results.append((output.logits.detach(), model.model.layers[1].mlp.down_proj.weight.grad))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-4)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


@pytest.mark.parametrize("output_layer_trained", [True, False])
def test_trained_token_loss_equals_the_models_own_loss(tokenizer, tiny_model, tiny_records, output_layer_trained):
    """The chunked loss on labelled positions (LinearCrossEntropy: gradients made chunk by chunk in the forward)
    gives the model's own cross-entropy and gradients, with the output layer trained (here tied to the
    embeddings) or frozen (as under LoRA)."""
    from alpaca_qlora.training.loss import fused_output_weight, labelled_loss_sum, no_positions

    records = [dict(r, id=i) for i, r in enumerate(tiny_records[30:40])]
    examples, _ = tokenize_records(records, tokenizer, "alpaca", 512, False)
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id, max_row_length=512)(examples)
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    reference.get_output_embeddings().weight.requires_grad_(output_layer_trained)
    expected = reference(**batch, use_cache=False).loss
    expected.backward()

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model.get_output_embeddings().weight.requires_grad_(output_layer_trained)
    assert fused_output_weight(model.get_output_embeddings()) is not None
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    outputs = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=no_positions(torch.device("cpu")))
    assert outputs.logits.shape[1] == 0  # the output layer was skipped
    total, count = labelled_loss_sum(outputs.hidden_states[-1], batch["labels"], model.get_output_embeddings(), chunk_tokens=20)
    assert count == int((batch["labels"][:, 1:] != -100).sum()) and count > 60  # several chunks
    (total / count).backward()
    assert abs(float(total / count) - float(expected)) < 1e-5
    names = ["model.layers.1.self_attn.q_proj.weight"] + (["model.embed_tokens.weight"] if output_layer_trained else [])
    assert (model.get_parameter("model.embed_tokens.weight").grad is None) is not output_layer_trained
    for name in names:
        got, want = model.get_parameter(name).grad, reference.get_parameter(name).grad
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), name


def test_sequence_boundaries_for_varlen_attention(tokenizer, tiny_records):
    """The collator's varlen keywords and the boundaries the attention derives itself agree with the examples."""
    from alpaca_qlora.training.collators import sequence_boundaries

    records = [dict(r, id=i) for i, r in enumerate(tiny_records[40:56])]
    examples, _ = tokenize_records(records, tokenizer, "alpaca", 512, False)
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id, max_row_length=512, sequence_boundaries=True)(examples)
    cu_seqlens, longest = sequence_boundaries(batch["position_ids"])
    assert torch.equal(batch["cu_seq_lens_q"], cu_seqlens) and batch["max_length_q"] == longest
    assert cu_seqlens.dtype == torch.int32 and int(cu_seqlens[-1]) == batch["input_ids"].numel()
    lengths = Counter((cu_seqlens[1:] - cu_seqlens[:-1]).tolist())
    real = Counter(len(e["input_ids"]) for e in examples)
    padding_tails = lengths - real
    assert not real - lengths and sum(padding_tails.values()) <= batch["input_ids"].shape[0] - 1  # one tail per row at most
    assert longest == max(real)


def test_plan_falls_back_from_packed_varlen_without_a_gpu(tiny_model):
    """The plan decides the attention once, and says why it is not the one asked for."""
    import dataclasses

    from alpaca_qlora.modeling import load_model_config
    from alpaca_qlora.run_folder import PACKED_SDPA, PACKED_VARLEN
    from alpaca_qlora.training.config import parse_training_config
    from alpaca_qlora.training.packed_attention import varlen_supported
    from alpaca_qlora.training.plan import make_plan

    config = parse_training_config(["--base_model", str(tiny_model), "--attn_implementation", PACKED_VARLEN])
    model_config = load_model_config(str(tiny_model))
    plan = make_plan(config, model_config, has_heldout=True)
    if varlen_supported():
        assert plan.attention == PACKED_VARLEN
    else:
        assert plan.attention == (PACKED_SDPA if plan.device == "cpu" else "sdpa") and plan.row_length is None
        assert "packed_varlen needs CUDA" in dict(plan.reasons)["attention"]
    config.data.packing = False
    unpacked = make_plan(config, model_config, has_heldout=True)
    assert (unpacked.attention, unpacked.packing, unpacked.sampling) == ("sdpa", False, "group_by_length")
    assert config.model.attn_implementation == PACKED_VARLEN  # the options as given are never rewritten
    assert dataclasses.asdict(config.train) == dataclasses.asdict(parse_training_config(
        ["--base_model", str(tiny_model), "--attn_implementation", PACKED_VARLEN]).train)
