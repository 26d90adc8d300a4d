"""The training job, top to bottom: options -> data -> plan -> quantized base + LoRA -> Trainer -> run folder.

    train(config)
      check_resume / check_output_dir   nothing is written before every check a user can fail has passed
      load_split, tokenize_split        records -> split -> tokenized examples (data/)
      make_plan                         every automatic choice, once (plan.py)
      build_model                       quantized base, attention, LoRA, kernels
      start_run_folder                  run_config.json (options + plan), split, run_info.json
      trainer.train                     one step: collators.py -> trainer.py compute_loss -> loss.py
      finish_run                        adapter, eval_results.json, loss curve, model card
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import set_seed
from transformers.trainer_callback import ProgressCallback

from ..cli import check_writable_folder, fail
from ..data.prompts import is_template_file, load_template_file
from ..data.mix import changed_data_file, load_data_files, read_data_file, split_files
from ..data.records import DataSplit, make_split
from ..data.tokenization import TokenizationReport, tokenize_records
from ..files import atomic_write_json, first_changed_option, staging_folder
from ..modeling import DTYPES, load_base_model, load_model_config, load_tokenizer_or_processor, resolve_model_path
from ..plots import plot_loss_curve
from ..run_folder import (
    CHECKPOINT_PREFIX, LOSS_CURVE, MODEL_CARD, PROMPT_TEMPLATE_COPY, RUN_INFO, STAGING_PREFIX, TRAINER_STATE, RunFolder,
    check_output_dir, git_commit, library_versions, machine_info,
)
from ..vision import IMAGE_FIELD, IMAGE_TEXT_TO_TEXT, LORA_EXCLUDE_PATTERN, model_kind, not_a_generator
from .collators import ImageCollator, PackedCollator, PaddedCollator, token_counts
from .config import TrainingConfig, parse_training_config
from .engines import EngineSettings, check_combination, check_wrap_classes, read_engine
from .kernels import apply_liger_kernels
from .lora_dropout import use_pcg64_dropout
from .lora_init import InitialAdapter, check_lora_init, initialise_aside, modifies_base
from .model_card import model_card
from .packed_attention import register_packed_attention
from .plan import (
    Precision, TrainingPlan, checkpointing_kwargs, choose_precision, confirm_packing, make_plan, plan_device, training_arguments,
)
from .trainer import EngineStartCallback, InstructionTrainer, LossProgressCallback, TrainLogCallback

# Options a resumed run may change: how long it trains and how it logs, evaluates and saves. Any other
# option differing from the run's own would make the checkpoint meaningless (or fail to load).
RESUMABLE_CHANGES = {
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "config", "max_steps", "num_train_epochs",
    "logging_steps", "logging_first_step", "logging_strategy", "eval_steps", "eval_strategy", "save_steps",
    "save_strategy", "save_total_limit", "per_device_eval_batch_size", "report_to", "run_name", "logging_dir",
    "dataloader_num_workers", "disable_tqdm", "use_cpu", "ddp_backend",
}


# ---------------------------------------------------------------------------------------------
# Checks before anything is written
# ---------------------------------------------------------------------------------------------
def resolve_resume(config: TrainingConfig) -> Path | None:
    """--resume_from_checkpoint: a checkpoint folder, or true for the newest one in the run folder."""
    resume = config.train.resume_from_checkpoint
    if resume is None or str(resume).lower() in ("", "false", "no"):
        return None
    folder = RunFolder(Path(config.train.output_dir))
    if str(resume).lower() in ("true", "yes", "1", "last"):
        checkpoint = folder.last_checkpoint() if folder.path.is_dir() else None
        if checkpoint is None and folder.finished_step() is None:
            fail(f"--resume_from_checkpoint true: no {CHECKPOINT_PREFIX}* folder in {folder.path}")
        return checkpoint or folder.path
    if not (Path(resume) / TRAINER_STATE).is_file():
        fail(f"--resume_from_checkpoint {resume}: not a checkpoint folder (no {TRAINER_STATE})")
    return Path(resume)


def check_resume_options(config: TrainingConfig, folder: RunFolder) -> None:
    """A resumed run must be the same run: the first option that differs from the run's own is named."""
    changed = first_changed_option(folder.config(), config.to_dict(), ("model", "data", "lora", "train"),
                                   may_change=RESUMABLE_CHANGES, only_recorded=True)
    if changed is not None:
        _, name, recorded, given = changed
        fail(f"--resume_from_checkpoint: --{name} is {given!r} here but {recorded!r} in {folder.file('run_config.json')}; "
             "resume with the run's own options (nothing was changed)")


def check_resume_engine(folder: RunFolder, engine: EngineSettings) -> None:
    """A checkpoint resumes under the engine and the number of processes that wrote it (its optimizer state and,
    under FSDP/ZeRO, its weights are split per process)."""
    saved = folder.info().get("engine") if folder.file(RUN_INFO).is_file() else None
    if not saved:
        saved = {"engine": "single", "world_size": 1, "zero_stage": None}  # runs from before engines were recorded
    same = (saved.get("engine"), saved.get("world_size"), saved.get("zero_stage")) == (engine.engine, engine.world_size, engine.zero_stage)
    if not same:
        then = ("one process" if saved.get("engine") == "single" else
                f"{saved.get('engine')}" + (f" ZeRO-{saved.get('zero_stage')}" if saved.get("zero_stage") is not None else "")
                + f" x{saved.get('world_size')}")
        fail(f"--resume_from_checkpoint: {folder.file('run_info.json')} was trained with {then}; resume with the same "
             f"engine and number of processes (now: {engine.describe()})")


def finished_and_unchanged(config: TrainingConfig, folder: RunFolder) -> int | None:
    """The step a finished run ended at, when resuming asks for no more steps than it trained; else None."""
    step = folder.finished_step()
    if step is None:
        return None
    saved_train = folder.config().get("train", {})
    if config.train.max_steps > 0:
        return step if config.train.max_steps <= step else None
    same_epochs = saved_train.get("max_steps", -1) <= 0 and saved_train.get("num_train_epochs") == config.train.num_train_epochs
    return step if same_epochs else None


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    split: DataSplit
    tokenizer: object
    train_examples: list[dict]
    val_examples: list[dict]
    reports: dict[str, TokenizationReport]


def load_split(config: TrainingConfig) -> DataSplit:
    """Load, validate and split the records: the data's mistakes are found before any model file is read.

    Several --data_path files are concatenated or drawn by --data_weights (data/mix.py)."""
    data = config.data
    fields = {"instruction": data.instruction_field, "input": data.input_field, "output": data.output_field}
    files = load_data_files(data.data_path, fields, data.data_fields, data.prompt_template)
    if data.val_data_path is None:
        split = split_files(files, data.data_weights, data.val_set_size, data.max_samples, data.split_seed)
    else:  # the held-out records come from their own file: nothing is split off --data_path
        if not Path(data.val_data_path).is_file():
            fail(f"--val_data_path {data.val_data_path}: no such file")
        split = split_files(files, data.data_weights, 0, data.max_samples, data.split_seed)
        val_file = read_data_file(data.val_data_path, fields, data.prompt_template)
        split = make_split(split.train, val_file.records, {**split.sources, "val_data_path": val_file.facts()})
    print(f"data: {len(split.train)} training and {len(split.val)} held-out records; "
          f"{split.empty_outputs} with an empty output (kept: they teach the model to stop)")
    if len(files) > 1:
        print("data files: " + "; ".join(f"{facts['path']}: {facts['train']} training, {facts['val']} held-out"
                                         for facts in split.sources["files"]) + f" ({split.sources['mix']})")
    return split


def check_model_kind(config: TrainingConfig, model_config, split: DataSplit) -> str:
    """The base must generate text; records with an image need an image-text model."""
    kind = model_kind(model_config)
    if kind is None:
        fail(f"--base_model {config.model.base_model}: {not_a_generator(model_config)}")
    with_image = next((r for r in split.train + split.val if r.get(IMAGE_FIELD) is not None), None)
    if with_image is not None and kind != IMAGE_TEXT_TO_TEXT:
        fail(f"{' '.join(config.data.data_path)}: record {with_image['id']!r} has an '{IMAGE_FIELD}', but --base_model "
             f"{config.model.base_model} is a text-only model; use an image-text model (LLaVA) or drop the images")
    return kind


def tokenize_split(config: TrainingConfig, split: DataSplit, kind: str = "causal_lm") -> PreparedData:
    data = config.data
    tokenizer = load_tokenizer_or_processor(resolve_model_path(config.model.base_model), kind, config.model.trust_remote_code)
    reports, tokenized = {}, {}
    sources = {"train": " ".join(data.data_path), "held-out": data.val_data_path or " ".join(data.data_path)}
    for name, records in (("train", split.train), ("held-out", split.val)):
        tokenized[name], reports[name] = tokenize_records(
            records, tokenizer, data.prompt_template, data.max_seq_length, data.train_on_inputs, sources[name]
        )
        print(reports[name].summary(name))
    if not tokenized["train"]:
        fail("no training example is left after tokenization; raise --max_seq_length")
    return PreparedData(split, tokenizer, tokenized["train"], tokenized["held-out"], reports)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
def lora_config(config: TrainingConfig, plan: TrainingPlan):
    """peft's LoraConfig for the options as given."""
    from peft import LoftQConfig, LoraConfig

    lora = config.lora
    targets = lora.lora_target_modules
    targets = targets if targets == "all-linear" else [m.strip() for m in targets.split(",") if m.strip()]
    # An image-text model: LoRA on its language model only (the vision tower and projector stay frozen as loaded).
    exclude = {"exclude_modules": LORA_EXCLUDE_PATTERN} if plan.model_kind == IMAGE_TEXT_TO_TEXT else {}
    init = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "loftq": "loftq"}[lora.init_lora_weights]
    loftq = {"loftq_config": LoftQConfig(loftq_bits=4, loftq_iter=lora.loftq_iter)} if init == "loftq" else {}
    return LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM", use_dora=lora.use_dora,
                      use_rslora=lora.use_rslora, init_lora_weights=init, **exclude, **loftq)


def add_lora(model, config: TrainingConfig, plan: TrainingPlan, checkpointing_kwargs: dict,
             initial: InitialAdapter | None = None):
    """LoRA on the base: a fresh one, or the initial adapter a base-modifying initialisation set aside (trainable)."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=plan.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=checkpointing_kwargs)
    elif plan.gradient_checkpointing:
        model.enable_input_require_grads()
    try:
        if initial is not None:
            model = PeftModel.from_pretrained(model, str(initial.adapter), is_trainable=True)
        else:
            model = get_peft_model(model, lora_config(config, plan))
    except ValueError as error:
        fail(f"--lora_target_modules {config.lora.lora_target_modules}: {str(error).strip().splitlines()[0]}")
    # adapter_config.json names the base as the user gave it (a GGUF file, not its converted cache folder, nor the
    # modified base set aside by PiSSA / LoftQ)
    model.peft_config["default"].base_model_name_or_path = resolve_model_path(config.model.base_model)
    return model


def initialise_modified_base(config: TrainingConfig, plan: TrainingPlan) -> tuple[InitialAdapter, float]:
    """PiSSA / LoftQ: peft initialises on the base in the compute dtype; the result is set aside (lora_init.py).

    Returns the aside and this step's peak memory (GiB, as peak_memory_gib measures it). The 16/32-bit base is freed
    here, before the quantized one loads (initialise_aside's own references are gone, this function's `full` is the
    last). On CUDA the allocator's cache is then emptied and its peak reset, so the run's peak_memory_gib is the
    training's own and the initialisation's is recorded apart (eval_results.json: initialisation_peak_memory_gib).
    On the CPU the resident set's peak cannot be reset: there peak_memory_gib includes the initialisation."""
    set_seed(config.train.seed)
    full = load_base_model(
        resolve_model_path(config.model.base_model), "none", DTYPES[plan.compute_dtype], config.model.double_quant,
        plan.quant_storage, "sdpa", config.model.trust_remote_code, device_map=device_map(plan, "none"),
        kind=plan.model_kind,
    )
    try:
        initial = initialise_aside(full, lora_config(config, plan))
    except ValueError as error:
        fail(f"--lora_target_modules {config.lora.lora_target_modules}: {str(error).strip().splitlines()[0]}")
    del full
    gc.collect()
    peak = peak_memory_gib()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return initial, peak


def build_model(config: TrainingConfig, plan: TrainingPlan, initial: InitialAdapter | None = None):
    """The quantized base with the plan's attention, LoRA on top, and the plan's kernels.

    `initial`: PiSSA / LoftQ's modified base and initial adapter (initialise_modified_base), used instead of the
    base as given and a fresh LoRA."""
    set_seed(config.train.seed)  # the LoRA initialisation is random: same seed, same starting adapter
    loaded_attention = "sdpa" if plan.attention in ("packed_sdpa", "packed_varlen") else plan.attention
    base = str(initial.base) if initial is not None else resolve_model_path(config.model.base_model)
    model = load_base_model(
        base, config.model.quantization, DTYPES[plan.compute_dtype],
        config.model.double_quant, plan.quant_storage, loaded_attention, config.model.trust_remote_code,
        device_map=device_map(plan, config.model.quantization), kind=plan.model_kind,
    )
    if initial is not None:
        initial.drop_base()
    model.config.use_cache = False  # a KV cache hides packing from the attention mask (field notes)
    if loaded_attention != plan.attention:
        model.set_attn_implementation(register_packed_attention(plan.attention))
    model = add_lora(model, config, plan, checkpointing_kwargs(config.train), initial)
    if plan.lora_dropout_rng == "pcg64":
        use_pcg64_dropout(model)
    apply_liger_kernels(model, plan.fused_kernels, config.train.liger_kernel_config)
    return model


def device_map(plan: TrainingPlan, quantization: str = "none"):
    """Where the weights load. On GPUs each process's own GPU (LOCAL_RANK), also under FSDP/ZeRO-3 for a quantized
    base, which bitsandbytes quantizes on the GPU it lands on (FSDP2 / DeepSpeed then shard it); None on the CPU and
    for a 16/32-bit base under FSDP/DeepSpeed, which place it themselves (ZeRO-3 partitions it as it loads)."""
    if plan.device != "cuda" or (plan.engine in ("fsdp", "deepspeed") and quantization == "none"):
        return None
    import os

    return {"": int(os.environ.get("LOCAL_RANK", 0))}


@torch.no_grad()
def attention_keeps_examples_apart(model, token_ids: list[int]) -> bool:
    """Check on the real model that two examples packed in one row do not attend to each other.

    Models whose attention ignores restarting position ids would silently mix examples (trl#1230)."""
    first, second = token_ids[:7], token_ids[7:16]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits[0]
    packed_ids = torch.tensor([first + second], device=device)
    positions = torch.tensor([list(range(len(first))) + list(range(len(second)))], device=device)
    packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits[0, len(first):]
    model.train(was_training)
    scale = float(alone.abs().max()) + 1.0
    return float((packed - alone).abs().max()) <= 1e-2 * scale


def largest_batch_tokens(data: PreparedData, config: TrainingConfig) -> int:
    """Tokens in the largest batch the data can form: its longest examples, one batch's worth."""
    lengths = sorted((len(example["input_ids"]) for example in data.train_examples), reverse=True)
    return sum(lengths[: config.train.per_device_train_batch_size])


def make_collator(plan: TrainingPlan, tokenizer):
    if plan.model_kind == IMAGE_TEXT_TO_TEXT:
        return ImageCollator(processor=tokenizer, pad_token_id=tokenizer.tokenizer.pad_token_id)
    if plan.packing:
        return PackedCollator(pad_token_id=tokenizer.pad_token_id, max_row_length=plan.row_length,
                              sequence_boundaries=plan.attention == "packed_varlen")
    return PaddedCollator(pad_token_id=tokenizer.pad_token_id)


def padding_share(collator, examples: list[dict], batch_size: int) -> float:
    """Share of padding tokens over the training set batched in file order (a fixed yardstick)."""
    total = real = 0
    if isinstance(collator, ImageCollator):  # the labels alone: no image need be read to count tokens
        collator = PaddedCollator(pad_token_id=collator.pad_token_id)
    for start in range(0, len(examples), batch_size):
        batch_total, batch_real, _ = token_counts(collator(examples[start : start + batch_size])["labels"])
        total += batch_total
        real += batch_real
    return (total - real) / total if total else 0.0


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------
def start_run_folder(config: TrainingConfig, plan: TrainingPlan, data: PreparedData, share: float, args,
                     engine: EngineSettings) -> RunFolder:
    """A fresh run: the options as given with the plan as resolved, the split, and what the run starts from."""
    folder = RunFolder(Path(args.output_dir))
    if args.process_index != 0:
        return folder
    if config.run.overwrite_output_dir and folder.path.is_dir() and folder.is_run_folder():
        folder.clear()
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_config({**config.to_dict(), "plan": plan.to_dict()})
    if is_template_file(config.data.prompt_template):  # generation reads this copy: the file may move or change
        atomic_write_json(folder.file(PROMPT_TEMPLATE_COPY),
                          dataclasses.asdict(load_template_file(config.data.prompt_template)))
    folder.write_split(data.split.val, [record["id"] for record in data.split.train])  # val.jsonl only when there is one
    folder.write_info({
        "versions": library_versions(),
        "machine": machine_info(),
        "git_commit": git_commit(),
        "data": {
            "train_records": len(data.split.train),
            "val_records": len(data.split.val),
            "train_examples": len(data.train_examples),
            "val_examples": len(data.val_examples),
            "empty_outputs": data.split.empty_outputs,
            "sources": data.split.sources,  # each file's path, sha256, records and what it gave (data/mix.py)
            "tokenization": {name: vars(report) for name, report in data.reports.items()},
            "padding_share": share,
        },
        "engine": engine.to_dict(),  # the engine, the world size and the nodes, as launched
        "plan": plan.to_dict(),
    })
    return folder


def check_resumed_split(folder: RunFolder, split: DataSplit) -> None:
    """A resumed run trains on the data it started with: every data file's bytes (the sha256 run_info.json recorded
    of each, data/mix.py) and the training records' ids (train_ids.json); the first difference is named."""
    recorded = folder.info().get("data", {}).get("sources", {}) if folder.file(RUN_INFO).is_file() else {}
    changed = changed_data_file(recorded if isinstance(recorded, dict) else {}, split.sources)
    if changed is not None:
        path, then, now = changed
        fail(f"--resume_from_checkpoint: {path} has changed since the run started (sha256 {now}, but "
             f"{folder.file(RUN_INFO)} recorded {then}); resume with the data the run started with")
    saved_ids = folder.train_ids()
    if saved_ids is not None and saved_ids != [record["id"] for record in split.train]:
        fail(f"--resume_from_checkpoint: the data options select other training records than "
             f"{folder.file('train_ids.json')} records; resume with the run's own options")


def build_trainer(args, plan: TrainingPlan, data: PreparedData, model, collator, folder: RunFolder) -> InstructionTrainer:
    trainer = InstructionTrainer(
        model=model, args=args, plan=plan, train_dataset=data.train_examples,
        eval_dataset=data.val_examples if plan.evaluation else None, eval_examples=data.val_examples,
        data_collator=collator, processing_class=data.tokenizer, callbacks=[TrainLogCallback(folder)],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossProgressCallback())
    return trainer


def peak_memory_gib() -> float:
    """This process's peak memory: the GPU's allocations on CUDA, else the resident set (a resumed run: since resuming)."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # kilobytes on Linux


def held_bytes(tensor) -> int:
    """Bytes of `tensor` this process holds: its ZeRO-3 partition, its FSDP2 shard, or the whole tensor."""
    if hasattr(tensor, "ds_tensor"):
        tensor = tensor.ds_tensor
    elif hasattr(tensor, "to_local"):
        tensor = tensor.to_local()
    return tensor.numel() * tensor.element_size()


def memory_held(trainer) -> dict[str, float]:
    """What this process holds of the model's weights and of the optimizer's states (MiB): the engines' sharding,
    counted tensor by tensor (the resident set also counts the runtime, the activations and the allocator's cache).

    Recorded in eval_results.json after training (no cost during it): the engines benchmark's per-process columns
    (BENCHMARKS.md, engines) and the sharding tests (tests/test_scale_out.py) read it."""
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    parameters = list(model.parameters())
    optimizer = trainer.optimizer
    while getattr(optimizer, "optimizer", None) is not None and optimizer.optimizer is not optimizer:
        optimizer = optimizer.optimizer  # accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> torch's AdamW
    states = [value for state in getattr(optimizer, "state", {}).values() for value in state.values()
              if torch.is_tensor(value) and value.dim() > 0]
    mib = 2**20
    return {"parameters_mib": round(sum(held_bytes(p) for p in parameters) / mib, 3),
            "trainable_parameters_mib": round(sum(held_bytes(p) for p in parameters if p.requires_grad) / mib, 3),
            "optimizer_states_mib": round(sum(held_bytes(v) for v in states) / mib, 3)}


def per_process(value, world_size: int) -> list:
    """`value` from every process, in rank order (a collective: every process calls it)."""
    if world_size <= 1:
        return [value]
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def adapter_checksums(model, world_size: int) -> list[float]:
    """Sum of every trainable weight, per process: equal values mean the processes agree (DDP: whole copies).
    Once, after training; tests/test_scale_out.py reads it to check that DDP's ranks end identical."""
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
    return per_process(checksum, world_size)


def adapter_sharded(plan: TrainingPlan) -> bool:
    """Whether the engine splits the adapter's weights over the processes (FSDP, ZeRO-3)."""
    return plan.engine == "fsdp" or (plan.engine == "deepspeed" and plan.zero_stage == 3)


def gathered_adapter(trainer, plan: TrainingPlan) -> dict | None:
    """The whole adapter's weights on the main process, where the engine shards them (FSDP, ZeRO-3); None where
    every process holds them whole. A collective: every process calls it.

    The engines' own gathers, as Trainer.save_model uses them: DeepSpeed's 16-bit consolidation of the trainable
    weights only (exclude_frozen_parameters, as the Trainer does for PEFT under ZeRO-3), accelerate's
    get_state_dict under FSDP2 (a full state dict on rank 0, moved to its CPU)."""
    if plan.engine == "deepspeed" and plan.zero_stage == 3:
        return trainer.model_wrapped._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    if plan.engine == "fsdp":
        return trainer.accelerator.get_state_dict(trainer.model)
    return None


def save_adapter(model, tokenizer, config: TrainingConfig, results: dict, folder: RunFolder, state_dict=None,
                 initial: InitialAdapter | None = None) -> list[str]:
    """Adapter, tokenizer and model card into the run folder, each file whole (written aside, then renamed).

    `state_dict`: the gathered weights of a sharded engine (PEFT keeps the adapter's own from it). `initial`: a
    PiSSA adapter is converted for the original base (lora_init.py)."""
    conversion = initial.conversion() if initial is not None else {}
    with staging_folder(folder.path, STAGING_PREFIX) as staging:
        model.save_pretrained(staging, safe_serialization=True, state_dict=state_dict, **conversion)
        tokenizer.save_pretrained(staging)
        (staging / MODEL_CARD).write_text(model_card(config, folder, results), encoding="utf-8")
        names = sorted(path.name for path in staging.iterdir())
        for name in names:
            (staging / name).replace(folder.file(name))
    return names


def finish_run(trainer, data: PreparedData, config: TrainingConfig, folder: RunFolder, results: dict, state_dict=None,
               initial: InitialAdapter | None = None) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model) if state_dict is not None else trainer.model
    files = save_adapter(model, data.tokenizer, config, results, folder, state_dict, initial)
    info = folder.info()
    folder.write_info({**info, "files": sorted(set(info.get("files", [])) | set(files))})
    folder.write_eval_results(results)
    plot_loss_curve(folder.log(), folder.file(LOSS_CURVE), title=f"{folder.path.name}: loss",
                    before_training=results.get("before_training", {}).get("eval_loss"))
    if "after_training" in results:
        before = results.get("before_training", {}).get("eval_loss", float("nan"))
        print(f"held-out loss: {before:.4f} before training, {results['after_training']['eval_loss']:.4f} after")
    print(f"run folder: {folder.path}")


def params_partitioned(model) -> bool:
    """Whether DeepSpeed ZeRO-3 partitioned the weights as they loaded (zero.Init): no forward before the engine."""
    return any(hasattr(parameter, "ds_id") for parameter in model.parameters())


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def check_engine(config: TrainingConfig) -> tuple[EngineSettings, Precision]:
    """The engine as launched, the precision (decided here, once: make_plan takes it), and the combinations the engine
    cannot run, before any data or weight is read."""
    engine = read_engine(config.train)
    precision = choose_precision(config, engine.engine)
    check_combination(engine, config.model.quantization, config.model.bnb_4bit_quant_storage,
                      "bnb_4bit_quant_storage" in config.given, plan_device(config.train), precision.sixteen_bit)
    return engine, precision  # DeepSpeed's file and batch were checked as the arguments were built (engines.check_deepspeed_source)


def train(config: TrainingConfig) -> dict:
    engine, precision = check_engine(config)
    check_lora_init(config.lora, config.model.quantization, config.model.double_quant, plan_device(config.train),
                    engine.engine, engine.world_size)
    folder = RunFolder(Path(config.train.output_dir))
    resume = resolve_resume(config)
    check_output_dir(config.train.output_dir, config.run.overwrite_output_dir, resume is not None)
    check_writable_folder(folder.path, "--output_dir")
    if resume is not None:
        check_resume_options(config, folder)
        check_resume_engine(folder, engine)
        step = finished_and_unchanged(config, folder)
        if step is not None:
            print(f"{folder.path} finished at step {step}; nothing to do (raise --max_steps to train on)")
            return folder.eval_results()
        if resume == folder.path:
            fail(f"--resume_from_checkpoint true: {folder.path} finished without a checkpoint to continue from; "
                 "train into another --output_dir")
    split = load_split(config)
    if resume is not None:  # before any model file is read
        check_resumed_split(folder, split)
    model_config = load_model_config(config.model.base_model, config.model.trust_remote_code)
    kind = check_model_kind(config, model_config, split)
    data = tokenize_split(config, split, kind)
    engine = check_wrap_classes(engine, model_config, kind, config.model.trust_remote_code)
    plan = make_plan(config, model_config, bool(data.val_examples), engine, largest_batch_tokens(data, config), precision)
    print(plan.describe())  # every choice, before any weight loads
    initial, initialisation_peak = (initialise_modified_base(config, plan) if modifies_base(config.lora.init_lora_weights)
                                    else (None, None))
    model = build_model(config, plan, initial)
    packing_probe = data.train_examples[0]["input_ids"] * 16
    deferred_packing_check = plan.packing and params_partitioned(model)
    if plan.packing and not deferred_packing_check:
        confirmed = confirm_packing(plan, attention_keeps_examples_apart(model, packing_probe), config)
        if confirmed != plan:  # the one choice the loaded model can change
            print(f"  packing: off: {dict(confirmed.reasons)['packing']}")
        plan = confirmed
    args = training_arguments(config, plan)
    collator = make_collator(plan, data.tokenizer)
    share = padding_share(collator, data.train_examples, args.per_device_train_batch_size)
    print(f"padding share of the training batches: {share:.1%} (packing {'on' if plan.packing else 'off'})")
    if resume is None:
        folder = start_run_folder(config, plan, data, share, args, engine)
    trainer = build_trainer(args, plan, data, model, collator, folder)

    results = {key: value for key, value in folder.eval_results().items() if key == "before_training"} if resume else {}
    evaluate_before = plan.evaluation and "before_training" not in results

    def before_training(trainer_) -> None:
        if evaluate_before:
            results["before_training"] = trainer_.heldout_loss()
            if trainer_.is_world_process_zero():
                folder.write_eval_results(results)  # kept from the start: a resumed run still knows where it began
        if deferred_packing_check and not attention_keeps_examples_apart(trainer_.model_wrapped, packing_probe):
            fail(f"attention '{plan.attention}' of this model lets packed examples attend to each other (seen on the "
                 "ZeRO-3 engine's model, whose weights were partitioned as they loaded); rerun with --packing false")

    if plan.engine in ("fsdp", "deepspeed"):  # on the model as the engine prepared it (sharded, in lockstep)
        trainer.add_callback(EngineStartCallback(trainer, before_training))
    else:
        before_training(trainer)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if plan.evaluation:
        results["after_training"] = trainer.heldout_loss()
    else:
        results["heldout"] = ("none: no held-out records (--val_set_size 0)" if not data.split.val
                              else "none: no held-out example is left after tokenization (raise --max_seq_length)")
    results["finished_at_step"] = trainer.state.global_step
    results["peak_memory_gib"] = peak_memory_gib()
    if initialisation_peak is not None:  # PiSSA / LoftQ's 16/32-bit moment before training (initialise_modified_base)
        results["initialisation_peak_memory_gib"] = initialisation_peak
    results["peak_memory_gib_per_process"] = per_process(results["peak_memory_gib"], args.world_size)
    results["memory_held_per_process"] = per_process(memory_held(trainer), args.world_size)
    sharded = adapter_sharded(plan)
    state_dict = gathered_adapter(trainer, plan) if sharded else None
    if not sharded:
        results["adapter_checksum_per_process"] = adapter_checksums(trainer.model, args.world_size)
    elif trainer.is_world_process_zero():  # one copy, gathered from the shards
        results["adapter_checksum"] = sum(float(value.double().sum()) for name, value in state_dict.items() if "lora_" in name)
    if trainer.is_world_process_zero():
        finish_run(trainer, data, config, folder, results, state_dict, initial)
    return results


def leave_process_group() -> None:
    """Every process waits for the others, then tears its process group down before the interpreter exits: left to
    interpreter shutdown, gloo's threads were at times destroyed while still joinable (seen once as SIGABRT, 'terminate
    called without an active exception', in a 2-process CPU run that had finished training)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    train(parse_training_config(argv))
    leave_process_group()
