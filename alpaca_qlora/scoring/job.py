"""evaluate_metrics.py's job: read generation files, score, compare, write the report.

The doors are `evaluate_metrics.py` and `python -m alpaca_qlora.score`; `run` is also called in-process (tests,
notebooks) with an already loaded BERTScorer.
"""

from __future__ import annotations

import sys
from typing import Optional

from ..cli import ArgumentParser, parse_dataclasses
from .human import load_pairwise, summarise_pairwise
from .inputs import InputConfig, attach_ratings, load_groups, pair_inputs, prefix_labels
from .judged import summarise_judges
from .metrics import (
    MetricConfig, bootstrap_settings, check_config, compare, load_scorers, pooled_ratings, score_groups,
)
from .report import OutputConfig, Report, build_report, check_report_dir, write_report

DESCRIPTION = "Score saved generations with BLEU, ROUGE-L F1 and BERTScore F1, with 95% bootstrap intervals."


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser((InputConfig, MetricConfig, OutputConfig), description=DESCRIPTION,
                              epilog="Inputs: JSONL from inference.py, or JSON/JSONL/CSV with the fields named above. "
                                     "With two or more inputs, each later one is compared with the first.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="Generations to score (.jsonl, .json or .csv). Two files: paired comparison.")
    inputs, metrics, output, rest = parse_dataclasses(parser, sys.argv[1:] if argv is None else argv)
    return inputs, metrics, output, rest.inputs


def main(argv: list[str] | None = None) -> None:
    input_config, metric_config, output_config, paths = parse_args(argv)
    run(paths, input_config, metric_config, output_config)


def run(paths: list[str], input_config: InputConfig, metric_config: MetricConfig, output_config: OutputConfig,
        bertscorer=None) -> Report:
    """Read, score, compare and write; `bertscorer` reuses an already loaded BERTScorer (tests, notebooks).

    With --pairwise_ratings, inputs without any reference are not refused: the reference metrics are skipped (the
    report says so and why) and the ratings are reported alone."""
    check_config(metric_config)
    check_report_dir(output_config)
    ratings_files = _ratings_files(input_config.pairwise_ratings)
    per_input = [load_groups(path, input_config, require_references=not ratings_files) for path in paths]
    prefix_labels(per_input, paths)
    skipped = reference_metrics_skipped(paths, per_input, input_config)
    groups = [] if skipped else [group for groups in per_input for group in groups]
    unmatched_ratings = attach_ratings(input_config.ratings, groups) if input_config.ratings else []
    pairwise = load_pairwise(ratings_files, paths, per_input) if ratings_files else None
    pairings = [] if skipped else [pairing for other in per_input[1:] for pairing in pair_inputs(per_input[0], other)]

    if skipped:
        print(f"reference metrics skipped: {skipped}", file=sys.stderr)
        scorers, results = None, []
    else:
        scorers = load_scorers(metric_config, bertscorer)
        results = score_groups(groups, scorers)
    by_group = {id(result.group): result for result in results}
    comparisons = [compare(p, by_group[id(p.a)], by_group[id(p.b)], scorers) for p in pairings]
    human, judges = None, []
    if pairwise is not None:
        systems = [by_group.get(id(groups[0])) if len(groups) == 1 else None for groups in per_input]
        if pairwise.judgements:
            human = summarise_pairwise(pairwise, systems, metric_config.bootstrap, metric_config.seed,
                                       with_metrics=not skipped)
        judges = summarise_judges(pairwise, metric_config.bootstrap, metric_config.seed)
    report = build_report(paths, scorers, results, comparisons, pooled_ratings(results, metric_config),
                          unmatched_ratings, human, judges, skipped,
                          None if scorers is not None else bootstrap_settings(metric_config))
    written = write_report(report, output_config)
    scored = f"scored {sum(len(g.records) for g in groups)} pairs in {len(groups)} group(s)" if not skipped else (
        f"reported the ratings of {len(paths)} file(s) (no reference metrics)")
    print(f"{scored}; wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
    return report


def _ratings_files(given: list[str] | str | None) -> list[str]:
    """--pairwise_ratings as a list (in-process callers may pass one path as text)."""
    if not given:
        return []
    return [given] if isinstance(given, str) else list(given)


def reference_metrics_skipped(paths: list[str], per_input: list[list], config: InputConfig) -> Optional[str]:
    """Why the reference metrics are not computed (an input without any reference), or None."""
    without = [path for path, groups in zip(paths, per_input) if not any(group.records for group in groups)]
    if not without:
        return None
    named = without[0] if len(without) == 1 else f"{without[0]} and {len(without) - 1} more input(s)"
    return (f"{named}: no row has a reference (field '{config.reference_field}'); BLEU, ROUGE-L and BERTScore need "
            "one, so only the pairwise ratings are reported")
