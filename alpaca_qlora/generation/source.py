"""Where the model of a generation comes from: base, adapter, prompt template and precision.

Reads small JSON files only (the adapter's config and the training run's run_config.json); nothing is
loaded, so a wrong path or option fails before any model does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cli import fail
from ..data.prompts import check_prompt_template, is_template_file, load_template_file
from ..modeling import (
    COMPUTE_DTYPES, DTYPE_NAMES, DTYPES, QUANTIZATIONS, base_model_kind, check_model_available, choose_compute_dtype,
    cpu_has_packed_4bit_kernel, resolve_model_path,
    use_packed_cpu_kernel,
)
from ..run_folder import (
    ADAPTER_CONFIG, PROMPT_TEMPLATE_COPY, RUN_CONFIG, TOKENIZER_CONFIG, TRAINING_ONLY_ATTENTIONS, adapter_base_model,
    owning_run,
)


@dataclass
class InferenceModelArguments:
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
        metadata={"help": "auto, bf16, fp16 or fp32. Default: the dtype the run's plan trained in (run_config.json), "
                          "else auto, decided as training decides it (bf16/fp16 on CUDA; on the CPU bf16 4-bit layers "
                          "where the CPU multiplies bf16 natively, else fp32).",
                  "choices": COMPUTE_DTYPES},
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "alpaca, chat, or a template file (.json/.yaml). Default: the adapter's (its run_config.json; a "
                          "different value is refused), else alpaca."},
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "Attention kernel (default: the run's, else sdpa)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub. Off unless you trust it."})


@dataclass
class ModelSource:
    base_model: str
    adapter: str | None
    tokenizer_path: str
    prompt_template: str
    quantization: str
    compute_dtype: str  # bf16 | fp16 | fp32, decided once (generation_compute_dtype)
    double_quant: bool
    quant_storage: str
    attn_implementation: str
    trust_remote_code: bool
    model_kind: str = "causal_lm"  # or image_text_to_text (vision.py): a processor, and images in prompts

    def precision(self) -> dict:
        """The precision the base runs at: saved with every generation, so like is compared with like."""
        dtype = DTYPES[self.compute_dtype]
        packed = use_packed_cpu_kernel(self.quantization, dtype) and cpu_has_packed_4bit_kernel()
        return {"quantization": self.quantization, "compute_dtype": DTYPE_NAMES[dtype],
                "cpu_4bit_kernel": None if self.quantization not in ("nf4", "fp4") or torch.cuda.is_available()
                else "packed bf16 (AVX512-BF16)" if packed else "dequantize"}

    def describe_precision(self) -> str:
        precision = self.precision()
        weights = {"nf4": "4-bit NF4", "fp4": "4-bit FP4", "int8": "8-bit", "none": "full-precision"}[self.quantization]
        kernel = f", {precision['cpu_4bit_kernel']} kernel" if precision["cpu_4bit_kernel"] else ""
        return f"{weights} base weights, {precision['compute_dtype']} compute{kernel}"


def read_run_config(folder: str | None) -> dict:
    """The training run's run_config.json in a local folder (for a checkpoint-N folder, in its run folder), or {}."""
    run = owning_run(folder) if folder is not None else None
    return run.config() if run is not None else {}


def resolve_model_source(args: InferenceModelArguments) -> ModelSource:
    if args.base_model is None and args.adapter is None:
        fail("pass --adapter <run folder> (a fine-tuned model) or --base_model <id|dir> (the untuned base)")
    adapter = str(Path(args.adapter).expanduser().resolve()) if args.adapter else None
    adapter_base = adapter_base_model(adapter) if adapter else None
    base_model = args.base_model or adapter_base
    check_model_available(base_model, "--base_model" if args.base_model else f"base model (from {Path(adapter) / ADAPTER_CONFIG})")
    base_model = resolve_model_path(base_model)
    if adapter_base and resolve_model_path(adapter_base) != base_model:
        print(f"note: --base_model {base_model} differs from the adapter's base {adapter_base}", file=sys.stderr)

    run_config = read_run_config(adapter) if adapter else read_run_config(base_model)
    trained = run_config.get("model", {}) if adapter else {}
    prompt_template = resolve_prompt_template(args.prompt_template, run_config, adapter or base_model)
    has_own_tokenizer = adapter is not None and (Path(adapter) / TOKENIZER_CONFIG).is_file()
    quantization = args.quantization or trained.get("quantization", "none")
    return ModelSource(
        base_model=base_model,
        adapter=adapter,
        tokenizer_path=adapter if has_own_tokenizer else base_model,
        prompt_template=prompt_template,
        quantization=quantization,
        compute_dtype=generation_compute_dtype(args.compute_dtype, quantization, run_config if adapter else {}),
        double_quant=trained.get("double_quant", True),
        quant_storage=trained.get("bnb_4bit_quant_storage", "uint8"),
        attn_implementation=args.attn_implementation or generation_attention(trained.get("attn_implementation", "sdpa")),
        trust_remote_code=args.trust_remote_code,
        model_kind=base_model_kind(base_model, args.trust_remote_code),
    )


def generation_compute_dtype(given: str | None, quantization: str, run_config: dict | None = None) -> str:
    """The compute dtype, decided once: the flag; else the dtype the run's plan trained in (when the base is loaded as
    it trained); else `auto` by training's own rule (modeling.choose_compute_dtype)."""
    trained = (run_config or {}).get("model", {})
    planned = (run_config or {}).get("plan", {}).get("compute_dtype")
    if given is None and planned in DTYPES and quantization == trained.get("quantization"):
        return planned
    name = given or trained.get("compute_dtype", "auto")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return DTYPE_NAMES[choose_compute_dtype(name, quantization, device)[0]]


def generation_attention(trained_with: str) -> str:
    """The training-only packed attentions generate with the sdpa they wrap."""
    return "sdpa" if trained_with in TRAINING_ONLY_ATTENTIONS else trained_with


def resolve_prompt_template(requested: str | None, run_config: dict, folder: str) -> str:
    """The template to build prompts with: the run's (a template file: the copy in the run folder), else the one
    asked for, else alpaca; a request that differs from the run's is refused."""
    trained = run_config.get("data", {}).get("prompt_template")
    if requested:
        check_prompt_template(requested)
    if trained and is_template_file(trained):
        copy = str(Path(folder) / PROMPT_TEMPLATE_COPY)
        if requested and not (is_template_file(requested) and load_template_file(requested) == load_template_file(copy)):
            fail(f"--prompt_template {requested}: {folder} was trained with the template file {trained} (its copy: "
                 f"{copy}); leave out --prompt_template so prompts match training")
        return copy
    if requested and trained and requested != trained:
        fail(
            f"--prompt_template {requested}: {folder} was trained with the '{trained}' template ({RUN_CONFIG}); "
            "leave out --prompt_template so prompts match training"
        )
    return requested or trained or "alpaca"


