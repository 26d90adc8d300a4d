"""The run folder: the one contract between training, generation, merge and the study.

Layout of a finished run (--output_dir):
  adapter_config.json, adapter_model.safetensors   the LoRA adapter (standard PEFT format)
  tokenizer files                                   the tokenizer as used (pad token set)
  README.md          the model card               run_config.json   the options as given, and the plan
  run_info.json      versions, machine, data (counts; each data file's sha256 and share), files written
  train_ids.json     ids of the training records  val.jsonl         the held-out records
  train_log.jsonl    the Trainer's log history    eval_results.json held-out loss before/after
  prompt_template.json  the template file trained with (only when --prompt_template is a file)
  loss_curve.png     train and held-out loss      checkpoint-*/     resumable checkpoints

Every name a run folder holds is defined here, and so is every reader and writer of its small files.
The tool never deletes what it did not write: `--overwrite_output_dir` refuses a folder that is not a
run folder, or that holds files beside the run's own (ratings, generations, reports).
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .cli import fail
from .files import atomic_write_json, read_json_file, read_json_object, remove_written
from .jsonl import read_objects, write_jsonl
from .training.lora_init import converts_adapter

RUN_CONFIG = "run_config.json"
RUN_INFO = "run_info.json"
TRAIN_LOG = "train_log.jsonl"
EVAL_RESULTS = "eval_results.json"
VAL_RECORDS = "val.jsonl"
TRAIN_IDS = "train_ids.json"
LOSS_CURVE = "loss_curve.png"
MODEL_CARD = "README.md"
PROMPT_TEMPLATE_COPY = "prompt_template.json"  # the template file a run was trained with (data/prompts.py)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
STAGING_PREFIX = ".adapter-"
RUN_FILES = (RUN_CONFIG, RUN_INFO, TRAIN_LOG, EVAL_RESULTS, VAL_RECORDS, TRAIN_IDS, LOSS_CURVE, MODEL_CARD,
             PROMPT_TEMPLATE_COPY)

# The attentions training registers for packed rows (training/packed_attention.py). They can appear in a
# run's run_config.json; generation loads such runs with the sdpa they wrap.
PACKED_SDPA = "packed_sdpa"
PACKED_VARLEN = "packed_varlen"
TRAINING_ONLY_ATTENTIONS = (PACKED_SDPA, PACKED_VARLEN)

TRACKED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "safetensors")


@dataclass(frozen=True)
class RunFolder:
    """A training run's folder: typed readers and writers of its files."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # -- what is there ------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def is_run_folder(self) -> bool:
        return self.file(RUN_CONFIG).is_file()

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (trainer_state.json is written last: without it, a checkpoint was cut short)."""
        found = [p for p in self.path.glob(f"{CHECKPOINT_PREFIX}*")
                 if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / TRAINER_STATE).is_file()]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))

    def last_checkpoint(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def restart_arguments(self) -> list[str]:
        """training_script.py flags that pick an unfinished run up again in this folder: resume from its last
        checkpoint, or start over when it was killed before its first one; none for a new folder."""
        if self.path.is_dir() and self.last_checkpoint() is not None:
            return ["--resume_from_checkpoint", "true"]
        if self.path.is_dir() and self.is_run_folder():
            return ["--overwrite_output_dir", "true"]
        return []

    def finished_step(self) -> int | None:
        """The optimizer step the run finished at, or None when it has not finished."""
        if not (self.file(ADAPTER_WEIGHTS).is_file() and self.file(EVAL_RESULTS).is_file()):
            return None
        return self.eval_results().get("finished_at_step")

    def foreign_files(self) -> list[str]:
        """Names in the folder that training did not write (ratings, generations, reports, anything else)."""
        written = set(RUN_FILES) | set(self.info().get("files", []) if self.file(RUN_INFO).is_file() else [])
        return sorted(p.name for p in self.path.iterdir()
                      if p.name not in written and not p.name.startswith((CHECKPOINT_PREFIX, STAGING_PREFIX)))

    # -- readers --------------------------------------------------------------------------------
    def config(self) -> dict:
        return read_json_object(self.file(RUN_CONFIG), "the run's options")

    def info(self) -> dict:
        return read_json_object(self.file(RUN_INFO), "the run's information")

    def eval_results(self) -> dict:
        path = self.file(EVAL_RESULTS)
        return read_json_object(path, "held-out results") if path.is_file() else {}

    def log(self) -> list[dict]:
        path = self.file(TRAIN_LOG)
        return read_objects(path) if path.is_file() else []

    def val_records(self) -> list[dict]:
        return read_objects(self.file(VAL_RECORDS))

    def train_ids(self) -> list | None:
        path = self.file(TRAIN_IDS)
        return read_json_file(path) if path.is_file() else None

    # -- writers (atomic, so a killed run leaves each file whole or absent) ----------------------
    def write_config(self, config: dict) -> None:
        atomic_write_json(self.file(RUN_CONFIG), config)

    def write_info(self, info: dict) -> None:
        atomic_write_json(self.file(RUN_INFO), info)

    def write_eval_results(self, results: dict) -> None:
        atomic_write_json(self.file(EVAL_RESULTS), results)

    def write_log(self, rows: list[dict]) -> None:
        write_jsonl(self.file(TRAIN_LOG), rows)

    def write_split(self, val_records: list[dict], train_ids: list) -> None:
        if val_records:
            write_jsonl(self.file(VAL_RECORDS), val_records)
        atomic_write_json(self.file(TRAIN_IDS), train_ids)

    # -- clearing for --overwrite_output_dir ------------------------------------------------------
    def clear(self) -> None:
        """Delete what training wrote here (only that: foreign files are refused before, see check_output_dir)."""
        recorded = self.info().get("files", []) if self.file(RUN_INFO).is_file() else []
        folders = [p.name for prefix in (CHECKPOINT_PREFIX, STAGING_PREFIX) for p in self.path.glob(f"{prefix}*")]
        remove_written(self.path, [*recorded, *RUN_FILES, *folders])


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool) -> None:
    """Refuse, before anything is written, to write into a folder that holds anything but this run's own files."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        fail(f"--output_dir {output_dir} exists and is not a folder")
    if resuming and not path.is_dir():
        fail(f"--resume_from_checkpoint: run folder {output_dir} does not exist")
    if not path.is_dir() or not any(path.iterdir()):
        return
    folder = RunFolder(path)
    if not (overwrite or resuming):
        fail(f"--output_dir {output_dir} is not empty; pass --overwrite_output_dir to replace the run in it "
             "or --resume_from_checkpoint true to continue it")
    if not folder.is_run_folder():
        names = sorted(p.name for p in path.iterdir())
        fail(f"--output_dir {output_dir} is not a run folder of training_script.py (it holds {', '.join(names[:5])}"
             f"{', ...' if len(names) > 5 else ''}); nothing was changed: choose another --output_dir")
    foreign = folder.foreign_files()
    if overwrite and not resuming and foreign:
        fail(f"--overwrite_output_dir: {output_dir} holds files training did not write ({', '.join(foreign[:5])}"
             f"{', ...' if len(foreign) > 5 else ''}): ratings, generations or reports of this run; move them "
             "out first (nothing was changed)")


def owning_run(folder: str | Path) -> RunFolder | None:
    """The training run a folder belongs to: the folder itself, or, for a checkpoint-N folder, the run folder it is
    in; None when it is neither (any other adapter folder)."""
    path = Path(folder)
    candidates = (path, path.parent) if path.name.startswith(CHECKPOINT_PREFIX) else (path,)
    return next((RunFolder(candidate) for candidate in candidates if RunFolder(candidate).is_run_folder()), None)


def adapter_config(adapter: str) -> dict:
    """A local adapter folder's adapter_config.json, where generation and the merge take an adapter folder: the folder
    and the file must be there, and a checkpoint-N folder of a run whose adapter is converted when the run finishes
    (PiSSA: training/lora_init.py) is refused, since its weights apply to the base as PiSSA modified it, not to the
    base its adapter_config.json names."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        fail(f"--adapter {adapter}: no such folder")
    config_path = path / ADAPTER_CONFIG
    if not config_path.is_file():
        fail(f"--adapter {adapter}: no {ADAPTER_CONFIG} in it (not a PEFT adapter folder; is the training run finished?)")
    run = owning_run(path) if path.name.startswith(CHECKPOINT_PREFIX) else None
    lora = run.config().get("lora") if run is not None else None
    init = lora.get("init_lora_weights") if isinstance(lora, dict) else None
    if run is not None and run.path != path and converts_adapter(init):
        fail(f"--adapter {adapter}: a checkpoint of a --init_lora_weights {init} run ({run.file(RUN_CONFIG)}): its "
             f"weights apply to the base as {init} modified it, not to the base its {ADAPTER_CONFIG} names; use the "
             f"finished run folder {run.path}, which holds the converted adapter")
    return read_json_object(config_path, "a PEFT adapter configuration")


def adapter_base_model(adapter: str) -> str:
    """The base model named in a local adapter folder's adapter_config.json (checked by adapter_config)."""
    base = adapter_config(adapter).get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        fail(f"{Path(adapter).expanduser() / ADAPTER_CONFIG}: names no base_model_name_or_path; pass --base_model")
    return base


# ---------------------------------------------------------------------------------------------
# What a run records about its environment
# ---------------------------------------------------------------------------------------------
def library_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.machine(), "cpu": cpu_name(),
            "cuda": torch.cuda.is_available()}
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
