"""Scoring the study's generations in this process, with evaluate_metrics.py's own functions.

One scorer (one BERTScore model) scores every file, so shared references are embedded once; the study
picks its paired comparisons by name and keeps the scoring's own result objects: nothing is read back from
metrics.json or matched by label text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..scoring.inputs import Group, InputConfig, load_groups, pair_groups
from ..scoring.metrics import Comparison, GroupScores, MetricConfig, Scorers, compare, load_scorers, score_groups
from ..scoring.report import OutputConfig, Report, build_report, write_report
from .config import StudyConfig


@dataclass
class StudyScores:
    report: Report
    by_name: dict[str, GroupScores]  # generation file name (without .jsonl) -> its scores
    comparisons: dict[tuple[str, str], Comparison]  # (a, b) -> b minus a


def metric_config(config: StudyConfig) -> MetricConfig:
    """How the study scores (study/checks.py resolves its BERTScore backbone before any step runs)."""
    return MetricConfig(bertscore_model=config.bertscore_model, bertscore_num_layers=config.bertscore_num_layers,
                        bootstrap=config.bootstrap, no_progress=True)


def make_scorers(config: StudyConfig, bertscorer=None) -> Scorers:
    return load_scorers(metric_config(config), bertscorer)


def score_files(files: dict[str, Path], pairs: list[tuple[str, str]], scorers: Scorers, output_dir: Path) -> StudyScores:
    """Each file holds one model's generations with one setting; each pair (a, b) is compared as b minus a."""
    groups: dict[str, Group] = {}
    for name, path in files.items():
        [group] = load_groups(str(path), InputConfig())
        group.label = name
        groups[name] = group
    results = dict(zip(groups, score_groups(list(groups.values()), scorers)))
    comparisons = {(a, b): compare(pair_groups(groups[a], groups[b]), results[a], results[b], scorers) for a, b in pairs}
    report = build_report([str(path) for path in files.values()], scorers, list(results.values()), list(comparisons.values()))
    write_report(report, OutputConfig(output_dir=str(output_dir), overwrite=True))
    return StudyScores(report, results, comparisons)


def score_sweep(path: Path, scorers: Scorers, output_dir: Path) -> Report:
    """A sweep file holds one group per decoding setting, labelled by the settings that vary."""
    groups = load_groups(str(path), InputConfig())
    report = build_report([str(path)], scorers, score_groups(groups, scorers), [])
    write_report(report, OutputConfig(output_dir=str(output_dir), overwrite=True))
    return report
