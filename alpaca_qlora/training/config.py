"""The training job's options, as the user gives them: typed dataclasses parsed with HfArgumentParser.

Precedence, lowest first: the defaults below, a `--config run.yaml|json` file, then command-line flags.
Every TrainingArguments flag works as in any Hugging Face script. Nothing here decides anything
automatic (that is training/plan.py): these are the options as given, checked, and saved as such.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import asdict, dataclass, field

from transformers import TrainingArguments

from ..cli import ArgumentParser, fail, given_flags, parse_with_config
from ..data.mix import check_mix_options
from ..data.prompts import check_prompt_template
from ..data.records import DEFAULT_DATA_PATH, DEFAULT_FIELDS
from ..modeling import COMPUTE_DTYPES, QUANTIZATIONS

DEFAULT_BASE_MODEL = "Qwen/Qwen2.5-0.5B"
LOSSES = ("chunked", "full_logits")

# transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name still works,
# with a warning); older 5.x releases know only the old name.
_TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
CHECKPOINTING_FLAG = "activation_checkpointing" if "activation_checkpointing" in _TRAINING_FIELDS else "gradient_checkpointing"
CHECKPOINTING_NAMES = {"gradient_checkpointing", "activation_checkpointing"}


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
        metadata={"help": "What the 4-bit layers dequantize to and multiply in: auto (bf16 on GPUs that have it, fp16 on older "
                          "GPUs; on the CPU bf16 where it multiplies bf16 natively (AVX512-BF16/AMX), else fp32), bf16, fp16, fp32.",
                  "choices": COMPUTE_DTYPES},
    )
    bnb_4bit_quant_storage: str = field(
        default="uint8", metadata={"help": "Storage dtype of 4-bit weights; bf16 for FSDP+QLoRA.", "choices": ("uint8", "bf16", "fp16", "fp32")}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel: sdpa, eager, flash_attention_2, flex_attention, or packed_varlen (torch's varlen flash kernel for packed rows; CUDA, torch >= 2.10)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub. Off unless you trust it."})


# pissa and loftq change the base weights as well as the adapter (training/lora_init.py says how and what it costs).
LORA_INITS = ("default", "gaussian", "pissa", "loftq")


@dataclass
class LoraArguments:
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "all-linear, or module names such as q_proj,v_proj (comma-separated, or a list in --config)."}
    )
    use_dora: bool = field(default=False, metadata={"help": "DoRA (peft): LoRA on the direction, a learned magnitude per "
                                                          "output; slower steps."})
    use_rslora: bool = field(default=False, metadata={"help": "rsLoRA (peft): scale alpha / sqrt(r) instead of alpha / r."})
    init_lora_weights: str = field(
        default="default",
        metadata={"help": "LoRA initialisation (peft): default (A Kaiming-uniform, B zero), gaussian (A normal, B zero), "
                          "pissa (the principal singular directions of each weight; the adapter is saved converted to a "
                          "plain LoRA of rank 2r) or loftq (the NF4 quantization error; CUDA only in peft; with --quantization "
                          "nf4 --double_quant false --loftq_iter 1 only, see training/lora_init.py).",
                  "choices": LORA_INITS},
    )
    loftq_iter: int = field(default=1, metadata={"help": "Alternating quantize / SVD iterations of LoftQ (peft's loftq_iter): 1 "
                                                         "only (with more, peft's base is not the NF4 quantization of the "
                                                         "original weights that generation loads)."})
    lora_dropout_rng: str = field(
        default="auto",
        metadata={"help": "Random masks of the LoRA dropout: auto (pcg64 on the CPU, torch on GPUs), torch, or pcg64 "
                          "(NumPy's generator: same distribution, 2-3x faster on the CPU).", "choices": ("auto", "torch", "pcg64")},
    )


@dataclass
class DataArguments:
    data_path: list[str] = field(
        default_factory=lambda: [DEFAULT_DATA_PATH],
        metadata={"help": "Alpaca .json list, .jsonl file or datasets hub id; several: their records together (see "
                          "--data_weights). Records may be conversations (messages, or ShareGPT's conversations; "
                          "--prompt_template chat). Default: the Stanford Alpaca data the checkout ships (DATA_LICENSE); "
                          "an installed copy elsewhere downloads it (sha256-checked)."},
    )
    data_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One weight per --data_path file: the training records are drawn from the files in these "
                          "proportions (seeded by --split_seed; a file repeats when its share exceeds its records). The "
                          "held-out records are not weighted: they come from the pool of all the files' records (a file "
                          "of weight 0 gives held-out records too), so the held-out loss measures that pool. "
                          "Default: every record of every file once."},
    )
    data_fields: str | None = field(
        default=None,
        metadata={"help": 'Field names per --data_path file, as JSON: \'{"b.jsonl": {"instruction": "question", '
                          '"output": "answer"}}\' (a mapping in a --config file); the --*_field flags for the others.'},
    )
    instruction_field: str = field(default=DEFAULT_FIELDS["instruction"], metadata={"help": "Field of a record holding the instruction."})
    input_field: str = field(default=DEFAULT_FIELDS["input"], metadata={"help": "Field holding the input (context); a record without it has an empty input."})
    output_field: str = field(default=DEFAULT_FIELDS["output"], metadata={"help": "Field holding the answer to train on."})
    max_samples: int | None = field(
        default=None,
        metadata={"help": "How many records the run uses, held-out ones included: a deterministic subset of the records "
                          "(seeded by --split_seed); with --data_weights, how many are drawn, which may exceed the records "
                          "(files then repeat: an upsampling target). Default: all the records, once."},
    )
    val_set_size: float = field(default=2000, metadata={"help": "Held-out records: a count, or a fraction below 1. 0 turns evaluation off."})
    val_data_path: str | None = field(
        default=None,
        metadata={"help": "Held-out records read from this .json/.jsonl file (same fields as --data_path) instead of split off "
                          "--data_path, which is then all training data; --val_set_size is not used (leave it out or 0)."},
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the subset and held-out split (independent of --seed)."})
    prompt_template: str = field(
        default="alpaca", metadata={"help": "alpaca (stanford_alpaca templates), chat (the tokenizer's chat template), or a "
                                            "template file (.json/.yaml: prompt_input, prompt_no_input, response_split, as "
                                            "alpaca-lora's templates/); the run keeps a copy."}
    )
    train_on_inputs: bool = field(default=False, metadata={"help": "Also train on the prompt tokens (off: the prompt is masked from the loss)."})
    max_seq_length: int = field(default=512, metadata={"help": "Longest example in tokens, EOS included; longer ones are truncated and counted."})
    packing: bool = field(default=True, metadata={"help": "Padding-free packing of examples into rows, with no attention across examples."})
    loss: str = field(
        default="chunked",
        metadata={"help": "chunked: cross-entropy on the labelled positions only, a chunk at a time (no full-vocabulary logits); "
                          "full_logits: the model's own loss over every position (same value).", "choices": LOSSES},
    )


@dataclass
class RunArguments:
    config: str | None = field(default=None, metadata={"help": "YAML or JSON file with any of these options; flags override it."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace the run in an existing run folder (never other files)."})


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

    def __post_init__(self):
        from .engines import check_deepspeed_source

        check_deepspeed_source(self)  # before transformers/accelerate read DeepSpeed's file
        super().__post_init__()


ARGUMENT_CLASSES = (BaseModelArguments, DataArguments, LoraArguments, RunArguments, TrainArguments)


@dataclass
class TrainingConfig:
    """The options as given (defaults, file, flags): what run_config.json saves beside the plan."""

    model: BaseModelArguments
    data: DataArguments
    lora: LoraArguments
    run: RunArguments
    train: TrainArguments
    given: frozenset[str] = frozenset()  # option names set by the user (file or flags), not left at their default

    def to_dict(self) -> dict:
        train = {k: v for k, v in self.train.to_dict().items() if not k.startswith("_")}
        data = asdict(self.data)
        if len(self.data.data_path) == 1:  # one file is saved as before, a path: earlier run folders resume and read alike
            data["data_path"] = self.data.data_path[0]
        return {"model": asdict(self.model), "data": data, "lora": asdict(self.lora),
                "run": asdict(self.run), "train": train}

    def chose_checkpointing(self) -> bool:
        return bool(CHECKPOINTING_NAMES & self.given)


def build_parser() -> ArgumentParser:
    return ArgumentParser(ARGUMENT_CLASSES, description="QLoRA instruction fine-tuning on Alpaca-format data.")


def parse_training_config(argv: list[str] | None = None) -> TrainingConfig:
    argv = list(sys.argv[1:] if argv is None else argv)
    (model, data, lora, run, train), file_values = parse_with_config(build_parser(), argv)
    config = TrainingConfig(model=model, data=data, lora=lora, run=run, train=train,
                            given=frozenset(given_flags(argv) | set(file_values)))
    check_values(config)
    return config


def check_values(config: TrainingConfig) -> None:
    """Ranges the libraries would only check mid-run (or never): one line naming the flag, before anything is written."""
    train, data, lora = config.train, config.data, config.lora

    def positive(name: str, value, allow_zero: bool = False) -> None:
        if value is None:
            return
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            fail(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "num_train_epochs", "logging_steps", "save_steps", "eval_steps"):
        positive(name, getattr(train, name))
    for name in ("learning_rate", "weight_decay", "max_grad_norm", "warmup_steps"):  # a learning rate of 0: a no-op run
        positive(name, getattr(train, name), allow_zero=True)
    if train.max_steps == 0 or train.max_steps < -1:
        fail(f"--max_steps must be > 0 (or -1 to train --num_train_epochs), got {train.max_steps}")
    positive("max_seq_length", data.max_seq_length)
    check_prompt_template(data.prompt_template)
    if data.max_seq_length < 2:
        fail(f"--max_seq_length must be at least 2 (a prompt token and EOS), got {data.max_seq_length}")
    positive("val_set_size", data.val_set_size, allow_zero=True)
    if data.val_data_path is not None and "val_set_size" in config.given and data.val_set_size != 0:
        fail(f"--val_data_path {data.val_data_path} and --val_set_size {data.val_set_size} both choose the held-out "
             "records; pass one (--val_set_size 0 with --val_data_path)")
    positive("max_samples", data.max_samples)
    check_mix_options(data.data_path, data.data_weights, data.data_fields)
    positive("lora_r", lora.lora_r)
    positive("lora_alpha", lora.lora_alpha)
    if not 0 <= lora.lora_dropout < 1:
        fail(f"--lora_dropout must be in [0, 1), got {lora.lora_dropout}")
    if not lora.lora_target_modules.replace(",", "").strip():
        fail("--lora_target_modules is empty; use all-linear or module names such as q_proj,v_proj")
    for name in ("instruction_field", "input_field", "output_field"):
        if not getattr(data, name).strip():
            fail(f"--{name} is empty")
    if not train.output_dir:
        fail("--output_dir is empty")
