"""The study's steps: training runs and generations through the project's own jobs, each skipped when its output
is complete, each timed.

Training and generation run as subprocesses (jobs.py: `python -m alpaca_qlora.train` and `python -m
alpaca_qlora.generate`, the jobs of training_script.py and inference.py), as a user would run them: each loads its
own model and gives its memory back when it ends, and each resumes by itself when the study is started again
(training from its last checkpoint, generation from the lines already written).
"""

from __future__ import annotations

from pathlib import Path

from ..cli import fail
from ..jobs import GENERATE_JOB, JUDGE_JOB, TRAIN_JOB, Timings, run_job
from ..jsonl import read_appendable, write_jsonl
from ..run_folder import RunFolder
from .config import StudyConfig, TrainingRun


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
    run_job(title, TRAIN_JOB, [*training_arguments(config, run), *folder.restart_arguments()], timings)
    return folder


def training_arguments(config: StudyConfig, run: TrainingRun) -> list[str]:
    """training_script.py's options for one run (study/checks.py parses them before any step runs)."""
    spacing = min(config.evaluation_spacing(), run.budget)
    # Held-out loss every `spacing` steps (the learning curve within a run; the plan itself evaluates before and
    # after training, so a run no longer than the spacing needs no evaluation of its own); a checkpoint as often,
    # so a stopped run resumes, the newest two kept (the run's adapter is the finished run folder itself).
    evaluation = {"eval_strategy": "steps", "eval_steps": spacing} if spacing < run.budget else {"eval_strategy": "no"}
    options = {**evaluation, "save_strategy": "steps", "save_steps": spacing,
               **config.training, **config.recipes.get(run.recipe, {}), "save_total_limit": 2, "quantization": run.precision, "max_steps": run.budget,
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
    run_job(title, GENERATE_JOB, [*model, "--prompts_file", str(prompts), "--output_file", str(output),
                                        "--max_new_tokens", str(config.max_new_tokens), *stop_arguments(config),
                                        "--batch_size", str(config.generation_batch_size), *extra], timings)
    return output


def stop_arguments(config: StudyConfig) -> list[str]:
    """--stop=TEXT for each stop string (the = form: a stop string may begin with '-')."""
    return [f"--stop={stop}" for stop in config.stop or []]


def judge_file(config: StudyConfig, name: str) -> Path:
    return Path(config.run_dir) / "judge" / f"{name}.jsonl"


def judge(config: StudyConfig, base: Path, tuned: Path, name: str, timings: Timings) -> Path:
    """The configured judge on base against tuned, every record in both orders; skipped when every verdict is there
    (the judge resumes a partial file itself). A file holding another judge's verdicts (the config's `judge:` changed
    since) is refused, neither skipped nor resumed: they would be reported under the new judge's name."""
    output = judge_file(config, name)
    title = f"judge ({name})"
    check_judged_by(config, output)
    expected = 2 * config.eval_records
    if complete_lines(output) >= expected:
        skip(title, f"{output} holds its {expected} verdicts")
        return output
    run_job(title, JUDGE_JOB, [str(base), str(tuned), "--judge", config.judge, "--ratings_file", str(output)], timings)
    return output


def check_judged_by(config: StudyConfig, output: Path) -> None:
    """Every line of a judge file already there is the configured judge's: its model and the shipped template."""
    from ..judge.job import shipped_template_annotator  # torch: only a study with a judge needs it

    expected = shipped_template_annotator(config.judge)
    for number, row in read_appendable(output).rows:
        if row.get("annotator") != expected:
            fail(f"{output}:{number}: verdicts of {row.get('annotator')!r}, not of the config's judge ({expected}); "
                 f"delete {output} to judge again with it")


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
