"""The merge's GGUF export (`--gguf f16|q8_0`, issue 27), checked by clients nobody here wrote.

- transformers' own GGUF loader reads the file back: its logits equal those of the merged model with its weights
  rounded as the file stores them (gguf's own quantizer and dequantizer), and are within a stated bound of the
  merged model's; its tokenizer gives the tokens the merged model's tokenizer gives.
- The file's layout is llama.cpp's: tensor names and types, no output.weight when tied, the pre-tokenizer.
- The same for a tiny random Mistral (written as llama.cpp's `llama`, read back as a Llama) and Qwen2 (`qwen2`: q/k/v
  biases, rows unpermuted, tied, RoPE theta 1e6, Qwen2's pre-tokenizer), f16 and q8_0.
- The Ollama Modelfile holds the run's prompt template: rendered for one instruction, it is training's prompt.
- Refusals (another architecture, an unknown type, an existing output, a file the merge did not write) are one line,
  exit 2, and write nothing.
- The export is a base model again: training_script.py and inference.py take it as --base_model.
- Optional: llama.cpp itself (llama-cpp-python), skipped with the reason when `import llama_cpp` fails; the shared tier
  exports stories260K (a SentencePiece-style vocabulary), the real_model tier SmolLM2 from its packaged GGUF.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from alpaca_qlora.cli import UserError, run_cli
from alpaca_qlora.data.prompts import build_prompt
from alpaca_qlora.export.modelfile import ollama_modelfile
from alpaca_qlora.export.to_gguf import check_exportable
from alpaca_qlora.modeling import gguf_folder
from alpaca_qlora.training.merge import main as merge_main
from conftest import run_script, training_args

INSTRUCTIONS = ("Add 12 and 345.", "Translate 'summer' into French.", "Sort these numbers: 9, 3, 27, 1.",
                "Write the word 'garden' in capital letters.")
TEXTS = ("Add 12 and 345. The answer is 357!", "Translate 'summer' into French: été, café, école.",
         "two  spaces,\n\nnew lines\tand a tab; 3.14159 and 1,000,000", "<s>special tokens inside</s> the text")
# f16 keeps 11 significant bits: a weight moves by at most 2^-11 (4.9e-4) of itself, 2.8e-4 on average. Through two
# layers and the tied output layer of the tiny Llama (logits of about 0.5 at most) that is about 5e-4 of the largest
# logit; 5e-3 of it leaves a margin of 10 while a wrong layout (q/k order, a transposed weight) moves logits by O(1).
F16_BOUND = 5e-3
# q8_0 rounds each weight to 1/254 of the largest in its block of 32 (0.5% of a weight's scale on average): about 1%
# of the largest logit here. 5e-2 leaves a margin of about 4.
Q8_0_BOUND = 5e-2
# The file read back against the merged model rounded as the file stores it: the same numbers through the same
# layers; only float32 noise (and rms_norm_eps stored as float32) remains.
SAME_WEIGHTS_BOUND = 1e-5


# ---------------------------------------------------------------------------------------------
# A run, its merges with --gguf
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model, tiny_data) -> Path:
    """A short adapter trained here (plain LoRA, as tests/test_inference.py trains one), with the Alpaca template."""
    from alpaca_qlora.training.train import main as train_main

    output = tmp_path_factory.mktemp("run") / "run"
    train_main([
        "--base_model", str(tiny_model), "--data_path", str(tiny_data), "--max_samples", "40", "--val_set_size", "8",
        "--output_dir", str(output), "--max_steps", "4", "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-2", "--save_steps", "1000", "--eval_strategy", "no", "--quantization", "none",
        "--max_seq_length", "256", "--report_to", "none",
    ])
    return output


def merge(adapter: Path, output: Path, *extra: str):
    return run_script("-m", "alpaca_qlora.merge", "--adapter", str(adapter), "--output_dir", str(output), "--dtype", "fp32", *extra)


def merged_with_gguf(tmp_path_factory, run_dir, kind: str) -> Path:
    output = tmp_path_factory.mktemp(f"merged_{kind}") / "merged"
    result = merge(run_dir, output, "--gguf", kind)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def merged_f16(tmp_path_factory, run_dir) -> Path:
    return merged_with_gguf(tmp_path_factory, run_dir, "f16")


@pytest.fixture(scope="module")
def merged_q8_0(tmp_path_factory, run_dir) -> Path:
    return merged_with_gguf(tmp_path_factory, run_dir, "q8_0")


def alone(gguf_path: Path, folder: Path) -> Path:
    """The GGUF copied into a folder of its own: transformers' tokenizer loader prefers a tokenizer.json beside the
    file to the file's own vocabulary, and here the file's own is what is tested."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(gguf_path, folder / gguf_path.name))


def reloaded_model(gguf_path: Path):
    return AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()


def rounded_as_stored(model, kind: str):
    """The model with every weight matrix rounded as the file stores it, by the gguf package itself: q8_0 where a row
    splits into blocks of 32, f16 otherwise; 1-D weights (the norms) are f32 in the file and stay as they are."""
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.dim() < 2:
                continue
            data = param.detach().cpu().numpy()
            qtype = gguf.GGMLQuantizationType.Q8_0 if kind == "q8_0" and data.shape[-1] % 32 == 0 else gguf.GGMLQuantizationType.F16
            param.copy_(torch.from_numpy(gguf.dequantize(gguf.quantize(data, qtype), qtype).reshape(data.shape)))
    return model


def prompt_ids(tokenizer) -> list[torch.Tensor]:
    return [torch.tensor([tokenizer(build_prompt({"instruction": text, "input": ""}, "alpaca"))["input_ids"]])
            for text in INSTRUCTIONS]


def largest_difference(model_a, model_b, prompts) -> tuple[float, float]:
    """(max |logits_a - logits_b|, max |logits_b|) over the prompts."""
    difference = largest = 0.0
    with torch.no_grad():
        for ids in prompts:
            a, b = model_a(input_ids=ids).logits, model_b(input_ids=ids).logits
            difference = max(difference, (a - b).abs().max().item())
            largest = max(largest, b.abs().max().item())
    return difference, largest


# ---------------------------------------------------------------------------------------------
# Read back by transformers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,bound", [("f16", F16_BOUND), ("q8_0", Q8_0_BOUND)])
def test_transformers_reads_the_export_back_with_the_merged_models_logits(kind, bound, request, tmp_path):
    merged = request.getfixturevalue(f"merged_{kind}")
    gguf_path = alone(merged / f"model-{kind}.gguf", tmp_path / "alone")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompts = prompt_ids(tokenizer)
    from_file = reloaded_model(gguf_path)

    as_stored = rounded_as_stored(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval(), kind)
    difference, _ = largest_difference(from_file, as_stored, prompts)
    assert difference < SAME_WEIGHTS_BOUND, (kind, difference)

    exact = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    difference, largest = largest_difference(from_file, exact, prompts)
    assert 0 < difference <= bound * largest, (kind, difference, largest)


def test_the_tokenizer_read_back_gives_the_same_tokens(merged_f16, tmp_path):
    gguf_path = alone(merged_f16 / "model-f16.gguf", tmp_path / "alone")
    original = AutoTokenizer.from_pretrained(merged_f16)
    from_file = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    for text in (*TEXTS, build_prompt({"instruction": INSTRUCTIONS[0], "input": ""}, "alpaca")):
        assert from_file(text)["input_ids"] == original(text)["input_ids"], text
    assert from_file.chat_template == original.chat_template
    assert (from_file.bos_token, from_file.eos_token) == (original.bos_token, original.eos_token) == ("<s>", "</s>")


def test_the_file_is_laid_out_as_llama_cpp_lays_it_out(merged_q8_0, merged_f16):
    reader = gguf.GGUFReader(merged_q8_0 / "model-q8_0.gguf")
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    norms = {"output_norm.weight"} | {f"blk.{i}.{n}_norm.weight" for i in range(2) for n in ("attn", "ffn")}
    fallbacks = {"blk.0.ffn_down.weight", "blk.1.ffn_down.weight"}  # 176 wide: no whole blocks of 32
    assert "output.weight" not in types  # tied to token_embd, as llama.cpp writes a tied model
    assert {name for name, t in types.items() if t == "F32"} == norms
    assert {name for name, t in types.items() if t == "F16"} == fallbacks
    assert {name for name, t in types.items() if t == "Q8_0"} == set(types) - norms - fallbacks
    assert "token_embd.weight" in types and "blk.1.attn_q.weight" in types
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # GPT-2's split, as the tiny tokenizer's ByteLevel
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert fields["llama.context_length"].contents() == 512 and fields["llama.block_count"].contents() == 2
    assert json.loads((merged_q8_0 / "merge_info.json").read_text())["gguf"] == {
        "file": "model-q8_0.gguf", "type": "q8_0", "tokenizer": "gpt2", "pre_tokenizer": "gpt-2",
        "f16_fallbacks": ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]}
    f16_types = {tensor.tensor_type.name for tensor in gguf.GGUFReader(merged_f16 / "model-f16.gguf").tensors}
    assert f16_types == {"F16", "F32"}
    for folder, kind in ((merged_f16, "f16"), (merged_q8_0, "q8_0")):
        info = json.loads((folder / "merge_info.json").read_text())
        assert {f"model-{kind}.gguf", "Modelfile", "model.safetensors"} <= set(info["files"])
        assert not list(folder.parent.glob("**/*.partial")) and not list(folder.parent.glob(".merged.merging-*"))


# ---------------------------------------------------------------------------------------------
# Mistral and Qwen2: tiny random models built here with the tiny tokenizer
# ---------------------------------------------------------------------------------------------
# The tiny Mistral's sliding window: below its max_position_embeddings (512), so it is the Modelfile's num_ctx; above
# every prompt here, so transformers' Mistral and the file read back (as a Llama: full attention) attend alike.
MISTRAL_WINDOW = 256
# transformers reads llama.cpp's `llama` back as a Llama (a Mistral only for a file whose general.name is exactly
# "mistral"), and `qwen2` as a Qwen2.
READ_BACK_AS = {"mistral": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
OTHER_ARCHITECTURES = tuple(READ_BACK_AS)


def build_tiny_base(model_type: str, tiny_model: Path, folder: Path) -> Path:
    """A random 2-layer Mistral or Qwen2 (hidden 64, MLP 128: every row splits into q8_0's blocks of 32; 4 heads,
    2 kv heads) saved with the tiny tokenizer.

    Qwen2: tied embeddings, RoPE theta 1e6, random q/k/v biases (transformers initialises them to zero, which would
    hide a bias written wrong or not at all), and Qwen2's own pre-tokenizer on the tiny vocabulary, which the export
    must name "qwen2". Its pad token is EOS: transformers loads a qwen2 folder's tokenizer as Qwen2Tokenizer, whose
    default pad token <|endoftext|> would otherwise be added as a 513th token. Mistral: an output layer of its own
    and a sliding window (MISTRAL_WINDOW)."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    shape = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
             "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    if model_type == "qwen2":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tokenizer.pad_token = tokenizer.eos_token
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True,
                                             rope_parameters={"rope_type": "default", "rope_theta": 1e6}))
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if name.endswith(".bias"):
                    weight.normal_(0, 0.2)
    else:
        model = MistralForCausalLM(MistralConfig(**shape, tie_word_embeddings=False, sliding_window=MISTRAL_WINDOW))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def other_merged(tmp_path_factory, tiny_model):
    """merged(model_type, kind): the merge, with --gguf kind, of a LoRA adapter with random updates on a tiny random
    Mistral or Qwen2 (each base, adapter and merge built once)."""
    adapters: dict[str, Path] = {}
    merges: dict[tuple[str, str], Path] = {}

    def merged(model_type: str, kind: str) -> Path:
        if model_type not in adapters:
            root = tmp_path_factory.mktemp(model_type)
            adapters[model_type] = untrained_adapter(build_tiny_base(model_type, tiny_model, root / "base"), root / "adapter")
        if (model_type, kind) not in merges:
            output = tmp_path_factory.mktemp(f"{model_type}_{kind}") / "merged"
            result = merge(adapters[model_type], output, "--gguf", kind)
            assert result.returncode == 0, result.stderr[-3000:]
            merges[(model_type, kind)] = output
        return merges[(model_type, kind)]

    return merged


@pytest.mark.parametrize("model_type", OTHER_ARCHITECTURES)
@pytest.mark.parametrize("kind,bound", [("f16", F16_BOUND), ("q8_0", Q8_0_BOUND)])
def test_mistral_and_qwen2_read_back_with_the_merged_models_logits(model_type, kind, bound, other_merged, tmp_path):
    """As the Llama test above, with its bounds. The Mistral export is read back as a Llama, with full attention:
    the same as transformers' Mistral for prompts within its sliding window, which these are."""
    merged = other_merged(model_type, kind)
    gguf_path = alone(merged / f"model-{kind}.gguf", tmp_path / "alone")
    prompts = prompt_ids(AutoTokenizer.from_pretrained(merged))
    assert max(ids.shape[1] for ids in prompts) < MISTRAL_WINDOW
    from_file = reloaded_model(gguf_path)
    assert type(from_file).__name__ == READ_BACK_AS[model_type]

    as_stored = rounded_as_stored(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval(), kind)
    difference, _ = largest_difference(from_file, as_stored, prompts)
    assert difference < SAME_WEIGHTS_BOUND, (model_type, kind, difference)

    exact = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    difference, largest = largest_difference(from_file, exact, prompts)
    assert 0 < difference <= bound * largest, (model_type, kind, difference, largest)


@pytest.mark.parametrize("model_type", OTHER_ARCHITECTURES)
def test_mistral_and_qwen2_tokenizers_read_back_give_the_same_tokens(model_type, other_merged, tmp_path):
    """Mistral keeps the tiny tokenizer's GPT-2 split ('gpt-2'); the tiny Qwen2 has Qwen2's split ('qwen2'), which cuts
    numbers digit by digit where GPT-2's keeps digit runs whole: the file read back must split as the original."""
    merged = other_merged(model_type, "f16")
    gguf_path = alone(merged / "model-f16.gguf", tmp_path / "alone")
    assert gguf.GGUFReader(gguf_path).fields["tokenizer.ggml.pre"].contents() == {"mistral": "gpt-2", "qwen2": "qwen2"}[model_type]
    original = AutoTokenizer.from_pretrained(merged)
    from_file = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    for text in (*TEXTS, build_prompt({"instruction": INSTRUCTIONS[0], "input": ""}, "alpaca")):
        assert from_file(text)["input_ids"] == original(text)["input_ids"], (model_type, text)


def layer_norms(layers: int) -> set[str]:
    return {"output_norm.weight"} | {f"blk.{i}.{n}_norm.weight" for i in range(layers) for n in ("attn", "ffn")}


def test_qwen2_is_written_as_llama_cpps_qwen2_with_its_biases_and_rows_unpermuted(other_merged):
    merged = other_merged("qwen2", "f16")
    reader = gguf.GGUFReader(merged / "model-f16.gguf")
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert reader.fields["qwen2.rope.freq_base"].contents() == 1e6
    assert reader.fields["qwen2.context_length"].contents() == 512
    assert "output.weight" not in tensors  # tied, as llama.cpp writes a tied model
    biases = {f"blk.{i}.attn_{p}.bias" for i in range(2) for p in "qkv"}
    assert {name for name in tensors if name.endswith(".bias")} == biases
    weights = load_file(merged / "model.safetensors")
    for i in range(2):
        for p in "qkv":  # as the merge computed them: llama.cpp's qwen2 rotates q/k by halves (NEOX), as transformers does
            weight, bias = (weights[f"model.layers.{i}.self_attn.{p}_proj.{part}"] for part in ("weight", "bias"))
            stored = np.asarray(tensors[f"blk.{i}.attn_{p}.weight"].data).reshape(weight.shape)
            assert np.array_equal(stored, weight.half().numpy()), (i, p)
            assert tensors[f"blk.{i}.attn_{p}.bias"].tensor_type.name == "F32"
            assert np.array_equal(np.asarray(tensors[f"blk.{i}.attn_{p}.bias"].data), bias.numpy()), (i, p)
            assert bias.abs().max() > 0.1  # the random biases of build_tiny_base, not transformers' zeros

    q8_0 = {tensor.name: tensor.tensor_type.name
            for tensor in gguf.GGUFReader(other_merged("qwen2", "q8_0") / "model-q8_0.gguf").tensors}
    assert {name for name, t in q8_0.items() if t == "F32"} == layer_norms(2) | biases
    assert {name for name, t in q8_0.items() if t == "Q8_0"} == set(q8_0) - layer_norms(2) - biases  # no F16 fallback


def test_mistral_is_written_as_llama_cpps_llama_with_its_output_layer_and_a_context_within_its_window(other_merged):
    merged = other_merged("mistral", "q8_0")
    reader = gguf.GGUFReader(merged / "model-q8_0.gguf")
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"  # llama.cpp's converter: MistralForCausalLM is a LlamaModel
    assert fields["llama.context_length"].contents() == 512  # max_position_embeddings, as the converter writes it
    assert fields["llama.rope.dimension_count"].contents() == 16
    assert not [key for key in fields if "sliding_window" in key]  # nor does it write the window
    assert "output.weight" in types  # not tied
    assert {name for name, t in types.items() if t == "F32"} == layer_norms(2)
    assert {name for name, t in types.items() if t == "Q8_0"} == set(types) - layer_norms(2)  # no F16 fallback
    assert json.loads((merged / "merge_info.json").read_text())["gguf"]["f16_fallbacks"] == []
    # llama.cpp attends over the whole context, transformers' Mistral over the window: Ollama is given the window
    assert f"PARAMETER num_ctx {MISTRAL_WINDOW}\n" in (merged / "Modelfile").read_text()


# ---------------------------------------------------------------------------------------------
# The Ollama Modelfile
# ---------------------------------------------------------------------------------------------
ALPACA_MODELFILE = '''\
# Ollama: `ollama create NAME -f Modelfile` in this folder. Prompt template: alpaca.
FROM ./model-f16.gguf
TEMPLATE """Below is an instruction that describes a task. Write a response that appropriately completes the request.

### Instruction:
{{ .Prompt }}

### Response:{{ .Response }}"""
PARAMETER stop "### Instruction:"
PARAMETER stop "</s>"
PARAMETER temperature 0
PARAMETER num_predict 256
PARAMETER num_ctx 512
'''

CHATML_MODELFILE = '''\
# Ollama: `ollama create NAME -f Modelfile` in this folder. Prompt template: chat.
FROM ./model-q8_0.gguf
TEMPLATE """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""
PARAMETER stop "<|im_end|>"
PARAMETER stop "<|im_start|>"
PARAMETER stop "</s>"
PARAMETER temperature 0
PARAMETER num_predict 256
PARAMETER num_ctx 512
'''

# SmolLM2-Instruct's chat template writes a system message of its own when the conversation has none.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_STYLE_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def quoted_block(modelfile: str, command: str) -> str | None:
    found = re.search(rf'^{command} """(.*?)"""$', modelfile, flags=re.S | re.M)
    return found[1] if found else None


def ollama_render(template: str, system: str, prompt: str) -> str:
    """What Ollama sends the model for one turn, for the constructs the Modelfile uses (`{{ if .X }}...{{ end }}`,
    `{{ .X }}`, `{{ "{{" }}`), up to where the answer goes (Ollama cuts the template at `.Response`)."""
    values = {".System": system, ".Prompt": prompt}
    head = template.split("{{ .Response }}")[0]
    head = re.sub(r"\{\{ if (\.\w+) \}\}(.*?)\{\{ end \}\}", lambda m: m[2] if values[m[1]] else "", head, flags=re.S)
    return re.sub(r'\{\{ (\.\w+|"\{\{") \}\}', lambda m: "{{" if m[1] == '"{{"' else values[m[1]], head)


def test_the_modelfile_holds_the_alpaca_template_of_the_run(merged_f16):
    modelfile = (merged_f16 / "Modelfile").read_text()
    assert modelfile == ALPACA_MODELFILE
    template = quoted_block(modelfile, "TEMPLATE")
    for instruction in INSTRUCTIONS:
        assert ollama_render(template, "", instruction) == build_prompt({"instruction": instruction, "input": ""}, "alpaca")
    assert (merged_f16 / "model-f16.gguf").is_file()  # FROM ./model-f16.gguf, beside it


def test_a_chatml_template_becomes_ollamas_chatml_and_a_default_system_becomes_system(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)  # its chat template is ChatML without a system message
    modelfile = ollama_modelfile("model-q8_0.gguf", "chat", tokenizer, 512)
    assert modelfile == CHATML_MODELFILE
    tokenizer.chat_template = SMOLLM2_STYLE_TEMPLATE
    modelfile = ollama_modelfile("model-q8_0.gguf", "chat", tokenizer, 4096 * 2)
    system = quoted_block(modelfile, "SYSTEM")
    assert system == DEFAULT_SYSTEM and "PARAMETER num_ctx 4096\n" in modelfile
    for instruction in INSTRUCTIONS:
        assert ollama_render(quoted_block(modelfile, "TEMPLATE"), system, instruction) == \
            build_prompt({"instruction": instruction, "input": ""}, "chat", tokenizer)


def test_a_chat_template_that_writes_the_bos_leaves_it_to_the_gguf(tiny_model):
    """Mistral-Instruct-style: the chat template writes {{ bos_token }} and the tokenizer adds one too (the GGUF says
    add_bos, and llama.cpp and Ollama add it): the Modelfile's template starts after the BOS, so the model reads one."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    template = quoted_block(ollama_modelfile("model-q8_0.gguf", "chat", tokenizer, 512), "TEMPLATE")
    assert template == "[INST] {{ .Prompt }} [/INST]{{ .Response }}"


def test_a_template_file_with_braces_is_escaped_for_go_templates(tiny_model, tmp_path):
    template = tmp_path / "braces.yaml"
    template.write_text(json.dumps({"prompt_input": "Q: {instruction}\n{input}\nA {{json}}:",
                                    "prompt_no_input": "Q: {instruction}\nA {{json}}:", "response_split": "A {{json}}:"}))
    modelfile = ollama_modelfile("model-f16.gguf", str(template), AutoTokenizer.from_pretrained(tiny_model), 512)
    body = quoted_block(modelfile, "TEMPLATE")
    assert body == 'Q: {{ .Prompt }}\nA {{ "{{" }}json}}:{{ .Response }}'
    assert ollama_render(body, "", "Add 2 and 3.") == build_prompt({"instruction": "Add 2 and 3.", "input": ""}, str(template))
    assert 'PARAMETER stop "Q:"\n' in modelfile and "Prompt template: braces.yaml." in modelfile


# ---------------------------------------------------------------------------------------------
# Refusals: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: merge_main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2, err
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


@pytest.fixture(scope="module")
def gemma_adapter(tmp_path_factory, tiny_model) -> Path:
    """A LoRA adapter on a tiny random Gemma (an architecture the export does not write), built here with the tiny
    tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import GemmaConfig, GemmaForCausalLM

    root = tmp_path_factory.mktemp("gemma")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = GemmaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
    torch.manual_seed(0)
    GemmaForCausalLM(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(root / "adapter")
    return root / "adapter"


def test_another_architecture_is_refused_naming_it_and_nothing_is_written(gemma_adapter, tmp_path, capsys):
    before = snapshot(tmp_path)
    line = refused(["--adapter", str(gemma_adapter), "--output_dir", str(tmp_path / "merged"), "--gguf", "f16"], capsys)
    base = json.loads((gemma_adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert line == (f"error: --gguf: {base} is a 'gemma' model; the GGUF export writes model_type llama (Llama, SmolLM2, "
                    "stories260K), mistral (Mistral) and qwen2 (Qwen2, Qwen2.5) only; nothing was written")
    assert snapshot(tmp_path) == before  # no output folder, no aside folder


def test_a_qwen2_with_sliding_window_layers_is_refused():
    """transformers' Qwen2 slides its window in the layers from max_window_layers on; llama.cpp's qwen2 never does."""
    from transformers import Qwen2Config

    shape = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2}
    assert check_exportable(Qwen2Config(**shape), "Qwen2-tiny").arch == gguf.MODEL_ARCH.QWEN2
    with pytest.raises(UserError) as error:
        check_exportable(Qwen2Config(**shape, use_sliding_window=True, max_window_layers=1), "Qwen2-tiny")
    assert str(error.value) == ("--gguf: Qwen2-tiny uses sliding-window attention in some layers; llama.cpp's qwen2 "
                                "attends over the whole context in every layer; nothing was written")


def test_a_type_that_is_not_offered_is_refused(run_dir, tmp_path, capsys):
    line = refused(["--adapter", str(run_dir), "--output_dir", str(tmp_path / "merged"), "--gguf", "q4_k"], capsys)
    assert "--gguf: invalid choice" in line and "q4_k" in line
    assert not list(tmp_path.iterdir())


def test_an_existing_export_is_not_replaced_without_overwrite(merged_f16, run_dir, capsys):
    before = snapshot(merged_f16)
    line = refused(["--adapter", str(run_dir), "--output_dir", str(merged_f16), "--gguf", "q8_0"], capsys)
    assert line == f"error: --output_dir {merged_f16} holds a merged model already; pass --overwrite to replace it"
    assert snapshot(merged_f16) == before


def test_overwrite_replaces_the_merges_own_export(merged_f16, run_dir, tmp_path):
    output = tmp_path / "merged"
    shutil.copytree(merged_f16, output)
    (output / "notes.md").write_text("mine")
    result = merge(run_dir, output, "--gguf", "q8_0", "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (output / "model-f16.gguf").exists() and (output / "model-q8_0.gguf").is_file()
    assert (output / "Modelfile").read_text().splitlines()[1] == "FROM ./model-q8_0.gguf"
    assert (output / "notes.md").read_text() == "mine"
    info = json.loads((output / "merge_info.json").read_text())
    assert sorted(p.name for p in output.iterdir()) == sorted(info["files"] + ["notes.md"])


def test_a_modelfile_the_merge_did_not_write_is_not_replaced(run_dir, tmp_path, capsys):
    output = tmp_path / "merged"
    merge_main(["--adapter", str(run_dir), "--output_dir", str(output), "--dtype", "fp32"])  # no --gguf: no Modelfile
    (output / "Modelfile").write_text("FROM llama3\n")  # the user's own
    before = snapshot(tmp_path)
    line = refused(["--adapter", str(run_dir), "--output_dir", str(output), "--gguf", "f16", "--overwrite"], capsys)
    assert line == (f"error: --output_dir {output}: Modelfile there was not written by the merge; nothing was changed: "
                    "move it out first")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# The export as a base model again
# ---------------------------------------------------------------------------------------------
def test_the_export_is_a_base_model_for_training_and_generation(merged_f16, tiny_data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALPACA_QLORA_CACHE", str(cache))
    gguf_path = merged_f16 / "model-f16.gguf"
    converted = load_file(gguf_folder(str(gguf_path)) / "model.safetensors")
    merged = load_file(merged_f16 / "model.safetensors")
    for name, weight in merged.items():  # the GGUF's weights, not the safetensors beside it: rounded to f16
        expected = weight.half().float() if weight.dim() >= 2 else weight
        assert torch.equal(converted[name], expected), name

    env = {"ALPACA_QLORA_CACHE": str(cache)}
    run = tmp_path / "run"
    result = run_script(*training_args(gguf_path, tiny_data, run, "--max_steps", "2", "--val_set_size", "8"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(gguf_path)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"instruction": INSTRUCTIONS[0], "input": ""}) + "\n")
    result = run_script("inference.py", "--base_model", str(gguf_path), "--prompts_file", str(prompts), "--output_file",
                        str(tmp_path / "gens.jsonl"), "--max_new_tokens", "4", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads((tmp_path / "gens.jsonl").read_text())
    assert line["base_model"] == str(gguf_path) and line["instruction"] == INSTRUCTIONS[0]


# ---------------------------------------------------------------------------------------------
# Optional: llama.cpp itself
# ---------------------------------------------------------------------------------------------
def import_llama_cpp():
    try:
        import llama_cpp
    except Exception as error:  # noqa: BLE001 - not installed, or a build whose shared library does not load
        pytest.skip(f"llama-cpp-python is not importable ({type(error).__name__}: {error}); it builds llama.cpp from "
                    "source: CMAKE_ARGS='-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF' pip install llama-cpp-python")
    return llama_cpp


def llama_cpp_agrees_with_transformers(merged: Path) -> None:
    """llama.cpp's tokenizer gives the ids of the merged model's tokenizer on TEXTS and a prompt, and its logits on
    them are within Q8_0_BOUND of the largest logit of the merged model with its weights rounded to f16 (ggml's CPU
    path also rounds activations and the KV cache to f16, so the f16-weights bound does not apply)."""
    llama_cpp = import_llama_cpp()

    llm = llama_cpp.Llama(model_path=str(merged / "model-f16.gguf"), n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    reference = rounded_as_stored(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval(), "f16")
    for text in (*TEXTS[:3], build_prompt({"instruction": INSTRUCTIONS[0], "input": ""}, "alpaca")):
        ids = tokenizer(text)["input_ids"]
        assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=False) == ids, text
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: llm.n_tokens])
        with torch.no_grad():
            expected = reference(input_ids=torch.tensor([ids])).logits[0].numpy()
        assert np.abs(scores - expected).max() <= Q8_0_BOUND * np.abs(expected).max(), text


def test_llama_cpp_tokenizes_and_scores_the_export_as_transformers_does(merged_f16):
    """The tiny Llama, with the 'gpt-2' pre-tokenizer."""
    llama_cpp_agrees_with_transformers(merged_f16)


@pytest.mark.parametrize("model_type", OTHER_ARCHITECTURES)
def test_llama_cpp_tokenizes_and_scores_mistral_and_qwen2_as_transformers_does(model_type, other_merged):
    """Mistral as llama.cpp's `llama` (full attention: the prompts are within its window); Qwen2 as its `qwen2`
    (biases, NEOX RoPE, the 'qwen2' pre-tokenizer)."""
    import_llama_cpp()  # skips before anything is built when llama.cpp is not there
    llama_cpp_agrees_with_transformers(other_merged(model_type, "f16"))


# ---------------------------------------------------------------------------------------------
# stories260K (shared tier: a SentencePiece-style vocabulary) and SmolLM2 (real_model tier)
# ---------------------------------------------------------------------------------------------
def untrained_adapter(base: Path | str, folder: Path, load=None) -> Path:
    """A LoRA adapter with random updates on `base` (built here: what is tested is the export, not the training)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load() if load else AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.01)
    model.save_pretrained(folder)
    return folder


def test_stories260k_exports_with_its_sentencepiece_vocabulary(model_dir, tmp_path):
    output = tmp_path / "merged"
    result = merge(untrained_adapter(model_dir, tmp_path / "adapter"), output, "--gguf", "f16")
    assert result.returncode == 0, result.stderr[-3000:]
    gguf_path = alone(output / "model-f16.gguf", tmp_path / "alone")
    fields = gguf.GGUFReader(gguf_path).fields
    assert (fields["tokenizer.ggml.model"].contents(), fields["tokenizer.ggml.pre"].contents()) == ("llama", "default")
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is True
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[3:259] == [int(gguf.TokenType.BYTE)] * 256 and types[:3] == [int(gguf.TokenType.CONTROL)] * 3
    assert len(fields["tokenizer.ggml.scores"].contents()) == 512

    original = AutoTokenizer.from_pretrained(output)
    from_file = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    for text in ("Once upon a time, there was a little cat named Tom.", "Lily said: 12 apples and 3 pears!"):
        assert from_file(text)["input_ids"] == original(text)["input_ids"], text
    prompts = [torch.tensor([original("Once upon a time, there was a little girl")["input_ids"]])]
    as_stored = rounded_as_stored(AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32).eval(), "f16")
    difference, _ = largest_difference(reloaded_model(gguf_path), as_stored, prompts)
    assert difference < SAME_WEIGHTS_BOUND, difference


@pytest.mark.real_model
def test_smollm2_exports_with_the_vocabulary_of_its_packaged_gguf(tmp_path):
    """SmolLM2 loaded from its packaged GGUF (made by llama.cpp's converter and llama-quantize) and exported again:
    the vocabulary, merges and pre-tokenizer equal the packaged file's, and the export reads back."""
    from test_gguf import smollm2_gguf

    from alpaca_qlora.modeling import load_base_model, packaged_gguf

    name = smollm2_gguf()  # its converted folder from the user's cache, as every SmolLM2 test (CI time)
    adapter = untrained_adapter(name, tmp_path / "adapter", load=lambda: load_base_model(name, "none", torch.float32))
    output = tmp_path / "merged"
    result = merge(adapter, output, "--gguf", "f16")
    assert result.returncode == 0, result.stderr[-3000:]
    exported = gguf.GGUFReader(output / "model-f16.gguf").fields
    packaged = gguf.GGUFReader(packaged_gguf(name)).fields
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.token_type", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token"):
        assert exported[key].contents() == packaged[key].contents(), key
    assert exported["tokenizer.ggml.pre"].contents() == "smollm"
    gguf_path = alone(output / "model-f16.gguf", tmp_path / "alone")
    prompts = [torch.tensor([AutoTokenizer.from_pretrained(output)("What is the capital of France?")["input_ids"]])]
    as_stored = rounded_as_stored(AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32).eval(), "f16")
    difference, largest = largest_difference(reloaded_model(gguf_path), as_stored, prompts)
    assert difference < 1e-3 * largest, (difference, largest)
