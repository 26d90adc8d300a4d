"""Typed configuration of the training job, parsed with HfArgumentParser.

Precedence, lowest first: the defaults below, device-dependent defaults (bf16 and paged 8-bit AdamW
on CUDA), a `--config run.yaml|json` file, then command-line flags. Every TrainingArguments flag
works as in any Hugging Face script.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import asdict, dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments

from ..cli import fail, read_config_file
from ..data.prompts import PROMPT_TEMPLATES
from ..modeling import COMPUTE_DTYPES, QUANTIZATIONS

DEFAULT_BASE_MODEL = "Qwen/Qwen2.5-0.5B"

# transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name still works,
# with a warning); older 5.x releases know only the old name.
_TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
CHECKPOINTING_FLAG = "activation_checkpointing" if "activation_checkpointing" in _TRAINING_FIELDS else "gradient_checkpointing"


@dataclass
class BaseModelArguments:
    base_model: str = field(
        default=DEFAULT_BASE_MODEL, metadata={"help": "Hugging Face hub id or local directory of the base causal LM."}
    )
    quantization: str = field(
        default="nf4",
        metadata={"help": "Base weights: nf4 (QLoRA), fp4, int8 (bitsandbytes) or none (plain LoRA).", "choices": QUANTIZATIONS},
    )
    double_quant: bool = field(default=True, metadata={"help": "Quantize the 4-bit quantization constants too (QLoRA)."})
    compute_dtype: str = field(
        default="auto",
        metadata={"help": "Compute dtype: auto (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU), bf16, fp16, fp32.",
                  "choices": COMPUTE_DTYPES},
    )
    bnb_4bit_quant_storage: str = field(
        default="uint8", metadata={"help": "Storage dtype of 4-bit weights; bf16 for FSDP+QLoRA.", "choices": ("uint8", "bf16", "fp16", "fp32")}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel: sdpa, eager, flash_attention_2, flex_attention, or packed_varlen (torch's varlen flash kernel for packed rows; CUDA, torch >= 2.10)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub. Off unless you trust it."})


@dataclass
class LoraArguments:
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "all-linear, or comma-separated module names such as q_proj,v_proj."}
    )


@dataclass
class DataArguments:
    data_path: str = field(
        default="alpaca_data.json",
        metadata={"help": "Alpaca .json list, .jsonl file or datasets hub id. The default file is downloaded (sha256-checked) when missing."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use a deterministic subset of this many records."})
    val_set_size: float = field(default=2000, metadata={"help": "Held-out records: a count, or a fraction below 1. 0 turns evaluation off."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the subset and held-out split (independent of --seed)."})
    prompt_template: str = field(
        default="alpaca", metadata={"help": "alpaca (stanford_alpaca templates) or chat (the tokenizer's chat template).", "choices": PROMPT_TEMPLATES}
    )
    train_on_inputs: bool = field(default=False, metadata={"help": "Also train on the prompt tokens (off: the prompt is masked from the loss)."})
    max_seq_length: int = field(default=512, metadata={"help": "Longest example in tokens, EOS included; longer ones are truncated and counted."})
    packing: bool = field(default=True, metadata={"help": "Padding-free packing of examples into rows, with no attention across examples."})


@dataclass
class RunArguments:
    config: str | None = field(default=None, metadata={"help": "YAML or JSON file with any of these options; flags override it."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Delete an existing non-empty --output_dir first."})


@dataclass
class TrainArguments(TrainingArguments):
    """TrainingArguments with defaults for QLoRA instruction tuning (qlora / alpaca-lora practice)."""

    output_dir: str | None = field(default="runs/qlora-alpaca", metadata={"help": "The run folder."})
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 16
    learning_rate: float = 2e-4
    num_train_epochs: float = 3.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 0.3
    logging_steps: float = 10
    logging_first_step: bool = True
    eval_strategy: str = "steps"
    eval_steps: float | None = 200
    save_steps: float = 200
    save_total_limit: int | None = 3
    remove_unused_columns: bool = False
    prediction_loss_only: bool = True


ARGUMENT_CLASSES = (BaseModelArguments, DataArguments, LoraArguments, RunArguments, TrainArguments)


@dataclass
class TrainingConfig:
    model: BaseModelArguments
    data: DataArguments
    lora: LoraArguments
    run: RunArguments
    train: TrainArguments
    checkpointing_explicit: bool = False  # the user set gradient/activation checkpointing; else a policy decides
    fused_kernels: str = "none"  # what --use_liger_kernel turned into on this machine (kernels.py)

    def to_dict(self) -> dict:
        train = {k: v for k, v in self.train.to_dict().items() if not k.startswith("_")}
        return {"model": asdict(self.model), "data": asdict(self.data), "lora": asdict(self.lora),
                "run": asdict(self.run), "train": train}


def device_defaults() -> dict:
    """Defaults that depend on the hardware: bf16 where the GPU has it, fp16 on older GPUs, paged 8-bit AdamW on CUDA."""
    if not torch.cuda.is_available():
        return {"optim": "adamw_torch", "dataloader_pin_memory": False}
    bf16 = torch.cuda.is_bf16_supported()
    return {"optim": "paged_adamw_8bit", "bf16": bf16, "fp16": not bf16}


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENT_CLASSES, description="QLoRA instruction fine-tuning on Alpaca-format data.")


def parse_training_config(argv: list[str] | None = None) -> TrainingConfig:
    argv = sys.argv[1:] if argv is None else argv
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument("--config")
    config_path = pre_parser.parse_known_args(argv)[0].config

    parser = build_parser()
    known = {action.dest for action in parser._actions}
    parser.set_defaults(**{CHECKPOINTING_FLAG: True}, **device_defaults())
    file_values = {}
    if config_path:
        file_values = read_config_file(config_path)
        unknown = sorted(set(file_values) - known)
        if unknown:
            fail(f"--config {config_path}: unknown option(s) {', '.join(unknown)}")
        parser.set_defaults(**file_values)
    try:
        model, data, lora, run, train = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # TrainingArguments' own checks of flag combinations
        fail(str(error).strip().splitlines()[0])
    if getattr(train, f"{CHECKPOINTING_FLAG}_kwargs") is None:
        setattr(train, f"{CHECKPOINTING_FLAG}_kwargs", {"use_reentrant": False})
    checkpointing_names = {"gradient_checkpointing", "activation_checkpointing"}
    explicit = bool(checkpointing_names & set(file_values)) or any(
        arg.lstrip("-").split("=")[0] in checkpointing_names for arg in argv if arg.startswith("--")
    )
    return TrainingConfig(model=model, data=data, lora=lora, run=run, train=train, checkpointing_explicit=explicit)


def set_checkpointing(train: TrainArguments, enabled: bool) -> None:
    for name in ("gradient_checkpointing", "activation_checkpointing"):
        if hasattr(train, name):
            setattr(train, name, enabled)
