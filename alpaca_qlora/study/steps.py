"""The study's steps: training runs and generations through the project's own scripts, each skipped when
its output is complete, each timed.

Training and generation run as subprocesses (`training_script.py`, `inference.py`), as a user would run
them: each loads its own model and gives its memory back when it ends, and each resumes by itself when the
study is started again (training from its last checkpoint, generation from the lines already written).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..cli import USER_ERROR_EXIT_CODE, fail
from ..files import atomic_write_json
from ..jsonl import read_appendable, write_jsonl
from ..run_folder import RunFolder
from .config import StudyConfig, step_spacing

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Timings:
    """Wall seconds of every step that ran, kept across restarts (a skipped step keeps its recorded time)."""

    path: Path

    def read(self) -> dict[str, float]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def record(self, step: str, seconds: float) -> None:
        atomic_write_json(self.path, {**self.read(), step: round(seconds, 1)})


def run_script(title: str, script: str, arguments: list[str], timings: Timings) -> None:
    command = [sys.executable, str(REPO_ROOT / script), *arguments]
    print(f"[run] {title}\n      {' '.join(command[1:])}", flush=True)
    started = time.time()
    result = subprocess.run(command)
    if result.returncode == USER_ERROR_EXIT_CODE:  # the script refused its input: running it again would refuse it again
        fail(f"{title} refused the command shown (exit code {result.returncode}, the error above): fix what it names "
             "(a flag --NAME is the study config's training.NAME or NAME) and run the study again")
    if result.returncode != 0:
        fail(f"{title} failed (exit code {result.returncode}); run the same command again to resume")
    elapsed = time.time() - started
    timings.record(title, elapsed)
    print(f"[done] {title} in {elapsed:.0f} s", flush=True)


def skip(title: str, why: str) -> None:
    print(f"[skip] {title}: {why}")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train_folder(config: StudyConfig, quantization: str) -> Path:
    suffix = "" if quantization == config.main_quantization else f"-{quantization}"
    return Path(config.run_dir) / f"train{suffix}"


def train(config: StudyConfig, quantization: str, timings: Timings) -> RunFolder:
    """One training run to the last budget, with a checkpoint and a held-out evaluation at every budget."""
    folder = RunFolder(train_folder(config, quantization))
    title = f"train ({quantization})"
    if (folder.finished_step() or 0) >= config.budgets[-1]:
        skip(title, f"{folder.path} finished at step {folder.finished_step()}")
        return folder
    run_script(title, "training_script.py", [*training_arguments(config, quantization), *folder.restart_arguments()],
               timings)
    return folder


def training_arguments(config: StudyConfig, quantization: str) -> list[str]:
    """training_script.py's options for one run (study/checks.py parses them before any step runs)."""
    final = config.budgets[-1]
    spacing = step_spacing(config.budgets)
    # The main run is evaluated at every budget (the learning curve); the other precisions only before and after
    # training (the plan always does those), which is all the report reads from them.
    evaluation = ({"eval_strategy": "steps", "eval_steps": spacing} if quantization == config.main_quantization
                  else {"eval_strategy": "no"})
    # Every checkpoint is kept (save_total_limit = their number, after the user's training options): the limit
    # deletes the oldest first, and with budgets such as 10/25/50 (checkpoints every 5 steps) those are the
    # budgets' own adapters.
    options = {"save_strategy": "steps", "save_steps": spacing, **evaluation, **config.training,
               "save_total_limit": final // spacing, "quantization": quantization, "max_steps": final}
    arguments = ["--base_model", config.base_model, "--data_path", config.data_path,
                 "--output_dir", str(train_folder(config, quantization))]
    for name, value in options.items():
        arguments += [f"--{name}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return arguments


def adapter_at(config: StudyConfig, step: int) -> Path:
    """The main run's adapter after `step` optimizer steps: a checkpoint, or the finished run folder."""
    folder = train_folder(config, config.main_quantization)
    return folder if step == config.budgets[-1] else folder / f"checkpoint-{step}"


# ---------------------------------------------------------------------------------------------
# Prompts and generations
# ---------------------------------------------------------------------------------------------
def prompt_files(config: StudyConfig, main_run: RunFolder) -> tuple[Path, Path]:
    """The first records of the main run's held-out split (already shuffled): the fixed evaluation sample."""
    held_out = main_run.val_records()
    if len(held_out) < config.eval_records:
        fail(f"{main_run.file('val.jsonl')} has {len(held_out)} records, the study asks for eval_records={config.eval_records}")
    folder = Path(config.run_dir) / "prompts"
    eval_path, sweep_path = folder / "eval.jsonl", folder / "sweep.jsonl"
    write_jsonl(eval_path, held_out[: config.eval_records])
    write_jsonl(sweep_path, held_out[: config.sweep_records])
    return eval_path, sweep_path


def generation_file(config: StudyConfig, name: str) -> Path:
    return Path(config.run_dir) / "generations" / f"{name}.jsonl"


def complete_lines(path: Path) -> int:
    return len(read_appendable(path).rows) if path.is_file() else 0


def generate(config: StudyConfig, name: str, model: list[str], prompts: Path, expected_lines: int, timings: Timings,
             extra: list[str] = ()) -> Path:
    """One generation file; skipped when it holds every line already (inference.py resumes a partial one)."""
    output = generation_file(config, name)
    title = f"generate ({name})"
    if complete_lines(output) >= expected_lines:
        skip(title, f"{output} holds its {expected_lines} lines")
        return output
    run_script(title, "inference.py", [*model, "--prompts_file", str(prompts), "--output_file", str(output),
                                        "--max_new_tokens", str(config.max_new_tokens),
                                        "--batch_size", str(config.generation_batch_size), *extra], timings)
    return output


def sweep_size(config: StudyConfig) -> int:
    """How many distinct decodings the sweep holds (inference.py parses the sweep so, and generates each once)."""
    from ..generation.batch import expand_grid, parse_sweep
    from ..generation.settings import GenerationSettings

    return len(expand_grid(GenerationSettings(max_new_tokens=config.max_new_tokens), parse_sweep(config.sweep)))


def base_model_arguments(config: StudyConfig, precision: str) -> list[str]:
    """The untuned base at a precision, with the main run's prompt template (a base has no run_config of its own)."""
    template = str(config.training.get("prompt_template", "alpaca"))
    compute = str(config.training.get("compute_dtype", "auto"))
    return ["--base_model", config.base_model, "--quantization", precision, "--compute_dtype", compute,
            "--prompt_template", template]
