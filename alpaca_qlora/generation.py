"""Generation: decoding settings and their checks, loading a model (+ adapter) for inference, batched
`generate`, and extracting the answer from what the model wrote.

Everything here is shared by the three modes of inference.py (one answer, interactive, batch). The
prompt is always built by prompts.build_prompt with the template the adapter was trained with, so a
model is asked exactly what it learned to answer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .config import QUANTIZATIONS
from .errors import fail
from .modeling import (
    default_device_map, load_base_model, load_tokenizer, resolve_compute_dtype, resolve_model_path, use_packed_cpu_kernel,
)
from .packed_attention import PER_EXAMPLE_ATTENTIONS
from .prompts import PROMPT_TEMPLATES, build_prompt
from .run_folder import RUN_CONFIG

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"

# Values used when a sampling knob is not given: transformers' own defaults, written out so every saved
# line records what was really used (a model's generation_config can carry other defaults, e.g. top_k 20).
SAMPLING_DEFAULTS = {"top_k": 50, "top_p": 1.0, "temperature": 1.0}


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    base_model: str | None = field(
        default=None,
        metadata={"help": "Hub id or local directory of the base model, or of a merged model. Default: the base named in "
                          "the adapter's config. Without --adapter the untuned base runs (the comparison every evaluation needs)."},
    )
    adapter: str | None = field(
        default=None, metadata={"help": "A training run folder (or any PEFT LoRA adapter folder). Its run_config.json fixes the prompt template."}
    )
    quantization: str | None = field(
        default=None,
        metadata={"help": "Base weights at inference: nf4, fp4, int8 or none. Default: what the adapter was trained against "
                          "(run_config.json), none without an adapter.", "choices": QUANTIZATIONS},
    )
    compute_dtype: str | None = field(
        default=None,
        metadata={"help": "auto, bf16, fp16 or fp32. Default: the run's setting, else auto (bf16/fp16 on CUDA, fp32 on CPU).",
                  "choices": ("auto", "bf16", "fp16", "fp32")},
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "alpaca or chat. Default: the adapter's run_config.json (a different value is refused), else alpaca.",
                  "choices": PROMPT_TEMPLATES},
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "Attention kernel (default: the run's, else sdpa)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub. Off unless you trust it."})


@dataclass
class GenerationSettings:
    """Decoding settings. Every one of them is saved with each generation and passed to `generate` as given."""

    top_k: int | None = field(default=None, metadata={"help": "Sample from the k most likely tokens (0: no limit). Giving it turns sampling on. Default 50."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass in (0, 1]. Giving it turns sampling on. Default 1.0."})
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature > 0. Giving it turns sampling on. Default 1.0."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width; > 1 is beam search (no sampling unless --do_sample true)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest answer in tokens."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages repeating tokens (1.0: off)."})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "Never repeat an n-gram of this size (0: off)."})
    do_sample: bool | None = field(
        default=None,
        metadata={"help": "Sample (true) or decode greedily / by beam search (false). Default: on when --temperature, --top_k "
                          "or --top_p is given and --num_beams is 1, off otherwise.", "nargs": "?", "const": True},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the sampling (each batch is seeded from it and its index)."})


SETTING_NAMES = tuple(f.name for f in fields(GenerationSettings))
INT_SETTINGS = {"top_k", "num_beams", "max_new_tokens", "no_repeat_ngram_size", "seed"}
FLOAT_SETTINGS = {"top_p", "temperature", "repetition_penalty"}


# ---------------------------------------------------------------------------------------------
# Settings: validation and resolution (nothing here loads a model)
# ---------------------------------------------------------------------------------------------
def asks_for_sampling(settings: GenerationSettings) -> bool:
    if settings.do_sample is not None:
        return settings.do_sample
    sampling_knob_given = any(getattr(settings, name) is not None for name in SAMPLING_DEFAULTS)
    return sampling_knob_given and settings.num_beams == 1


def check_settings(settings: GenerationSettings, where: str = "") -> None:
    """One-line error for an impossible combination; `where` names a sweep setting."""
    prefix = f"{where}: " if where else ""
    if settings.num_beams < 1:
        fail(f"{prefix}--num_beams must be >= 1, got {settings.num_beams}")
    if settings.max_new_tokens < 1:
        fail(f"{prefix}--max_new_tokens must be >= 1, got {settings.max_new_tokens}")
    if settings.top_k is not None and settings.top_k < 0:
        fail(f"{prefix}--top_k must be >= 0 (0: no limit), got {settings.top_k}")
    if settings.top_p is not None and not 0 < settings.top_p <= 1:
        fail(f"{prefix}--top_p must be in (0, 1], got {settings.top_p}")
    if settings.repetition_penalty <= 0:
        fail(f"{prefix}--repetition_penalty must be > 0 (1.0: off), got {settings.repetition_penalty}")
    if settings.no_repeat_ngram_size < 0:
        fail(f"{prefix}--no_repeat_ngram_size must be >= 0 (0: off), got {settings.no_repeat_ngram_size}")
    if asks_for_sampling(settings) and settings.temperature is not None and settings.temperature <= 0:
        fail(
            f"{prefix}--temperature {settings.temperature} with sampling: the temperature must be > 0; "
            "for greedy decoding leave out --temperature/--top_k/--top_p or pass --do_sample false"
        )


def resolve_settings(settings: GenerationSettings, where: str = "") -> dict:
    """Checked settings with every value filled in: what is saved with each line and passed to `generate`."""
    check_settings(settings, where)
    resolved = asdict(settings)
    for name, default in SAMPLING_DEFAULTS.items():
        if resolved[name] is None:
            resolved[name] = default
    resolved["do_sample"] = asks_for_sampling(settings)
    for name in INT_SETTINGS:
        resolved[name] = int(resolved[name])
    for name in FLOAT_SETTINGS:
        resolved[name] = float(resolved[name])
    return {name: resolved[name] for name in SETTING_NAMES}


def settings_key(resolved: dict) -> str:
    """A canonical string for a resolved setting: equal settings give equal keys."""
    return json.dumps(resolved, sort_keys=True)


def settings_label(resolved: dict) -> str:
    return " ".join(f"{name}={value}" for name, value in resolved.items())


def parse_setting_value(name: str, text: str):
    """A setting's value from text (`/set top_k=10`, `--sweep top_k=1,10`); 'auto'/'none' resets an optional one."""
    if name not in SETTING_NAMES:
        fail(f"unknown setting '{name}' (choose from {', '.join(SETTING_NAMES)})")
    text = text.strip()
    if text.lower() in ("auto", "none", "default"):
        default = GenerationSettings.__dataclass_fields__[name].default
        if default is not None:
            fail(f"{name}={text}: only top_k, top_p, temperature and do_sample can be reset to their default")
        return None
    try:
        if name in INT_SETTINGS:
            return int(text)
        if name in FLOAT_SETTINGS:
            return float(text)
    except ValueError:
        fail(f"{name}={text}: '{text}' is not {'an integer' if name in INT_SETTINGS else 'a number'}")
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    fail(f"{name}={text}: expected true, false or auto")


# ---------------------------------------------------------------------------------------------
# Where the model comes from (reads small JSON files only; nothing is loaded)
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelSource:
    base_model: str
    adapter: str | None
    tokenizer_path: str
    prompt_template: str
    quantization: str
    compute_dtype: str
    double_quant: bool
    quant_storage: str
    attn_implementation: str
    trust_remote_code: bool


def read_json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        fail(f"{path}: cannot read it as JSON ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")


def read_run_config(folder: str | None) -> dict:
    """The training run's run_config.json in a local folder (for a checkpoint-N folder, in its run folder), or {}."""
    if folder is None:
        return {}
    candidates = [Path(folder) / RUN_CONFIG]
    if Path(folder).name.startswith("checkpoint-"):
        candidates.append(Path(folder).parent / RUN_CONFIG)
    found = [path for path in candidates if path.is_file()]
    if not found:
        return {}
    config = read_json_file(found[0])
    return config if isinstance(config, dict) else {}


def adapter_base_model(adapter: str) -> str:
    """The base model named in a local adapter folder's adapter_config.json."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        fail(f"--adapter {adapter}: no such folder")
    config_path = path / ADAPTER_CONFIG
    if not config_path.is_file():
        fail(f"--adapter {adapter}: no {ADAPTER_CONFIG} in it (not a PEFT adapter folder; is the training run finished?)")
    base = read_json_file(config_path).get("base_model_name_or_path")
    if not base:
        fail(f"{config_path}: names no base_model_name_or_path; pass --base_model")
    return base


def check_local_model(base_model: str, origin: str) -> None:
    """A base model given as a path must exist (a hub id is checked when it is loaded)."""
    looks_local = base_model.startswith(("/", "./", "../", "~")) or Path(base_model).expanduser().exists()
    if looks_local and not Path(base_model).expanduser().is_dir():
        fail(f"base model folder {base_model} ({origin}) does not exist; pass --base_model <id|dir>")


def resolve_model_source(args: ModelArguments) -> ModelSource:
    if args.base_model is None and args.adapter is None:
        fail("pass --adapter <run folder> (a fine-tuned model) or --base_model <id|dir> (the untuned base)")
    adapter = str(Path(args.adapter).expanduser().resolve()) if args.adapter else None
    adapter_base = adapter_base_model(adapter) if adapter else None
    base_model = args.base_model or adapter_base
    check_local_model(base_model, "--base_model" if args.base_model else f"from {Path(adapter) / ADAPTER_CONFIG}")
    base_model = resolve_model_path(base_model)
    if adapter_base and resolve_model_path(adapter_base) != base_model:
        print(f"note: --base_model {base_model} differs from the adapter's base {adapter_base}", file=sys.stderr)

    run_config = read_run_config(adapter) if adapter else read_run_config(base_model)
    trained = run_config.get("model", {}) if adapter else {}
    prompt_template = resolve_prompt_template(args.prompt_template, run_config, adapter or base_model)
    has_own_tokenizer = adapter is not None and (Path(adapter) / TOKENIZER_CONFIG).is_file()
    return ModelSource(
        base_model=base_model,
        adapter=adapter,
        tokenizer_path=adapter if has_own_tokenizer else base_model,
        prompt_template=prompt_template,
        quantization=args.quantization or trained.get("quantization", "none"),
        compute_dtype=args.compute_dtype or trained.get("compute_dtype", "auto"),
        double_quant=trained.get("double_quant", True),
        quant_storage=trained.get("bnb_4bit_quant_storage", "uint8"),
        attn_implementation=args.attn_implementation or generation_attention(trained.get("attn_implementation", "sdpa")),
        trust_remote_code=args.trust_remote_code,
    )


def generation_attention(trained_with: str) -> str:
    """The training-only packed attentions (packed_attention.py) generate with the sdpa they wrap."""
    return "sdpa" if trained_with in PER_EXAMPLE_ATTENTIONS else trained_with


def resolve_prompt_template(requested: str | None, run_config: dict, folder: str) -> str:
    trained = run_config.get("data", {}).get("prompt_template")
    if requested and trained and requested != trained:
        fail(
            f"--prompt_template {requested}: {folder} was trained with the '{trained}' template ({RUN_CONFIG}); "
            "leave out --prompt_template so prompts match training"
        )
    return requested or trained or "alpaca"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_for_inference(source: ModelSource):
    """Tokenizer (left padding) and model in eval mode: the base, quantized or not, with the adapter on top."""
    tokenizer = load_tokenizer(source.tokenizer_path, source.trust_remote_code)
    tokenizer.padding_side = "left"
    compute_dtype = resolve_compute_dtype(source.compute_dtype)
    model = load_base_model(
        source.base_model, source.quantization, compute_dtype, source.double_quant,
        source.quant_storage, source.attn_implementation, source.trust_remote_code, device_map=default_device_map(),
        packed_cpu_kernel=use_packed_cpu_kernel(source.quantization, compute_dtype),
    )
    if source.adapter:
        model = attach_adapter(model, source.adapter)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def attach_adapter(model, adapter: str):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        text = str(error).strip()
        fail(f"cannot put the adapter {adapter} on its base model: {text.splitlines()[0] if text else type(error).__name__}")


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def describe_device(model) -> str:
    device = model_device(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"{device.type} ({name})"


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
@dataclass
class Answer:
    text: str  # the answer alone: after the prompt's response marker, cut at the first EOS, stripped
    new_tokens: int  # tokens the model wrote for it, its EOS included when it stopped on its own


def prompt_for(record: dict, template: str, tokenizer) -> str:
    """Exactly the text training put before the answer (prompts.build_prompt, same template)."""
    return build_prompt(record, template, tokenizer)


def stop_token_ids(tokenizer, model) -> list[int]:
    """The tokenizer's EOS (what training appended to every answer) and any the model's generation config adds."""
    ids = [tokenizer.eos_token_id]
    configured = model.generation_config.eos_token_id
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def generate_kwargs(resolved: dict, tokenizer, model) -> dict:
    """The arguments of `generate`: every decoding setting exactly as given, plus pad and stop tokens."""
    kwargs = {name: value for name, value in resolved.items() if name != "seed"}
    return {**kwargs, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": stop_token_ids(tokenizer, model)}


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed % 2**32)


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of one batch: the same for a batch whether the run was interrupted or not."""
    return (seed * 1_000_003 + batch_index) % 2**32


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], resolved: dict, streamer=None) -> list[Answer]:
    """Answers to a batch of prompt texts: left-padded, one `generate` call with the KV cache."""
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model_device(model))
    output = model.generate(**encoded, **generate_kwargs(resolved, tokenizer, model), use_cache=True, streamer=streamer)
    new_ids = output[:, encoded["input_ids"].shape[1] :]
    stops = set(stop_token_ids(tokenizer, model))
    return [extract_answer(row.tolist(), tokenizer, stops) for row in new_ids]


def extract_answer(new_ids: list[int], tokenizer, stops: set[int]) -> Answer:
    """The generated tokens up to the first stop token, as text; the prompt is never part of it."""
    end = next((i for i, token in enumerate(new_ids) if token in stops), None)
    answer_ids = new_ids if end is None else new_ids[:end]
    text = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
    return Answer(text=text, new_tokens=len(new_ids) if end is None else end + 1)
