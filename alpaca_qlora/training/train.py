"""The training job: data -> tokenized examples -> quantized base + LoRA -> Trainer -> run folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import set_seed
from transformers.trainer_callback import ProgressCallback

from .. import run_folder as rf
from .loss import install_hidden_states_head, make_loss_func
from .collators import PackedCollator, PaddedCollator, pop_token_counts
from .config import TrainingConfig, parse_training_config, set_checkpointing
from ..cli import fail
from ..data.records import DataSplit, load_records, split_records
from ..data.tokenization import TokenizationReport, tokenize_records
from ..files import atomic_write_json, atomic_write_jsonl
from .kernels import apply_liger_kernels
from .memory import checkpointing_needed
from ..modeling import add_lora, load_base_model, load_tokenizer, resolve_compute_dtype, resolve_model_path, default_device_map
from .packed_attention import PACKED_SDPA, PACKED_VARLEN, PER_EXAMPLE_ATTENTIONS, register_packed_attention, varlen_supported
from ..plots import plot_loss_curve
from .trainer import InstructionTrainer, JsonlLogCallback, LossProgressCallback


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """--resume_from_checkpoint: a checkpoint folder, or true for the newest one in the run folder."""
    if resume is None or resume.lower() in ("", "false", "no"):
        return None
    if resume.lower() in ("true", "yes", "1", "last"):
        checkpoint = rf.last_checkpoint(output_dir)
        if checkpoint is None:
            fail(f"--resume_from_checkpoint true: no checkpoint-* folder in {output_dir}")
        return checkpoint
    if not (Path(resume) / "trainer_state.json").is_file():
        fail(f"--resume_from_checkpoint {resume}: not a checkpoint folder (no trainer_state.json)")
    return resume


@torch.no_grad()
def attention_honours_packing(model, token_ids: list[int]) -> bool:
    """Check on the real model that two examples packed in one row do not attend to each other.

    Models whose attention ignores restarting position ids would silently mix examples (trl#1230).
    """
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


def build_collator(config: TrainingConfig, tokenizer, model, sample_ids: list[int]):
    if config.data.packing:
        if attention_honours_packing(model, sample_ids):
            attention = model.config._attn_implementation
            row_length = None if attention in PER_EXAMPLE_ATTENTIONS else config.data.max_seq_length
            return PackedCollator(pad_token_id=tokenizer.pad_token_id, max_row_length=row_length,
                                  sequence_boundaries=attention == PACKED_VARLEN)
        print(
            f"warning: attention '{config.model.attn_implementation}' of this model lets packed examples attend to each other; "
            "falling back to padded batches grouped by length"
        )
        config.data.packing = False
    if config.train.train_sampling_strategy == "random":
        config.train.train_sampling_strategy = "group_by_length"
    return PaddedCollator(pad_token_id=tokenizer.pad_token_id)


def padding_share(collator, examples: list[dict], batch_size: int) -> float:
    """Share of padding tokens over the training set batched in file order (a fixed yardstick)."""
    total = real = 0
    for start in range(0, len(examples), batch_size):
        batch_total, batch_real, _ = pop_token_counts(collator(examples[start : start + batch_size]))
        total += batch_total
        real += batch_real
    return (total - real) / total if total else 0.0


def adapter_checksums(model, world_size: int) -> list[float]:
    """Sum of every trainable weight, per process: equal values mean the DDP ranks agree."""
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
    if world_size <= 1:
        return [checksum]
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, checksum)
    return gathered


def write_run_start(config: TrainingConfig, split: DataSplit, reports: dict, output_dir: Path, padding: dict) -> None:
    atomic_write_json(output_dir / rf.RUN_CONFIG, config.to_dict())
    atomic_write_jsonl(output_dir / rf.VAL_RECORDS, split.val)
    atomic_write_json(output_dir / rf.TRAIN_IDS, [record["id"] for record in split.train])
    atomic_write_json(
        output_dir / rf.RUN_INFO,
        {
            "versions": rf.library_versions(),
            "machine": rf.machine_info(),
            "git_commit": rf.git_commit(),
            "data": {
                "train_records": len(split.train),
                "val_records": len(split.val),
                "empty_outputs": split.empty_outputs,
                "tokenization": {name: vars(report) for name, report in reports.items()},
                **padding,
            },
        },
    )


def check_resumed_split(output_dir: Path, split) -> None:
    saved = output_dir / rf.TRAIN_IDS
    if saved.exists() and json.loads(saved.read_text()) != [record["id"] for record in split.train]:
        fail(f"--resume_from_checkpoint: the data options select other training records than {saved} records; resume with the run's own options")


@dataclass
class PreparedData:
    split: DataSplit
    tokenizer: object
    train_examples: list[dict]
    val_examples: list[dict]
    reports: dict[str, TokenizationReport]


def prepare_data(config: TrainingConfig) -> PreparedData:
    """Load, validate, split and tokenize: everything a user can get wrong, before any folder is touched."""
    records = load_records(config.data.data_path)
    split = split_records(records, config.data.val_set_size, config.data.max_samples, config.data.split_seed)
    print(f"data: {len(split.train)} training and {len(split.val)} held-out records; "
          f"{split.empty_outputs} with an empty output (kept: they teach the model to stop)")
    tokenizer = load_tokenizer(resolve_model_path(config.model.base_model), config.model.trust_remote_code)
    reports, tokenized = {}, {}
    for name, records in (("train", split.train), ("held-out", split.val)):
        tokenized[name], reports[name] = tokenize_records(
            records, tokenizer, config.data.prompt_template, config.data.max_seq_length, config.data.train_on_inputs
        )
        print(reports[name].summary(name))
    if not tokenized["train"]:
        fail("no training example is left after tokenization; raise --max_seq_length")
    return PreparedData(split, tokenizer, tokenized["train"], tokenized["held-out"], reports)


def packed_attention(config: TrainingConfig) -> str | None:
    """The per-example attention (packed_attention.py) packed rows get, or None for the model's own sdpa:
    packed_varlen where asked for and supported (CUDA, torch >= 2.10); on the CPU packed_sdpa."""
    requested = config.model.attn_implementation
    if not config.data.packing or requested not in ("sdpa", PACKED_VARLEN):
        return None
    if requested == PACKED_VARLEN and varlen_supported():
        return PACKED_VARLEN
    fallback = None if torch.cuda.is_available() else PACKED_SDPA
    if requested == PACKED_VARLEN:
        print(f"warning: --attn_implementation packed_varlen needs CUDA and torch >= 2.10; using {fallback or 'sdpa'}")
    return fallback


def resolve_checkpointing(config: TrainingConfig) -> None:
    """Unless the user chose, turn gradient checkpointing on where memory asks for it (memory.py)."""
    if config.checkpointing_explicit:
        return
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(resolve_model_path(config.model.base_model), trust_remote_code=config.model.trust_remote_code)
    tokens = config.train.per_device_train_batch_size * config.data.max_seq_length
    bytes_per_value = resolve_compute_dtype(config.model.compute_dtype).itemsize
    enabled = checkpointing_needed(model_config, tokens, bytes_per_value)
    set_checkpointing(config.train, enabled)
    print(f"gradient checkpointing {'on' if enabled else 'off: activations fit easily in memory'} (set --gradient_checkpointing to choose)")


def build_model(config: TrainingConfig, data: PreparedData):
    """The quantized base with LoRA, and the collator its attention supports."""
    args = config.train
    resolve_checkpointing(config)
    set_seed(args.seed)  # the LoRA initialisation is random: same seed, same starting adapter
    model = load_base_model(
        resolve_model_path(config.model.base_model), config.model.quantization, resolve_compute_dtype(config.model.compute_dtype),
        config.model.double_quant, config.model.bnb_4bit_quant_storage,
        "sdpa" if config.model.attn_implementation in PER_EXAMPLE_ATTENTIONS else config.model.attn_implementation,
        config.model.trust_remote_code, device_map=None if args.fsdp else default_device_map(),  # FSDP places shards itself
    )
    model.config.use_cache = False  # a KV cache hides packing from the attention mask (field notes)
    attention = packed_attention(config)
    if attention:
        model.set_attn_implementation(register_packed_attention(attention))
    collator = build_collator(config, data.tokenizer, model, data.train_examples[0]["input_ids"] * 16)
    checkpointing_kwargs = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs
    model = add_lora(
        model, config.lora.lora_r, config.lora.lora_alpha, config.lora.lora_dropout, config.lora.lora_target_modules,
        args.gradient_checkpointing, checkpointing_kwargs,
    )
    config.fused_kernels = apply_liger_kernels(model, args)
    return model, collator


def build_trainer(config: TrainingConfig, data: PreparedData, model, collator) -> InstructionTrainer:
    args = config.train
    if not data.val_examples:
        args.eval_strategy = "no"
    head = install_hidden_states_head(model)  # loss on trained positions only (chunked_loss.py)
    trainer = InstructionTrainer(
        model=model, args=args, train_dataset=data.train_examples, eval_dataset=data.val_examples or None,
        eval_examples=data.val_examples, data_collator=collator, processing_class=data.tokenizer,
        callbacks=[JsonlLogCallback(Path(args.output_dir) / rf.TRAIN_LOG)],
        compute_loss_func=make_loss_func(head) if head else None, hidden_states_head=head,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossProgressCallback())
    return trainer


def model_attention(model) -> str:
    attention = model.config._attn_implementation
    return f"{attention} (per example)" if attention in PER_EXAMPLE_ATTENTIONS else attention


def start_run_folder(config: TrainingConfig, data: PreparedData, model, collator, resuming: bool) -> None:
    """Create (or, resuming, check) the run folder and write what is known before training."""
    output_dir = Path(config.train.output_dir)
    share = padding_share(collator, data.train_examples, config.train.per_device_train_batch_size)
    print(f"padding share of the training batches: {share:.1%} (packing {'on' if config.data.packing else 'off'})")
    if config.train.process_index != 0:
        return
    if config.run.overwrite_output_dir and not resuming:
        rf.clear_output_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if resuming:
        check_resumed_split(output_dir, data.split)
    padding = {"packing": config.data.packing, "padding_share": share, "attention": model_attention(model),
               "fused_kernels": config.fused_kernels}
    write_run_start(config, data.split, data.reports, output_dir, padding)


def train(config: TrainingConfig) -> dict:
    args = config.train
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    rf.check_output_dir(args.output_dir, config.run.overwrite_output_dir, resume is not None)
    data = prepare_data(config)
    model, collator = build_model(config, data)
    start_run_folder(config, data, model, collator, resuming=resume is not None)
    trainer = build_trainer(config, data, model, collator)

    results = {}
    if data.val_examples and resume is None:
        results["before_training"] = trainer.heldout_loss()
    trainer.train(resume_from_checkpoint=resume)
    if data.val_examples:
        results["after_training"] = trainer.heldout_loss()
    checksums = adapter_checksums(trainer.model, args.world_size)
    if trainer.is_world_process_zero():
        finish_run(trainer, data.tokenizer, Path(args.output_dir), results, checksums)
    return results


def save_adapter(model, tokenizer, output_dir: Path) -> None:
    """Adapter and tokenizer into the run folder; each file appears whole (written aside, then renamed)."""
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".adapter-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for path in staging.iterdir():
            path.replace(output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def finish_run(trainer, tokenizer, output_dir: Path, results: dict, checksums: list[float]) -> None:
    saved = output_dir / "eval_results.json"
    if "before_training" not in results and saved.exists():  # a resumed run keeps the first measurement
        previous = json.loads(saved.read_text())
        if "before_training" in previous:
            results = {"before_training": previous["before_training"], **results}
    results["adapter_checksum_per_process"] = checksums
    save_adapter(trainer.model, tokenizer, output_dir)
    atomic_write_json(saved, results)
    plot_loss_curve(rf.read_log(output_dir / rf.TRAIN_LOG), output_dir / rf.LOSS_CURVE, title=f"{output_dir.name}: loss")
    if "after_training" in results:
        before = results.get("before_training", {}).get("eval_loss", float("nan"))
        print(f"held-out loss: {before:.4f} before training, {results['after_training']['eval_loss']:.4f} after")
    print(f"run folder: {output_dir}")


def main(argv: list[str] | None = None) -> None:
    train(parse_training_config(argv))
