"""A merged Llama, Mistral or Qwen2 model as one GGUF file (llama.cpp's format, which Ollama and LM Studio run).

Written with the `gguf` package, llama.cpp's own Python library: its writer, its map of tensor names, its
quantizers and its SpecialVocab (merges, special token ids, chat template). llama.cpp's converter is the reference
for names, tensor types and metadata (docs/dev/gguf-export-design.md records what was read there). We do not call
that converter, convert_hf_to_gguf.py: it is a script of the llama.cpp repository, not an installable package (it
needs that repository's conversion/ folder and a gguf-py of the same commit; the `gguf` wheel ships only
gguf_dump and its kin, and the PyPI names that wrap the script are third-party repackagings), it reads a model
folder from disk (the merged model would be written and read back), and it writes no Modelfile.

Supported (ARCHITECTURES): model_type `llama` (Llama 1/2, SmolLM2, stories260K, the tests' tiny Llama) and `mistral`,
both written as llama.cpp's `llama` architecture with q/k rows permuted, as llama.cpp's converter writes them (it
registers MistralForCausalLM on its LlamaModel); `qwen2` (Qwen2, Qwen2.5), written as llama.cpp's `qwen2` with its
q/k/v biases and no permutation (its Qwen2Model). All with default RoPE, full attention in every layer (a Mistral's
sliding window: see attention_span) and no Llama attention or MLP biases; tokenizers that are byte-level BPE (GPT-2
style: SmolLM2, Qwen2, the tiny tokenizer) or SentencePiece-style BPE with byte fallback (Llama 2, Mistral 7B,
stories260K). Anything else is refused in one line before a weight is loaded.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, LlamaFileType, TokenType
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

from ..cli import fail
from ..modeling import PACKAGE_PREFIX, is_gguf, packaged_gguf, resolve_model_path
from ..files import read_json_object

# --gguf NAME: the type of the weight matrices, and the file type llama.cpp records for it. f32 is not offered on the
# command line (twice f16's size, for differences below f16's rounding); the tests' GGUF fixture uses it (synthetic.py).
GGUF_TYPES = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
OFFERED_TYPES = ("f16", "q8_0")


@dataclass(frozen=True)
class Architecture:
    """How llama.cpp's converter writes one model_type (its conversion/llama.py and conversion/qwen.py)."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool  # llama: q/k rows interleaved for its RoPE (LlamaModel.permute); qwen2 (NEOX RoPE): as they are
    examples: str  # for the refusal line


ARCHITECTURES = {
    "llama": Architecture(gguf.MODEL_ARCH.LLAMA, True, "Llama, SmolLM2, stories260K"),
    "mistral": Architecture(gguf.MODEL_ARCH.LLAMA, True, "Mistral"),  # llama.cpp: MistralForCausalLM is a LlamaModel
    "qwen2": Architecture(gguf.MODEL_ARCH.QWEN2, False, "Qwen2, Qwen2.5"),
}
GGUF_SOURCE = "gguf_source.json"  # modeling.gguf_folder's record of the GGUF file a cached folder was converted from
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def gguf_file_name(kind: str) -> str:
    return f"model-{kind}.gguf"


# ---------------------------------------------------------------------------------------------
# What can be written: checked from the config and the tokenizer, before any weight is loaded
# ---------------------------------------------------------------------------------------------
def rope_parameters(config) -> dict:
    return getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def supported_line() -> str:
    """'llama (Llama, SmolLM2, stories260K), mistral (Mistral) and qwen2 (Qwen2, Qwen2.5)'"""
    named = [f"{model_type} ({written.examples})" for model_type, written in ARCHITECTURES.items()]
    return ", ".join(named[:-1]) + " and " + named[-1]


def architecture(config) -> Architecture:
    return ARCHITECTURES[config.model_type]


def check_exportable(config, name: str) -> Architecture:
    """Refuse, in one line, a model the export cannot write faithfully; else how llama.cpp holds it."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        fail(f"--gguf: {name} is a '{model_type}' model; the GGUF export writes model_type {supported_line()} only; "
             "nothing was written")
    rope_type = rope_parameters(config).get("rope_type", "default")
    if rope_type != "default":  # llama3/yarn/linear scaling need keys and a rope_freqs tensor not written here
        fail(f"--gguf: {name} uses RoPE scaling '{rope_type}'; the GGUF export writes default RoPE only; nothing was written")
    for flag in ("attention_bias", "mlp_bias"):  # Llama's optional biases (Qwen2's q/k/v biases are no flag: written)
        if getattr(config, flag, False):
            fail(f"--gguf: {name} has {flag} set; the GGUF export writes {model_type} models without attention or MLP "
                 "biases only; nothing was written")
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):  # Qwen2 with use_sliding_window
        fail(f"--gguf: {name} uses sliding-window attention in some layers; llama.cpp's {model_type} attends over the "
             "whole context in every layer; nothing was written")
    if head_dim(config) * config.num_attention_heads != config.hidden_size:
        fail(f"--gguf: {name} has head_dim {head_dim(config)} with {config.num_attention_heads} heads and hidden size "
             f"{config.hidden_size}; the GGUF export writes head_dim = hidden_size / heads only; nothing was written")
    return architecture(config)


def attention_span(config) -> int:
    """The longest context in which llama.cpp computes what transformers computes: max_position_embeddings, or a
    Mistral's sliding window when shorter (Mistral 7B v0.1: 4096). llama.cpp's converter writes no window for a
    Mistral (LlamaModel.set_gguf_parameters) and llama.cpp attends over the whole context, while transformers lets a
    token see the last `sliding_window` positions only: the two agree up to that length. The Modelfile's num_ctx
    stays within it."""
    window = getattr(config, "sliding_window", None)
    return min(config.max_position_embeddings, window) if window else config.max_position_embeddings


@dataclass
class GgufVocab:
    """The tokenizer as llama.cpp reads it (tokenizer.ggml.*), decided before the weights are loaded."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE)
    pre: str  # tokenizer.ggml.pre: which pre-tokenizer (split regex) llama.cpp runs before BPE
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None  # "llama" only: llama.cpp merges the highest-scoring pair first
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None  # "llama" only


def gguf_field(path: Path, key: str):
    """One metadata value of a GGUF file (read with the gguf package's reader), or None."""
    found = gguf.GGUFReader(path).fields.get(key)
    return found.contents() if found is not None else None


def source_gguf(base_name: str) -> Path | None:
    """The GGUF file the base model came from: `--base_model x.gguf`, `package:NAME`, or a folder converted from one."""
    if base_name.startswith(PACKAGE_PREFIX):
        return packaged_gguf(base_name)
    if is_gguf(base_name):
        return Path(resolve_model_path(base_name))
    record = Path(base_name).expanduser() / GGUF_SOURCE
    if record.is_file():
        source = Path(str(read_json_object(record, "the GGUF a cached model folder came from").get("file", "")))
        return source if source.is_file() else None
    return None


# llama.cpp picks its pre-tokenizer by name (src/llama-vocab.cpp). A tokenizer.json's pre_tokenizer that is exactly
# one of these structures is that name; anything else is refused rather than guessed: a wrong name changes the token
# ids llama.cpp produces (digits, punctuation) without any error.
GPT2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
SMOLLM_DIGITS = {"type": "Digits", "individual_digits": True}
# Qwen2's split (its tokenizer.json; the regex llama.cpp's "qwen2" runs, with (?i:...) spelled out there, and the one
# transformers' GGUF loader rebuilds for "qwen2"), then byte-level without GPT-2's regex. The regex is transformers'
# own constant rather than a copy: its Qwen2Tokenizer builds exactly this pre-tokenizer.
QWEN2_SPLIT = {"type": "Split", "pattern": {"Regex": QWEN2_PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False}
BYTE_LEVEL_AFTER_SPLIT = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}


def _matches(spec: dict | None, expected: dict) -> bool:
    return isinstance(spec, dict) and all(spec.get(key) == value for key, value in expected.items())


def byte_level_pre(pre_tokenizer: dict | None) -> str | None:
    """llama.cpp's name for a byte-level tokenizer's pre-tokenizer: GPT-2's regex alone is "gpt-2"; single digits
    split first, then GPT-2's regex, is "smollm" (SmolLM, SmolLM2); Qwen2's split, then byte-level without a
    regex, is "qwen2" (Qwen2, Qwen2.5)."""
    if _matches(pre_tokenizer, GPT2_BYTE_LEVEL):
        return "gpt-2"
    steps = pre_tokenizer.get("pretokenizers") if isinstance(pre_tokenizer, dict) and pre_tokenizer.get("type") == "Sequence" else None
    if steps and len(steps) == 2 and _matches(steps[0], SMOLLM_DIGITS) and _matches(steps[1], GPT2_BYTE_LEVEL):
        return "smollm"
    if steps and len(steps) == 2 and _matches(steps[0], QWEN2_SPLIT) and _matches(steps[1], BYTE_LEVEL_AFTER_SPLIT):
        return "qwen2"
    return None


def vocabulary(tokenizer, vocab: dict[str, int], vocab_size: int, byte_fallback: bool) -> tuple[list[str], list[int]]:
    """The id-ordered vocabulary padded to the embedding's rows, with llama.cpp's token types (as its converter
    assigns them: added special tokens CONTROL, other added tokens USER_DEFINED, <0xNN> BYTE, padding UNUSED)."""
    by_id = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(int(TokenType.UNUSED))
        elif index in added:
            tokens.append(token)
            types.append(int(TokenType.CONTROL if added[index].special else TokenType.USER_DEFINED))
        else:
            tokens.append(token)
            types.append(int(TokenType.BYTE if byte_fallback and BYTE_TOKEN.fullmatch(token) else TokenType.NORMAL))
    return tokens, types


def merge_scores(tokens: list[str], merges: list) -> list[float]:
    """Scores for a SentencePiece-style vocabulary whose tokenizer.json has merges but no scores.

    llama.cpp merges the adjacent pair whose joined token scores highest; the merges list is in priority order. So a
    token scores minus the rank of the first merge that makes it, and a token no merge makes scores below them all.
    (llama.cpp's own converter writes -1000 for every token here, which leaves its merge order to chance.)"""
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        ranks.setdefault(left + right, rank)
    unmade = -float(len(merges) + 1)
    return [-float(ranks[token]) if token in ranks else unmade for token in tokens]


def added_specials(tokenizer) -> tuple[bool, bool]:
    """Whether the tokenizer puts BOS before and EOS after a text, by what it does (its files can say otherwise)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and full[:1] == [bos] and plain[:1] != [bos]
    add_eos = eos is not None and full[-1:] == [eos] and plain[-1:] != [eos]
    return add_bos, add_eos


def gguf_vocab(tokenizer, vocab_size: int, base_name: str) -> GgufVocab:
    """The tokenizer's GGUF description, or one line saying why it cannot be written."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        fail(f"--gguf: the tokenizer of {base_name} is not a `tokenizers` (fast) tokenizer; the GGUF export reads "
             "the vocabulary from tokenizer.json; nothing was written")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        fail(f"--gguf: the tokenizer of {base_name} has ids beyond the model's {vocab_size} embedding rows; nothing was written")
    byte_fallback = bool(model.get("byte_fallback"))
    decoder = (spec.get("decoder") or {}).get("type")
    add_bos, add_eos = added_specials(tokenizer)
    if model.get("type") == "BPE" and byte_fallback:  # SentencePiece-style BPE (Llama 2, stories260K)
        tokens, types = vocabulary(tokenizer, vocab, vocab_size, byte_fallback=True)
        first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"][:1])
        return GgufVocab("llama", "default", tokens, types, merge_scores(tokens, model.get("merges") or []), add_bos,
                         add_eos, add_space_prefix=bool(first) and first[0].startswith("\u2581"))
    if model.get("type") == "BPE" and decoder == "ByteLevel":  # byte-level BPE (GPT-2 style: SmolLM2, tiny)
        tokens, types = vocabulary(tokenizer, vocab, vocab_size, byte_fallback=False)
        return GgufVocab("gpt2", byte_level_pre_name(spec.get("pre_tokenizer"), base_name), tokens, types,
                         add_bos=add_bos, add_eos=add_eos)
    fail(f"--gguf: the tokenizer of {base_name} is a {model.get('type')} tokenizer (decoder {decoder}); the GGUF export "
         "writes byte-level BPE (GPT-2 style) and SentencePiece-style BPE vocabularies only; nothing was written")


def byte_level_pre_name(pre_tokenizer: dict | None, base_name: str) -> str:
    """tokenizer.ggml.pre for a byte-level vocabulary: the base GGUF's own value when the base came from one (the
    tokenizer transformers rebuilt from a GGUF has lost steps such as SmolLM's digit split), else by structure."""
    source = source_gguf(base_name)
    if source is not None and gguf_field(source, "tokenizer.ggml.model") == "gpt2":
        pre = gguf_field(source, "tokenizer.ggml.pre")
        if pre:
            return pre
    pre = byte_level_pre(pre_tokenizer)
    if pre is None:
        fail(f"--gguf: cannot tell which llama.cpp pre-tokenizer matches the tokenizer of {base_name} (its "
             f"pre_tokenizer is {json.dumps(pre_tokenizer)[:120]}); the export knows GPT-2's ('gpt-2'), SmolLM's "
             "('smollm') and Qwen2's ('qwen2'); nothing was written")
    return pre


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def llama_cpp_permute(weight: np.ndarray, n_head: int, n_kv_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved for its RoPE (its converter's LlamaModel.permute); transformers' GGUF
    loader undoes it (LlamaTensorProcessor._reverse_permute_weights)."""
    n_head = n_kv_head if n_kv_head != n_head else n_head
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@dataclass(frozen=True)
class PlannedTensor:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType


def tensor_type(gguf_name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    """As llama.cpp's converter: norms and 1-D tensors F32; a matrix whose rows do not split into whole blocks of the
    quantized type falls back to F16 (the tiny Llama's ffn_down, 176 wide, for q8_0's blocks of 32)."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return GGMLQuantizationType.F16
    return qtype


def plan_tensors(state: dict, config, qtype: GGMLQuantizationType) -> list[PlannedTensor]:
    """Every weight (and Qwen2's q/k/v biases) with its GGUF name and type; an output layer equal to the embedding
    (tied) is not written, as llama.cpp and transformers' GGUF loader both read a missing output.weight as tied."""
    arch = architecture(config).arch
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = "lm_head.weight" in state and torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    planned, unknown = [], []
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            unknown.append(hf_name)
            continue
        shape = tuple(tensor.shape)
        planned.append(PlannedTensor(hf_name, gguf_name, shape, tensor_type(gguf_name, shape, qtype)))
    if unknown:
        fail(f"--gguf: the merged model has weights llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]} has no place for "
             f"({', '.join(unknown[:4])}); nothing was written")
    return planned


def converted(tensor: torch.Tensor, planned: PlannedTensor, config) -> np.ndarray:
    """One weight as the bytes the file holds: fp32, q/k permuted for llama.cpp's RoPE where its architecture wants
    it (llama, mistral; not qwen2), then cast or quantized by the gguf package (gguf.quants: F16 is numpy's cast,
    Q8_0 bit-exact with ggml's reference quantizer)."""
    data = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
    permute = architecture(config).permute_qk
    if permute and ".attn_q." in planned.gguf_name:
        data = llama_cpp_permute(data, config.num_attention_heads, config.num_attention_heads)
    elif permute and ".attn_k." in planned.gguf_name:
        data = llama_cpp_permute(data, config.num_attention_heads, config.num_key_value_heads)
    with np.errstate(over="ignore"):
        stored = gguf.quants.quantize(np.ascontiguousarray(data), planned.qtype)
    if stored.dtype == np.float16 and not np.isfinite(stored).all():
        fail(f"--gguf: {planned.hf_name} holds values beyond float16's range (|x| > 65504), which an f16 tensor cannot "
             "store; nothing was written")
    return stored


def write_metadata(writer: gguf.GGUFWriter, config, name: str, file_type: LlamaFileType) -> None:
    """The hyper-parameters under llama.cpp's keys, prefixed with the architecture's name (its
    TextModel/LlamaModel.set_gguf_parameters; transformers reads the same keys back through GGUF_CONFIG_MAPPING
    ["llama"] and ["qwen2"]). vocab_size and rope.dimension_count are written for qwen2 too, where the converter leaves
    them out: their values are the ones llama.cpp derives without them (the token list's length, the head size)."""
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_vocab(writer: gguf.GGUFWriter, vocab: GgufVocab, tokenizer_folder: Path) -> None:
    """Vocabulary, types and scores from `vocab`; merges, special token ids and the chat template read by the gguf
    package's SpecialVocab from the saved tokenizer files (as llama.cpp's converter does); whether BOS/EOS are added
    is what the tokenizer does (`vocab`), not what its files say."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    special = gguf.SpecialVocab(tokenizer_folder, load_merges=True, n_vocab=len(vocab.tokens))
    special.add_special_token.update({"bos": vocab.add_bos, "eos": vocab.add_eos})
    special.add_to_gguf(writer, quiet=True)


def write_gguf(model, vocab: GgufVocab, tokenizer_folder: Path, path: Path, kind: str, name: str) -> dict:
    """The model as one GGUF file at `path`, written beside it under a `.partial` name and renamed when whole.

    Streams: the tensor table first, then one weight converted at a time (never a second copy of the model in
    memory). Returns what merge_info.json records about it."""
    qtype, file_type = GGUF_TYPES[kind]
    config = model.config
    state = model.state_dict()
    planned = plan_tensors(state, config, qtype)
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[architecture(config).arch])
    try:
        write_metadata(writer, config, name, file_type)
        write_vocab(writer, vocab, tokenizer_folder)
        for entry in planned:  # stored as bytes: each tensor's byte size follows from its shape and type
            byte_shape = gguf.quants.quant_shape_to_byte_shape(entry.shape, entry.qtype)
            writer.add_tensor_info(entry.gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=entry.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for entry in planned:
            writer.write_tensor_data(converted(state[entry.hf_name], entry, config))
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, path)
    return {
        "file": path.name, "type": kind, "tokenizer": vocab.model, "pre_tokenizer": vocab.pre,
        "f16_fallbacks": [entry.gguf_name for entry in planned
                          if entry.qtype == GGMLQuantizationType.F16 and qtype != GGMLQuantizationType.F16],
    }
