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
from .config import StudyConfig, TrainingRun

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Timings:
    """Wall seconds of every step, kept across restarts: each leg of a step (a run stopped and resumed) adds its
    time, whether it finished or failed; a skipped step keeps what it recorded. A process killed outright
    (SIGKILL, power) cannot record its last leg."""

    path: Path

    def read(self) -> dict[str, float]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def add(self, step: str, seconds: float) -> None:
        recorded = self.read()
        atomic_write_json(self.path, {**recorded, step: round(recorded.get(step, 0.0) + seconds, 1)})

    def record(self, step: str, seconds: float) -> None:
        """A step that is redone whole each time (scoring): its last time."""
        atomic_write_json(self.path, {**self.read(), step: round(seconds, 1)})


def run_script(title: str, script: str, arguments: list[str], timings: Timings) -> None:
    command = [sys.executable, str(REPO_ROOT / script), *arguments]
    print(f"[run] {title}\n      {' '.join(command[1:])}", flush=True)
    started = time.time()
    try:
        result = subprocess.run(command)
    finally:
        timings.add(title, time.time() - started)
    if result.returncode == USER_ERROR_EXIT_CODE:  # the script refused its input: running it again would refuse it again
        fail(f"{title} refused the command shown (exit code {result.returncode}, the error above): fix what it names "
             "(a flag --NAME is the study config's training.NAME or NAME) and run the study again")
    if result.returncode != 0:
        fail(f"{title} failed (exit code {result.returncode}); run the same command again to resume")
    print(f"[done] {title} in {time.time() - started:.0f} s", flush=True)


def skip(title: str, why: str) -> None:
    print(f"[skip] {title}: {why}")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train_folder(config: StudyConfig, run: TrainingRun) -> Path:
    return Path(config.run_dir) / "train" / run.name


def train(config: StudyConfig, run: TrainingRun, timings: Timings) -> RunFolder:
    """One training run: its own schedule over `run.budget` steps, held-out loss every `eval_steps`."""
    folder = RunFolder(train_folder(config, run))
    title = f"train ({run.name})"
    if (folder.finished_step() or 0) >= run.budget:
        skip(title, f"{folder.path} finished at step {folder.finished_step()}")
        return folder
    run_script(title, "training_script.py", [*training_arguments(config, run), *folder.restart_arguments()], timings)
    return folder


def training_arguments(config: StudyConfig, run: TrainingRun) -> list[str]:
    """training_script.py's options for one run (study/checks.py parses them before any step runs)."""
    spacing = min(config.evaluation_spacing(), run.budget)
    # Held-out loss every `spacing` steps (the learning curve within a run; the plan itself evaluates before and
    # after training, so a run no longer than the spacing needs no evaluation of its own); a checkpoint as often,
    # so a stopped run resumes, the newest two kept (the run's adapter is the finished run folder itself).
    evaluation = {"eval_strategy": "steps", "eval_steps": spacing} if spacing < run.budget else {"eval_strategy": "no"}
    options = {**evaluation, "save_strategy": "steps", "save_steps": spacing,
               **config.training, "save_total_limit": 2, "quantization": run.precision, "max_steps": run.budget,
               "seed": run.seed}
    arguments = ["--base_model", config.base_model, "--data_path", config.data_path,
                 "--output_dir", str(train_folder(config, run))]
    for name, value in options.items():
        arguments += [f"--{name}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return arguments


# ---------------------------------------------------------------------------------------------
# Prompts and generations
# ---------------------------------------------------------------------------------------------
def prompt_files(config: StudyConfig, main_run: RunFolder) -> tuple[Path, Path]:
    """The first records of the held-out split (already shuffled; the same in every run, as the split has its own
    seed): the fixed evaluation sample."""
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
