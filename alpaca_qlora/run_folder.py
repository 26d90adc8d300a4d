"""The run folder: refusing to clobber results, and the files every run leaves behind.

Layout of a finished run (--output_dir):
  adapter_config.json, adapter_model.safetensors   the LoRA adapter (standard PEFT format)
  tokenizer files                                   the tokenizer as used (pad token set)
  run_config.json    every resolved option          run_info.json     versions, machine, data report
  train_ids.json     ids of the training records    val.jsonl         the held-out records
  train_log.jsonl    one line per logging step      eval_results.json held-out loss before/after
  loss_curve.png     train and eval loss            checkpoint-*/     resumable checkpoints
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from .cli import fail

RUN_CONFIG = "run_config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"
# The attentions training registers for packed rows (training/packed_attention.py). They can appear in a
# run's run_config.json; generation loads such runs with the sdpa they wrap.
PACKED_SDPA = "packed_sdpa"
PACKED_VARLEN = "packed_varlen"
TRAINING_ONLY_ATTENTIONS = (PACKED_SDPA, PACKED_VARLEN)
RUN_INFO = "run_info.json"
TRAIN_LOG = "train_log.jsonl"
EVAL_RESULTS = "eval_results.json"
VAL_RECORDS = "val.jsonl"
TRAIN_IDS = "train_ids.json"
LOSS_CURVE = "loss_curve.png"

TRACKED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "safetensors")


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool) -> None:
    """Refuse a non-empty run folder unless the user asked to overwrite or to resume it."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        fail(f"--output_dir {output_dir} exists and is not a folder")
    if resuming and not path.is_dir():
        fail(f"--resume_from_checkpoint: run folder {output_dir} does not exist")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resuming):
        fail(
            f"--output_dir {output_dir} is not empty; pass --overwrite_output_dir to replace it "
            "or --resume_from_checkpoint true to continue it"
        )


def clear_output_dir(output_dir: str) -> None:
    path = Path(output_dir)
    if path.is_dir():
        shutil.rmtree(path)


def library_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def machine_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.machine(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def last_checkpoint(output_dir: str) -> str | None:
    # trainer_state.json is written last: a checkpoint without it was cut short by a crash.
    checkpoints = [
        p for p in Path(output_dir).glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    if not checkpoints:
        return None
    return str(max(checkpoints, key=lambda p: int(p.name.split("-")[-1])))


def read_json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        fail(f"{path}: cannot read it as JSON ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")


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


def read_log(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
