"""What the study commits, and the report's only inputs: every number of the report is computed from these files.

results_dir/
  generations/<name>.jsonl   every generation file, one line per record (prompt, reference, answer, settings)
  runs/<run>/                each training run's small files: run_config.json, run_info.json (machine, versions),
                             train_log.jsonl (the learning rate and the held-out loss at every evaluation),
                             eval_results.json (held-out loss before and after training)
  scores/scores.jsonl        per-record sentence BLEU, ROUGE-L F1 and BERTScore F1 of every generation file
  sweep_scores/scores.jsonl  the same for the decoding sweep
  judge/<tuned>.jsonl        with a `judge` in the config: its verdicts on base against each tuned file, both orders
  timings.json               wall seconds of every step, legs of a resumed step added

The report is made from these files by `load_study_data`, in the study and in `python -m alpaca_qlora.study.rebuild`
(which checks that the committed report is exactly what they give). BLEU and ROUGE-L are recomputed from the
texts and must equal the per-record values on file; BERTScore is read from the file (its backbone is a download).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cli import fail
from ..files import atomic_write_json, read_json_file
from ..jsonl import read_objects
from ..run_folder import EVAL_RESULTS, RUN_CONFIG, RUN_INFO, TRAIN_LOG, RunFolder
from ..scoring.human import load_pairwise
from ..scoring.inputs import Group, InputConfig, load_groups, pair_groups
from ..scoring.judged import JudgeSummary, summarise_judges
from ..scoring.metrics import (
    Comparison, GroupScores, SampleScores, Scorers, bleu_statistics, compare, rouge_l_f1, sentence_bleu, summarise,
)
from .comparisons import comparison_pairs, judged_runs
from .config import StudyConfig, TrainingRun
from .scores import metric_config

RUN_SMALL_FILES = (RUN_CONFIG, RUN_INFO, TRAIN_LOG, EVAL_RESULTS)
SCORES_FILE = "scores.jsonl"
JUDGE_FOLDER = "judge"
TIMINGS_FILE = "timings.json"
# Per-record BLEU and ROUGE-L recomputed from the texts must equal the committed values to this tolerance (the
# committed file holds Python floats written by json: the same computation gives the same float).
RECOMPUTED_TOLERANCE = 1e-9


@dataclass
class StudyData:
    """Everything the report is made from, all read from results_dir."""

    config: StudyConfig
    runs: dict[TrainingRun, RunFolder]  # each run's committed small files
    scores: dict[str, GroupScores]  # generation name -> scores
    comparisons: dict[tuple[str, str], Comparison]  # (a, b) -> b minus a
    sweep: list[GroupScores]
    timings: dict[str, float]
    judged: dict[str, JudgeSummary] = field(default_factory=dict)  # tuned name -> the judge on base vs it (if any)


def generations_folder(results_dir: Path) -> Path:
    return results_dir / "generations"


def committed_generations(results_dir: Path, files: dict[str, Path]) -> dict[str, Path]:
    return {name: generations_folder(results_dir) / f"{name}.jsonl" for name in files}


def save_inputs(config: StudyConfig, runs: dict[TrainingRun, RunFolder], files: dict[str, Path], sweep_file: Path,
                timings, results_dir: Path, judged: dict[str, Path] | None = None) -> None:
    """Copy the generations, the judge's verdicts, the runs' small files and the timings into results_dir (all small;
    committed)."""
    generations = generations_folder(results_dir)
    generations.mkdir(parents=True, exist_ok=True)
    for name, path in {**files, "sweep": sweep_file}.items():
        shutil.copyfile(path, generations / f"{name}.jsonl")
    for name, path in (judged or {}).items():
        (results_dir / JUDGE_FOLDER).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, results_dir / JUDGE_FOLDER / f"{name}.jsonl")
    for run, folder in runs.items():
        target = results_dir / "runs" / run.name
        target.mkdir(parents=True, exist_ok=True)
        for name in RUN_SMALL_FILES:
            if folder.file(name).is_file():
                shutil.copyfile(folder.file(name), target / name)
    atomic_write_json(results_dir / TIMINGS_FILE, timings.read())


def load_study_data(config: StudyConfig, scorers: Scorers) -> StudyData:
    results_dir = Path(config.results_dir)
    runs = {run: RunFolder(results_dir / "runs" / run.name) for run in config.runs()}
    for run, folder in runs.items():
        if not folder.file(EVAL_RESULTS).is_file():
            fail(f"{folder.path}: missing {EVAL_RESULTS}; the study has not finished run {run.name}")
    names = [f"base-{precision}" for precision in config.precisions()] + [run.tuned for run in runs]
    bertscores = committed_bertscores(results_dir / "scores" / SCORES_FILE)
    groups = {name: named_group(generations_folder(results_dir) / f"{name}.jsonl", name) for name in names}
    scores = {name: scored(group, bertscores, scorers) for name, group in groups.items()}
    comparisons = {(a, b): compare(pair_groups(groups[a], groups[b]), scores[a], scores[b], scorers)
                   for a, b in comparison_pairs(config)}
    sweep_bertscores = committed_bertscores(results_dir / "sweep_scores" / SCORES_FILE)
    sweep = [scored(group, sweep_bertscores, scorers)
             for group in load_groups(str(generations_folder(results_dir) / "sweep.jsonl"), InputConfig())]
    timings_path = results_dir / TIMINGS_FILE
    timings = read_json_file(timings_path) if timings_path.is_file() else {}
    judged = judge_summaries(config, groups) if config.judge else {}
    return StudyData(config, runs, scores, comparisons, sweep, timings, judged)


def judge_summaries(config: StudyConfig, groups: dict[str, Group]) -> dict[str, JudgeSummary]:
    """The committed verdicts of the judge on base against each tuned file, read and summarised as
    evaluate_metrics.py --pairwise_ratings does (the same bootstrap as the scores); verdicts of another model than
    the config's `judge` are refused (the report would give them its name)."""
    from ..judge.job import judge_name  # torch: only a study with a judge needs it

    results_dir = Path(config.results_dir)
    base = f"base-{config.main_quantization}"
    summaries = {}
    for run in judged_runs(config):
        path = results_dir / JUDGE_FOLDER / f"{run.tuned}.jsonl"
        if not path.is_file():
            fail(f"{path}: missing; the study has not judged '{run.tuned}' yet (run the study again)")
        files = [str(generations_folder(results_dir) / f"{name}.jsonl") for name in (base, run.tuned)]
        pairwise = load_pairwise([str(path)], files, [[groups[base]], [groups[run.tuned]]])
        judges = summarise_judges(pairwise, config.bootstrap, metric_config(config).seed)
        if len(judges) != 1:
            fail(f"{path}: expected the verdicts of one judge, found {len(judges)} (people's ratings or other judges)")
        if judges[0].judge.get("name") != judge_name(config.judge):
            fail(f"{path}: verdicts of {judges[0].annotator!r}, not of the config's judge ({judge_name(config.judge)}); "
                 f"delete {Path(config.run_dir) / JUDGE_FOLDER / path.name} and run the study again to judge with it")
        summaries[run.tuned] = judges[0]
    return summaries


def named_group(path: Path, name: str) -> Group:
    if not path.is_file():
        fail(f"{path}: missing; the study has not generated '{name}' yet")
    [group] = load_groups(str(path), InputConfig())
    group.label = name
    return group


def committed_bertscores(path: Path) -> dict[tuple[str, str], dict]:
    """(group label, record id) -> the committed per-record scores."""
    if not path.is_file():
        fail(f"{path}: missing; score the study's generations first (run the study again)")
    return {(row["group"], str(row["id"])): row for row in read_objects(path)}


def scored(group: Group, committed: dict[tuple[str, str], dict], scorers: Scorers) -> GroupScores:
    """A group's scores: BLEU and ROUGE-L from its texts (checked against the committed values), BERTScore from file."""
    rows = []
    for record in group.records:
        row = committed.get((group.label, record.id))
        if row is None:
            fail(f"{record.source}: line {record.line}: record {record.id!r} of '{group.label}' has no committed score")
        rows.append(row)
    predictions = [r.prediction for r in group.records]
    references = [r.reference for r in group.records]
    stats = bleu_statistics(scorers, predictions, references)
    samples = SampleScores(sentence_bleu=sentence_bleu(scorers, stats),
                           rouge_l_f1=rouge_l_f1(scorers, predictions, references, False),
                           bertscore_f1=np.array([row["bertscore_f1"] for row in rows], dtype=np.float64),
                           bleu_stats=stats)
    for key, values in (("sentence_bleu", samples.sentence_bleu), ("rougeL_f1", samples.rouge_l_f1)):
        on_file = np.array([row[key] for row in rows], dtype=np.float64)
        worst = int(np.argmax(np.abs(values - on_file)))
        if abs(values[worst] - on_file[worst]) > RECOMPUTED_TOLERANCE:
            record = group.records[worst]
            fail(f"{record.source}: line {record.line}: {key} recomputed from the texts is {float(values[worst])!r}, the "
                 f"committed scores say {float(on_file[worst])!r}")
    return summarise(group, samples, scorers)
