"""Every automatic choice of a training run, made once, up front, logged, and saved in run_config.json.

The options as given (training/config.py) are never rewritten: the plan holds what runs, and why.
Decided from the options, the hardware, the launcher and the base model's config.json, before any
weights load. One choice needs the loaded model: whether its attention keeps packed examples apart
(`confirm_packing`, a one-time check that can only turn packing off).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch

from ..modeling import DTYPE_NAMES, choose_compute_dtype
from ..run_folder import PACKED_SDPA, PACKED_VARLEN, TRAINING_ONLY_ATTENTIONS
from ..vision import CAUSAL_LM, IMAGE_TEXT_TO_TEXT, model_kind
from ..vision import model_class as kind_class
from .config import CHECKPOINTING_FLAG, TrainArguments, TrainingConfig
from .engines import EngineSettings, read_deepspeed_json, read_engine
from .kernels import liger_plan
from .memory import checkpointing_needed

# Models whose logits are post-processed after the output layer: the chunked loss would skip that step.
POSTPROCESSED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass(frozen=True)
class TrainingPlan:
    device: str  # cuda | cpu
    engine: str  # single | ddp | fsdp | deepspeed
    world_size: int
    compute_dtype: str  # bf16 | fp16 | fp32: what the 4-bit layers dequantize to and multiply in (LoRA: fp32 unless autocast)
    mixed_precision: str  # bf16 | fp16 | no: the Trainer's autocast
    optimizer: str
    packing: bool
    row_length: int | None  # tokens per packed row; None: the whole batch in one row (per-example attention)
    attention: str  # what the model runs: packed_sdpa | packed_varlen | the model's own (sdpa, eager, ...)
    loss: str  # chunked | full_logits
    gradient_checkpointing: bool
    fused_kernels: str  # none | liger: <kernels>
    lora_dropout_rng: str  # torch | pcg64 (the CPU's faster masks, lora_dropout.py)
    evaluation: bool  # held-out loss before and after training (and during it, as --eval_strategy says)
    sampling: str  # random | group_by_length
    nodes: int = 1  # machines the processes run on (WORLD_SIZE / LOCAL_WORLD_SIZE)
    zero_stage: int | None = None  # DeepSpeed's ZeRO stage
    engine_config: str | None = None  # the DeepSpeed JSON file the engine reads, when there is one
    quant_storage: str = "uint8"  # storage dtype of 4-bit weights: the compute dtype when FSDP/ZeRO-3 shard them
    reasons: tuple[tuple[str, str], ...] = ()  # (choice, why) for every choice not given by the user
    model_kind: str = CAUSAL_LM  # causal_lm | image_text_to_text (vision.py): decided from config.json
    fsdp_wrap_classes: tuple[str, ...] = ()  # the layers FSDP wraps (engines.check_wrap_classes), before weights load

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["reasons"] = dict(self.reasons)
        return values

    def describe(self) -> str:
        engine = self.engine + (f" ZeRO-{self.zero_stage}" if self.zero_stage is not None else "")
        nodes = f" ({self.nodes} nodes)" if self.nodes > 1 else ""
        lines = [f"plan: {engine} x{self.world_size}{nodes} on {self.device}, {self.compute_dtype} compute, "
                 f"mixed precision {self.mixed_precision}, optimizer {self.optimizer}",
                 f"      packing {'on' if self.packing else 'off'}"
                 + (f" ({'one row per batch' if self.row_length is None else f'rows of {self.row_length} tokens'})" if self.packing else "")
                 + f", attention {self.attention}, loss {self.loss}, gradient checkpointing "
                 f"{'on' if self.gradient_checkpointing else 'off'}, kernels {self.fused_kernels}, LoRA dropout masks "
                 f"{self.lora_dropout_rng}, "
                 f"held-out evaluation {'on' if self.evaluation else 'off'}, sampling {self.sampling}"]
        if self.model_kind != CAUSAL_LM:
            lines.append(f"      model: {self.model_kind} (QLoRA on the language model; vision tower and projector "
                         "frozen, unquantized)")
        if self.fsdp_wrap_classes:
            lines.append(f"      FSDP wraps: {', '.join(self.fsdp_wrap_classes)}")
        lines += [f"      {choice}: {why}" for choice, why in self.reasons]
        return "\n".join(lines)


def plan_device(train: TrainArguments) -> str:
    return "cuda" if torch.cuda.is_available() and not train.use_cpu else "cpu"


def deepspeed_optimizer(engine: EngineSettings) -> str | None:
    """The optimizer a DeepSpeed config names (it replaces the Trainer's): e.g. AdamW(torch_adam)."""
    if engine.engine != "deepspeed" or not engine.deepspeed_config:
        return None
    optimizer = read_deepspeed_json(engine.deepspeed_config, "DeepSpeed config").get("optimizer")
    if not optimizer:
        return None
    flags = [name for name, value in (optimizer.get("params") or {}).items() if value is True]
    return f"deepspeed:{optimizer['type']}" + (f"({','.join(flags)})" if flags else "")


def model_class(model_config):
    kind = model_kind(model_config)
    return kind_class(kind)._model_mapping.get(type(model_config), None) if kind else None


def choose_loss(config: TrainingConfig, model_config, engine: str) -> tuple[str, str | None]:
    """The chunked loss calls the output layer outside the model's forward, on the labelled positions only."""
    if config.data.loss == "full_logits":
        return "full_logits", None
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    postprocessed = [name for name in POSTPROCESSED_LOGITS if getattr(text_config, name, None) not in (None, 1, 1.0)]
    cls = model_class(model_config)
    if postprocessed:
        return "full_logits", f"the model post-processes its logits ({postprocessed[0]})"
    if cls is None or "logits_to_keep" not in inspect.signature(cls.forward).parameters:
        return "full_logits", "the model's forward has no logits_to_keep (needed to skip its output layer)"
    if engine in ("fsdp", "deepspeed"):
        return "full_logits", f"{engine} shards the output layer, which only the model's own forward may call"
    return "chunked", None


def choose_attention(config: TrainingConfig, device: str) -> tuple[str, str | None]:
    requested = config.model.attn_implementation
    if not config.data.packing or requested not in ("sdpa", PACKED_VARLEN):
        if requested == PACKED_VARLEN:
            return "sdpa", "packed_varlen runs packed rows only, and packing is off"
        return requested, None
    if requested == PACKED_VARLEN:
        from .packed_attention import varlen_supported

        if varlen_supported():
            return PACKED_VARLEN, None
        fallback = PACKED_SDPA if device == "cpu" else "sdpa"
        return fallback, f"packed_varlen needs CUDA (sm80+) and torch >= 2.10; using {fallback}"
    if device == "cpu":
        return PACKED_SDPA, "on the CPU, packed rows run sdpa per example (no mask, no padding)"
    return "sdpa", None


def choose_checkpointing(config: TrainingConfig, model_config, device: str, batch_tokens: int | None,
                         compute: torch.dtype = torch.float32) -> tuple[bool, str | None]:
    """`batch_tokens`: the most tokens one batch can hold (its longest examples); else batch size x max_seq_length."""
    if config.chose_checkpointing():
        return bool(getattr(config.train, CHECKPOINTING_FLAG) or config.train.gradient_checkpointing), None
    if device == "cuda":
        return True, "on GPUs memory limits QLoRA"
    tokens = batch_tokens or config.train.per_device_train_batch_size * config.data.max_seq_length
    bytes_per_value = compute.itemsize
    needed = checkpointing_needed(model_config, tokens, bytes_per_value)
    return needed, (f"the largest batch ({tokens:,} tokens) would need over a quarter of the free RAM for activations"
                    if needed else f"activations of the largest batch ({tokens:,} tokens) fit easily in memory "
                                   "(checkpointing would cost ~25% more compute)")


def choose_mixed_precision(config: TrainingConfig, device: str, compute: torch.dtype = torch.float32) -> tuple[str, str | None]:
    train = config.train
    if {"bf16", "fp16"} & config.given:
        return ("bf16" if train.bf16 else "fp16" if train.fp16 else "no"), None
    if device == "cpu":
        if compute != torch.float32:
            # measured on SmolLM2-135M (bench/results/HISTORY.md, CPU 2026-12-01 evening): bf16 autocast on the CPU is
            # slower than bf16 4-bit layers alone (its casts cost more than its bf16 LoRA, attention and norms save) and
            # no closer to the fp32 gradients
            return "no", (f"none on the CPU: only the 4-bit layers compute in {DTYPE_NAMES[compute]} (autocast measured "
                          "slower here; ask for it with --bf16 true --use_cpu true)")
        return "no", None
    mixed = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return mixed, f"{mixed}: what this GPU supports"


@dataclass(frozen=True)
class Precision:
    """The compute dtype of the 4-bit layers and the mixed precision, decided once per run (choose_precision), before
    the engine's combinations are checked and the plan is made."""

    compute: torch.dtype
    mixed: str  # bf16 | fp16 | no
    reasons: tuple[tuple[str, str], ...]

    @property
    def sixteen_bit(self) -> str:
        """bf16 | fp16 | no: the 16-bit dtype the run computes in anywhere (autocast, or the 4-bit layers alone)."""
        return self.mixed if self.mixed != "no" else {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.compute, "no")


def choose_precision(config: TrainingConfig, engine: str) -> Precision:
    device = plan_device(config.train)
    compute, why_compute = choose_compute_dtype(config.model.compute_dtype, config.model.quantization, device, engine)
    mixed, why_mixed = choose_mixed_precision(config, device, compute)
    reasons = tuple((choice, why) for choice, why in (("compute dtype", why_compute), ("mixed precision", why_mixed)) if why)
    return Precision(compute, mixed, reasons)


def make_plan(config: TrainingConfig, model_config, has_heldout: bool, engine_settings: EngineSettings | None = None,
              batch_tokens: int | None = None, precision: Precision | None = None) -> TrainingPlan:
    """`precision`: as training decided it before checking the engine (choose_precision); decided here when not given."""
    train = config.train
    reasons: list[tuple[str, str]] = []

    def note(choice: str, why: str | None) -> None:
        if why:
            reasons.append((choice, why))

    engine_settings = engine_settings or read_engine(train)
    engine, world_size = engine_settings.engine, engine_settings.world_size
    device = plan_device(train)
    if engine == "deepspeed" and device == "cpu":
        note("device", "DeepSpeed on its CPU accelerator (accelerate's DeepSpeed path needs use_cpu off)")
    if device == "cpu" and world_size > 1 and not train.ddp_backend:
        note("collectives", "gloo, the CPU's backend")
    precision = precision or choose_precision(config, engine)
    compute, mixed = precision.compute, precision.mixed
    reasons += precision.reasons
    optimizer = str(getattr(train.optim, "value", train.optim))
    from_deepspeed = deepspeed_optimizer(engine_settings)
    if from_deepspeed:
        optimizer = from_deepspeed
        note("optimizer", f"the DeepSpeed config {engine_settings.deepspeed_config} names its optimizer, which replaces "
                          "the Trainer's (--optim)")
    elif "optim" not in config.given:
        if engine in ("fsdp", "deepspeed"):
            optimizer = "adamw_torch"
            note("optimizer", f"AdamW: {engine} shards its states (bitsandbytes' paged 8-bit AdamW is QLoRA's choice "
                              "for one process per GPU)")
        else:
            optimizer = "paged_adamw_8bit" if device == "cuda" else "adamw_torch"
            note("optimizer", "paged 8-bit AdamW on CUDA (QLoRA's), AdamW on the CPU")
    quant_storage = config.model.bnb_4bit_quant_storage
    if (engine_settings.shards_parameters and config.model.quantization in ("nf4", "fp4")
            and "bnb_4bit_quant_storage" not in config.given):
        quant_storage = DTYPE_NAMES[compute]
        note("4-bit storage", f"{quant_storage}, the compute dtype: {engine_settings.describe().split(' x')[0]} shards "
                              "4-bit weights stored in it together with the LoRA weights (QLoRA-FSDP recipe)")
    kind = model_kind(model_config) or CAUSAL_LM
    packing = config.data.packing
    if kind == IMAGE_TEXT_TO_TEXT and packing:
        packing = False
        note("packing", "an image-text model trains on padded batches (one example per row, with its image)")
    attention, why = choose_attention(dataclasses.replace(config, data=dataclasses.replace(config.data, packing=packing)), device)
    note("attention", why)
    loss, why = choose_loss(config, model_config, engine)
    note("loss", why)
    checkpointing, why = choose_checkpointing(config, model_config, device, batch_tokens, compute)
    note("gradient checkpointing", why)
    kernels, why = liger_plan(train.use_liger_kernel, model_config)
    note("fused kernels", why)
    dropout_rng = config.lora.lora_dropout_rng
    if dropout_rng == "auto":
        dropout_rng = "pcg64" if device == "cpu" and config.lora.lora_dropout > 0 else "torch"
        if dropout_rng == "pcg64":
            note("LoRA dropout", "masks drawn by NumPy's PCG64 on the CPU (same distribution, 2-3x faster than torch's)")
    evaluation = has_heldout  # before and after training; during training as --eval_strategy says
    if has_heldout != (config.data.val_set_size > 0 or config.data.val_data_path is not None):
        note("held-out evaluation", "no held-out example is left after tokenization")
    if train.neftune_noise_alpha is not None:
        note("NEFTune", f"alpha {train.neftune_noise_alpha}: each example's noise scaled by its own length, "
                        "alpha/sqrt(L d), not by the packed row's (training/neftune.py)")
    sampling = str(getattr(train.train_sampling_strategy, "value", train.train_sampling_strategy))
    if not packing and "train_sampling_strategy" not in config.given:
        sampling = "group_by_length"
        note("sampling", "padded batches are grouped by length (less padding)")
    return TrainingPlan(
        device=device, engine=engine, world_size=world_size, compute_dtype=DTYPE_NAMES[compute], mixed_precision=mixed,
        optimizer=optimizer, packing=packing,
        row_length=None if attention in TRAINING_ONLY_ATTENTIONS else config.data.max_seq_length,
        attention=attention, loss=loss, gradient_checkpointing=checkpointing, fused_kernels=kernels, lora_dropout_rng=dropout_rng,
        evaluation=evaluation, sampling=sampling, nodes=engine_settings.nodes, zero_stage=engine_settings.zero_stage,
        engine_config=engine_settings.deepspeed_config, quant_storage=quant_storage, reasons=tuple(reasons),
        model_kind=kind, fsdp_wrap_classes=tuple(engine_settings.fsdp_wrap_classes),
    )


def confirm_packing(plan: TrainingPlan, attention_keeps_examples_apart: bool, config: TrainingConfig) -> TrainingPlan:
    """The one choice made on the loaded model: without attention that keeps packed examples apart, pad instead."""
    if not plan.packing or attention_keeps_examples_apart:
        return plan
    sampling = plan.sampling if "train_sampling_strategy" in config.given else "group_by_length"
    why = (f"attention '{plan.attention}' of this model lets packed examples attend to each other; "
           "padded batches grouped by length instead")
    return dataclasses.replace(plan, packing=False, row_length=None, sampling=sampling,
                               reasons=plan.reasons + (("packing", why),))


def checkpointing_kwargs(train: TrainArguments) -> dict:
    """Non-reentrant checkpointing unless the user chose: what peft and torch recommend."""
    return getattr(train, f"{CHECKPOINTING_FLAG}_kwargs") or {"use_reentrant": False}


def training_arguments(config: TrainingConfig, plan: TrainingPlan) -> TrainArguments:
    """The Trainer's arguments: the options as given, with the plan's choices filled in (a new object)."""
    train = config.train
    kwargs_name = f"{CHECKPOINTING_FLAG}_kwargs"
    changes = {
        CHECKPOINTING_FLAG: plan.gradient_checkpointing,
        kwargs_name: checkpointing_kwargs(train),
        "eval_strategy": train.eval_strategy if plan.evaluation else "no",
        "train_sampling_strategy": plan.sampling,
        "optim": "adamw_torch" if plan.optimizer.startswith("deepspeed:") else plan.optimizer,
        "bf16": plan.mixed_precision == "bf16",
        "fp16": plan.mixed_precision == "fp16",
        "use_liger_kernel": False,  # applied to the model by kernels.py, so the Trainer never sees it
        "dataloader_pin_memory": plan.device == "cuda" and train.dataloader_pin_memory,
        # transformers asks for use_cpu before it autocasts on the CPU; DeepSpeed runs on its own CPU accelerator,
        # which accelerate's DeepSpeed path reaches only with use_cpu off
        "use_cpu": (train.use_cpu or plan.device == "cpu") and plan.engine != "deepspeed",
    }
    if plan.device == "cpu" and plan.world_size > 1 and not train.ddp_backend:
        # the CPU's collective backend: accelerate would take MPI where torch has it, and under DeepSpeed on the
        # CPU it would leave the backend unset and count one process
        changes["ddp_backend"] = "gloo"
    if CHECKPOINTING_FLAG != "gradient_checkpointing":
        changes["gradient_checkpointing"] = plan.gradient_checkpointing
    return dataclasses.replace(train, **changes)
