"""The study end to end: fine-tune, generate on held-out records with the base and the tuned model at the same
base precision, score with paired tests, follow the scores over training budgets, compare base precisions
(quantization), and sweep decoding settings; with `judge: MODEL` in the config, a model also judges tuned against
base (python -m alpaca_qlora.judge) and the report gives its win rate beside the metrics.

    python -m alpaca_qlora.experiment --config experiments/stories260k.yaml

Training and generation run the project's scripts (training_script.py, inference.py) as a user would; each
step is skipped when its output is complete, so an interrupted study, or one given a larger budget, goes on
where it stopped when the same command runs again. Scoring runs in this process with evaluate_metrics.py's
functions. The report (markdown, figures, a summary JSON and the score files) goes to `results_dir`, the
figures also to `assets_dir`; training runs, prompts and generations to `run_dir`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..cli import fail
from .checks import check_steps_accept
from .config import StudyConfig, load_study_config
from .committed import committed_generations, load_study_data, save_inputs
from .comparisons import comparison_pairs, judged_runs, sweep_run_of
from .report import write_study_report
from .scores import make_scorers, score_files, score_sweep
from ..jobs import Timings
from .steps import base_model_arguments, generate, judge, prompt_files, sweep_size, train, train_folder


def run_study(config: StudyConfig) -> Path:
    timings = Timings(Path(config.run_dir) / "timings.json")
    runs = {run: train(config, run, timings) for run in config.runs()}
    eval_prompts, sweep_prompts = prompt_files(config, next(iter(runs.values())))
    n, files = config.eval_records, {}

    for precision in config.precisions():  # the untuned base at every precision the study uses
        name = f"base-{precision}"
        files[name] = generate(config, name, base_model_arguments(config, precision), eval_prompts, n, timings)
    for run in runs:  # every run's adapter, on its own base precision
        files[run.tuned] = generate(config, run.tuned, ["--adapter", str(train_folder(config, run))], eval_prompts, n,
                                    timings)
    sweep_run = sweep_run_of(config)
    sweep_file = generate(config, "sweep", ["--adapter", str(train_folder(config, sweep_run))], sweep_prompts,
                          config.sweep_records * sweep_size(config), timings, ["--sweep", config.sweep])
    base = files[f"base-{config.main_quantization}"]
    judged = {run.tuned: judge(config, base, files[run.tuned], run.tuned, timings)
              for run in judged_runs(config)} if config.judge else {}

    print("[score] every generation file, in this process", flush=True)
    started = time.time()
    scorers = make_scorers(config)
    results_dir = Path(config.results_dir)
    save_inputs(config, runs, files, sweep_file, timings, results_dir, judged)
    score_files(committed_generations(results_dir, files), comparison_pairs(config), scorers, results_dir / "scores")
    score_sweep(results_dir / "generations" / "sweep.jsonl", scorers, results_dir / "sweep_scores")
    timings.record("score", time.time() - started)
    save_inputs(config, runs, files, sweep_file, timings, results_dir, judged)  # the scoring's time too
    report = write_study_report(load_study_data(config, scorers))
    print(f"report: {report}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: fail(message)  # type: ignore[method-assign]
    parser.add_argument("--config", required=True, help="YAML/JSON study config (see experiments/); its paths are relative to it")
    parser.add_argument("--run_dir", help="override the config's run_dir (relative to this folder)")
    parser.add_argument("--results_dir", help="override the config's results_dir (relative to this folder)")
    parser.add_argument("--assets_dir", help="override the config's assets_dir (relative to this folder)")
    args = parser.parse_args(argv)
    overrides = {"run_dir": args.run_dir, "results_dir": args.results_dir, "assets_dir": args.assets_dir}
    config = load_study_config(args.config, overrides)
    check_steps_accept(config, args.config)  # every value a later step would refuse, before the first step
    run_study(config)
