"""The run folder's README.md: what was trained, on what, how well, and how to load it.

PEFT writes an empty card template ("[More Information Needed]"); this replaces it with the facts of the run.
"""

from __future__ import annotations

from pathlib import Path

from ..data.records import ALPACA_DATA_SHA256, DEFAULT_DATA_PATH
from ..run_folder import RunFolder
from .config import TrainingConfig
from .lora_init import lora_init_description


def engine_line(plan: dict) -> str:
    """' x 2 processes (FSDP)' where the run was spread over processes; nothing for one process."""
    world = plan.get("world_size", 1)
    if world <= 1:
        return ""
    engine = {"ddp": "DDP", "fsdp": "FSDP2", "deepspeed": f"DeepSpeed ZeRO-{plan.get('zero_stage')}"}.get(plan.get("engine"), plan.get("engine"))
    nodes = f" on {plan['nodes']} machines" if plan.get("nodes", 1) > 1 else ""
    return f" x {world} processes ({engine}{nodes})"


def data_line(config: TrainingConfig) -> str:
    return "; ".join(file_line(path) for path in config.data.data_path)


def file_line(path: str) -> str:
    if Path(path).name == Path(DEFAULT_DATA_PATH).name:
        return (f"`{path}`: the Stanford Alpaca data (52,002 records; sha256 `{ALPACA_DATA_SHA256[:12]}...` when "
                "unmodified). Its licence is CC BY-NC 4.0: this adapter is a derivative for research use only.")
    return f"`{path}` (the licence of this data applies to the adapter)."


def heldout_lines(results: dict) -> list[str]:
    if "after_training" not in results:
        return [f"- Held-out loss: {results.get('heldout', 'not measured')}."]
    before = results.get("before_training", {})
    after = results["after_training"]
    lines = [f"- Held-out loss (mean negative log-likelihood per response token, {after['eval_tokens']:,} tokens): "
             f"{before.get('eval_loss', float('nan')):.4f} before training, {after['eval_loss']:.4f} after "
             f"(perplexity {before.get('eval_perplexity', float('nan')):.2f} -> {after['eval_perplexity']:.2f})."]
    return lines


def model_card(config: TrainingConfig, folder: RunFolder, results: dict) -> str:
    model, lora, data, train = config.model, config.lora, config.data, config.train
    plan = folder.config().get("plan", {})
    info = folder.info()
    counts = info.get("data", {})
    steps = results.get("finished_at_step")
    image_text = plan.get("model_kind") == "image_text_to_text"  # LLaVA-style: its processor travels with the adapter
    model_class = "AutoModelForImageTextToText" if image_text else "AutoModelForCausalLM"
    tokenizer_class, tokenizer_name = ("AutoProcessor", "processor") if image_text else ("AutoTokenizer", "tokenizer")
    quantization = {"nf4": "4-bit NF4 (QLoRA)", "fp4": "4-bit FP4", "int8": "8-bit", "none": "unquantized"}[model.quantization]
    return "\n".join([
        f"# LoRA adapter: {folder.path.name}",
        "",
        f"A LoRA adapter for `{model.base_model}`, instruction-tuned with alpaca-qlora (`training_script.py`).",
        "",
        "## Training",
        "",
        f"- Base model: `{model.base_model}`, loaded {quantization}, {plan.get('compute_dtype', model.compute_dtype)} compute.",
        f"- Data: {data_line(config)}",
        f"- Records: {counts.get('train_records', '?')} trained on, {counts.get('val_records', '?')} held out "
        f"(split seed {data.split_seed}); prompt template `{data.prompt_template}`, prompt masked from the loss: "
        f"{'no' if data.train_on_inputs else 'yes'}; at most {data.max_seq_length} tokens per example.",
        f"- LoRA: r {lora.lora_r}, alpha {lora.lora_alpha}, dropout {lora.lora_dropout}, target modules "
        f"`{lora.lora_target_modules}`; {lora_variant(lora, config.model.quantization)}.",
        f"- Optimisation: {steps} optimizer steps, learning rate {train.learning_rate} ({train.lr_scheduler_type}), "
        f"batch {train.per_device_train_batch_size} per device x {train.gradient_accumulation_steps} accumulation"
        f"{engine_line(plan)}, seed {train.seed}.",
        "",
        "## Results",
        "",
        *heldout_lines(results),
        "",
        "Every option is in `run_config.json` (as given, and the plan as resolved); versions and machine in "
        "`run_info.json`; the loss per step in `train_log.jsonl` and `loss_curve.png`.",
        "",
        "## Use",
        "",
        "```bash",
        f"python inference.py --adapter {folder.path}                # chat with it (the base is found from adapter_config.json)",
        f"python -m alpaca_qlora.merge --adapter {folder.path} --output_dir merged   # a standalone model",
        "```",
        "",
        "```python",
        "from peft import PeftModel",
        f"from transformers import {model_class}, {tokenizer_class}",
        f"base = {model_class}.from_pretrained(\"{model.base_model}\")",
        f"model = PeftModel.from_pretrained(base, \"{folder.path}\")",
        f"{tokenizer_name} = {tokenizer_class}.from_pretrained(\"{folder.path}\")",
        "```",
        "",
        f"Prompts must use the `{data.prompt_template}` template it was trained with (`inference.py` does this itself).",
        "",
    ])


def lora_variant(lora, quantization: str) -> str:
    """DoRA / rsLoRA / the initialisation, as the model card names them."""
    parts = ["DoRA" if lora.use_dora else "plain LoRA", "rsLoRA scaling (alpha / sqrt(r))" if lora.use_rslora else
             "scaling alpha / r", lora_init_description(lora.init_lora_weights, quantization)]
    return ", ".join(parts)
