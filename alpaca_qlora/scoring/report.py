"""Writing the scores: metrics.json, metrics.csv, metrics.md, scores.jsonl and metrics.png.

Everything is rendered in memory first and written (each file atomically) only after all scoring succeeded.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..cli import fail
from ..cli import check_writable_folder
from ..files import move_in, remove_stale_staging, remove_written, staging_folder
from .human import HeadToHead, PairwiseSummary, WinRate
from .judged import JudgeSummary, Share
from .metrics import Comparison, Difference, Estimate, GroupScores, RatingSummary, Scorers, at_resampling_floor

METRICS = (("bleu", "BLEU"), ("rougeL_f1", "ROUGE-L F1"), ("bertscore_f1", "BERTScore F1"))


@dataclass
class OutputConfig:
    """Where the report goes."""

    output_dir: str = field(metadata={"help": "Folder for metrics.json/.csv/.md, scores.jsonl and metrics.png."})
    overwrite: bool = field(default=False, metadata={"help": "Replace report files already in --output_dir."})


@dataclass
class Report:
    inputs: list[str]
    settings: dict[str, Any]
    groups: list[GroupScores]
    comparisons: list[Comparison]
    pooled_ratings: Optional[RatingSummary] = None
    unmatched_ratings: list[int] = field(default_factory=list)  # ratings of answers that are not among the rows
    human: Optional[PairwiseSummary] = None  # blind side-by-side choices (--pairwise_ratings)
    judges: list[JudgeSummary] = field(default_factory=list)  # a model's verdicts (--pairwise_ratings), per judge
    reference_metrics_skipped: Optional[str] = None  # why, when the inputs have no reference


COMPLETE_MARKER = "metrics.json"  # written last: a report without it was cut short, and a rerun completes it
STAGING_PREFIX = ".report-"


def check_report_dir(config: OutputConfig) -> None:
    """Refuse, before any scoring, to clobber an earlier complete report (an interrupted one is completed)."""
    folder = Path(config.output_dir)
    if folder.exists() and not folder.is_dir():
        fail(f"--output_dir {folder} exists and is not a folder")
    check_writable_folder(folder, "--output_dir")
    if (folder / COMPLETE_MARKER).exists() and not config.overwrite:
        fail(f"{folder / COMPLETE_MARKER} already exists; pass --overwrite to replace the report in {folder}")


def build_report(inputs: list[str], scorers: Optional[Scorers], groups: list[GroupScores], comparisons: list[Comparison],
                 pooled: Optional[RatingSummary] = None, unmatched_ratings: Optional[list[int]] = None,
                 human: Optional[PairwiseSummary] = None, judges: Optional[list[JudgeSummary]] = None,
                 skipped: Optional[str] = None, settings: Optional[dict[str, Any]] = None) -> Report:
    """`scorers` None (no reference metric computed, `skipped` says why): `settings` holds the bootstrap's."""
    return Report(inputs=inputs, settings=scorers.settings() if scorers is not None else settings, groups=groups,
                  comparisons=comparisons, pooled_ratings=pooled, unmatched_ratings=unmatched_ratings or [], human=human,
                  judges=judges or [], reference_metrics_skipped=skipped)


def write_report(report: Report, config: OutputConfig) -> list[Path]:
    """Render every file, write them all aside, then move them in with metrics.json last; returns the paths.

    A kill leaves either the old report, or some new files without metrics.json (which the same command, run
    again, replaces), and at most an aside folder that the next run removes. Other files in the folder are kept."""
    folder = Path(config.output_dir)
    rendered = {
        "metrics.csv": to_csv(report),
        "metrics.md": to_markdown(report),
        "scores.jsonl": to_scores_jsonl(report),
        "metrics.png": to_png(report),
        COMPLETE_MARKER: json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n",
    }
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder, STAGING_PREFIX)  # left by a killed run
    remove_written(folder, [COMPLETE_MARKER])  # replacing a report: it is incomplete until the end
    with staging_folder(folder, STAGING_PREFIX) as staging:
        for name, content in rendered.items():
            (staging / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        move_in(staging, folder, last=COMPLETE_MARKER)
    return [folder / name for name in rendered]


# ---------------------------------------------------------------- json


def to_json(report: Report) -> dict[str, Any]:
    data = {
        "inputs": report.inputs,
        "settings": report.settings,
        "groups": [group_row(g, report.settings) for g in report.groups],
        "comparisons": [comparison_row(c) for c in report.comparisons],
    }
    if report.reference_metrics_skipped:
        data["reference_metrics"] = {"skipped": report.reference_metrics_skipped}
    if report.pooled_ratings is not None:
        data["ratings_all_groups"] = rating_dict(report.pooled_ratings)
    if report.unmatched_ratings:
        data["ratings_unmatched"] = {"n": len(report.unmatched_ratings), "mean": _mean(report.unmatched_ratings),
                                     "note": "ratings of answers that are not among the scored rows"}
    if report.human is not None:
        data["human_pairwise"] = human_dict(report.human, report.settings["bootstrap"])
    if report.judges:
        data["judge_pairwise"] = [judge_dict(judge, report.settings["bootstrap"]) for judge in report.judges]
    return finite(data)


def human_dict(human: PairwiseSummary, bootstrap: dict[str, Any]) -> dict[str, Any]:
    import importlib.metadata

    labels = human.labels
    bt = human.bradley_terry
    return {
        "ratings_file": human.path,
        "n_ratings": human.n_ratings,
        "n_used": human.n_used,
        "n_unmatched": human.unmatched,
        "n_repeated": human.repeated,
        "choices": human.choices,
        "annotators": human.annotators,
        "ties": "a tie or 'both bad' counts half a win for each side",
        "interval": f"95% percentile bootstrap over prompts (a prompt brings all its ratings), "
                    f"{bootstrap['resamples']} resamples, seed {bootstrap['seed']}",
        "systems": win_rate_rows(human.win_rates, labels, human.sources),
        "head_to_head": head_to_head_rows(human.head_to_head, labels),
        "bradley_terry": None if bt is None else {
            "strengths": {labels[system]: value for system, value in zip(bt.systems, bt.strengths)},
            "exact_ml": bt.exact,
            "library": f"choix {importlib.metadata.version('choix')} ilsr_pairwise",
            "note": "log-strengths, mean 0; P(i beats j) = 1 / (1 + exp(s_j - s_i)); a tie is half a win each way"
                    + ("" if bt.exact else "; regularised (alpha 0.01): some system never won or never lost"),
        },
        "metric_agreement": {name: {"n": a.n, "n_decisive": a.n_decisive, "pairwise_accuracy": a.pairwise_accuracy,
                                    "metric_ties": a.metric_ties, "kendall_tau": a.kendall_tau}
                             for name, a in human.metric_agreement.items()},
        "metric_agreement_note": "pairwise accuracy: share of decisive choices (A or B) where the per-sample metric "
                                 "scores the chosen answer higher (a metric tie is a miss); Kendall's tau-b "
                                 "(scipy) of the choice (+1/0/-1) against the metric difference, each rating in "
                                 "both orientations",
        "annotator_agreement": [{"a": g.a, "b": g.b, "n_shared": g.n_shared, "cohen_kappa": g.cohen_kappa,
                                 "raw_agreement": g.raw_agreement} for g in human.annotator_agreement],
    }


def win_rate_rows(rates: list[WinRate], labels: list[str], sources: list[str]) -> list[dict[str, Any]]:
    return [{"label": labels[r.system], "source": sources[r.system], "n": r.n, "wins": r.wins, "losses": r.losses,
             "ties": r.ties, "both_bad": r.both_bad, "win_rate": r.win_rate, "win_rate_ci95": list(r.ci95)}
            for r in rates]


def head_to_head_rows(rows: list[HeadToHead], labels: list[str]) -> list[dict[str, Any]]:
    return [{"a": labels[h.a], "b": labels[h.b], "n": h.n, "a_wins": h.a_wins, "b_wins": h.b_wins, "ties": h.ties,
             "both_bad": h.both_bad, "b_win_rate": h.b_win_rate, "b_win_rate_ci95": list(h.ci95)} for h in rows]


def share_dict(share: Optional[Share]) -> Optional[dict[str, Any]]:
    if share is None:
        return None
    return {"n": share.n, "k": share.k, "value": share.value, "ci95": None if share.ci95 is None else list(share.ci95)}


def judge_dict(judge: JudgeSummary, bootstrap: dict[str, Any]) -> dict[str, Any]:
    agreement = judge.agreement
    return {
        "annotator": judge.annotator,
        "judge": judge.judge,
        "ratings_files": judge.files,
        "n_lines": judge.n_lines,
        "n_repeated": judge.n_repeated,
        "n_unmatched": judge.n_unmatched,
        "n_pairs": judge.n_pairs,
        "n_both_orders": judge.n_both_orders,
        "n_one_order": judge.n_one_order,
        "n_swap_ties": judge.n_swap_ties,
        "outcomes": judge.outcomes,
        "verdicts": "one per pair: the same outcome in both orders, else a tie (n_swap_ties); a pair judged in one "
                    "order keeps that order's verdict",
        "interval": f"95% percentile bootstrap over pairs (win rates: over prompts), {bootstrap['resamples']} "
                    f"resamples, seed {bootstrap['seed']}",
        "position_consistency": share_dict(judge.position_consistency),
        "side_a": share_dict(judge.side_a),
        "length_bias": {**share_dict(judge.length_bias), "n_equal_length": judge.n_equal_length,
                        "people": share_dict(judge.people_length_bias),
                        "note": "share of decisive verdicts (one per pair) won by the longer answer, in characters; "
                                "0.5: length does not decide"},
        "systems": win_rate_rows(judge.win_rates, judge.labels, judge.sources),
        "head_to_head": head_to_head_rows(judge.head_to_head, judge.labels),
        "agreement_with_people": None if agreement is None else {
            "n": agreement.n, "n_pairs": agreement.n_pairs, "judge_ties": agreement.judge_ties,
            "accuracy": agreement.accuracy, "accuracy_ci95": _list(agreement.accuracy_ci95),
            "cohen_kappa": agreement.cohen_kappa, "cohen_kappa_ci95": _list(agreement.cohen_kappa_ci95),
            "note": "over each person's decisive choice (A or B) of a pair the judge judged; a judge's tie is a miss; "
                    "kappa: sklearn cohen_kappa_score on which system won (or tie)"},
    }


def _list(values: Optional[tuple[float, float]]) -> Optional[list[float]]:
    return None if values is None else list(values)


def _mean(values: list[int]) -> float:
    return sum(values) / len(values)


def group_row(result: GroupScores, settings: dict[str, Any]) -> dict[str, Any]:
    group = result.group
    row: dict[str, Any] = {
        "label": group.label,
        "source": group.source,
        "base_model": group.base_model,
        "adapter": group.adapter,
        "settings": group.settings,
        "precision": group.precision,
        "n": len(group.records),
        "n_empty_predictions": group.empty_predictions,
        "n_without_reference": len(group.without_reference),
    }
    row.update(_estimate("bleu", result.bleu))
    row["bleu_signature"] = settings["bleu"]["signature"]
    row.update(_estimate("rougeL_f1", result.rouge_l_f1))
    row.update(_estimate("bertscore_f1", result.bertscore_f1))
    row["bertscore_model"] = settings["bertscore"]["model"]
    row["bertscore_num_layers"] = settings["bertscore"]["num_layers"]
    if result.ratings is not None:
        row["ratings"] = rating_dict(result.ratings)
    return row


def _estimate(name: str, estimate: Estimate) -> dict[str, Any]:
    return {name: estimate.value, f"{name}_ci95": list(estimate.ci95)}


def rating_dict(summary: RatingSummary) -> dict[str, Any]:
    return {"n": summary.n, "mean": summary.mean, "ci95": list(summary.ci95), "scale": "1-5",
            "correlation_with": summary.correlations}


def comparison_row(comparison: Comparison) -> dict[str, Any]:
    pairing = comparison.pairing
    row: dict[str, Any] = {
        "a": pairing.a.label, "b": pairing.b.label, "a_source": pairing.a.source, "b_source": pairing.b.source,
        "n_shared": len(pairing.shared_ids), "only_in_a": pairing.only_in_a, "only_in_b": pairing.only_in_b,
        "difference": "b - a",
    }
    for name, difference in _differences(comparison):
        row[name] = {"a": difference.a, "b": difference.b, "difference": difference.difference,
                     "ci95": list(difference.ci95), "p_value": difference.p_value}
    return row


def _differences(comparison: Comparison) -> list[tuple[str, Difference]]:
    return [("bleu", comparison.bleu), ("rougeL_f1", comparison.rouge_l_f1),
            ("bertscore_f1", comparison.bertscore_f1)]


def finite(value: Any) -> Any:
    """NaN/inf are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# ---------------------------------------------------------------- csv


def to_csv(report: Report) -> str:
    if not report.groups:  # no reference metric computed: the inputs, and why
        return _skipped_csv(report)
    setting_names: list[str] = []
    for result in report.groups:
        setting_names += [name for name in result.group.settings if name not in setting_names]
    rows = [_csv_row(result, setting_names, report.settings) for result in report.groups]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _skipped_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["input", "reference_metrics"])
    writer.writerows([path, f"skipped: {report.reference_metrics_skipped}"] for path in report.inputs)
    return buffer.getvalue()


def _csv_row(result: GroupScores, setting_names: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    group = result.group
    row: dict[str, Any] = {"group": group.label, "source": group.source, "n": len(group.records)}
    for name, estimate in (("bleu", result.bleu), ("rougeL_f1", result.rouge_l_f1),
                           ("bertscore_f1", result.bertscore_f1)):
        row[name] = estimate.value
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = estimate.ci95
    ratings = result.ratings
    row["rating_n"] = ratings.n if ratings else ""
    row["rating_mean"] = ratings.mean if ratings else ""
    row["rating_ci_low"], row["rating_ci_high"] = ratings.ci95 if ratings else ("", "")
    row["base_model"] = group.base_model or ""
    row["adapter"] = group.adapter or ""
    for name in setting_names:
        value = group.settings.get(name)
        row[f"settings.{name}"] = "" if value is None else value
    row["bleu_signature"] = settings["bleu"]["signature"]
    row["bertscore_model"] = settings["bertscore"]["model"]
    row["bertscore_num_layers"] = settings["bertscore"]["num_layers"]
    return row


# ---------------------------------------------------------------- markdown


SMALL_SAMPLE = 30  # below this many records, bootstrap intervals and p-values are rough at best


def to_markdown(report: Report) -> str:
    if report.reference_metrics_skipped:
        lines = ["## Scores", "", f"Reference metrics skipped: {_md(report.reference_metrics_skipped)}."]
    else:
        lines = ["## Scores", "", *_score_table(report), "", *_settings_notes(report.settings), *_count_notes(report)]
    if report.comparisons:
        lines += ["", "## Paired comparison (b - a, over shared ids)", "", *_comparison_table(report.comparisons, 1 / (report.settings["bootstrap"]["resamples"] + 1))]
        small = [c for c in report.comparisons if len(c.pairing.shared_ids) < SMALL_SAMPLE]
        if small:
            lines += ["", f"Caution: {len(small)} comparison(s) rest on fewer than {SMALL_SAMPLE} shared records "
                          f"(n = {min(len(c.pairing.shared_ids) for c in small)} at least): their intervals and p-values "
                          "say little; score more records."]
    if any(result.ratings for result in report.groups) or report.unmatched_ratings:
        lines += ["", "## Human ratings and their correlation with the metrics", "", *_ratings_table(report)]
    if report.human is not None:
        lines += ["", "## Human pairwise choices (blind side by side)", "", *_human_section(report.human)]
    for judge in report.judges:
        lines += ["", f"## A model as judge: `{_md(judge.annotator)}`", "", *_judge_section(judge)]
    return "\n".join(lines) + "\n"


def _win_rate_tables(win_rates, head_to_head, labels: dict, with_both_bad: bool, who: str) -> list[str]:
    """Each system's win rate, then (with more than one pair of systems) each pair head to head: people's choices
    (with a 'both bad' column) and a judge's verdicts (without) in one layout."""
    both = " both bad |" if with_both_bad else ""
    lines = [f"| System | comparisons | wins | losses | ties |{both} {who}win rate |",
             "|---|---:|---:|---:|---:|" + ("---:|" if with_both_bad else "") + "---|"]
    for r in win_rates:
        lines.append(f"| {_md(labels[r.system])} | {r.n} | {r.wins} | {r.losses} | {r.ties} | "
                     + (f"{r.both_bad} | " if with_both_bad else "")
                     + f"{r.win_rate:.3f} [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}] |")
    if len(head_to_head) > 1:
        lines += ["", f"| a | b | n | a wins | b wins | ties |{both} b's win rate |",
                  "|---|---|---:|---:|---:|---:|" + ("---:|" if with_both_bad else "") + "---|"]
        for h in head_to_head:
            lines.append(f"| {_md(labels[h.a])} | {_md(labels[h.b])} | {h.n} | {h.a_wins} | {h.b_wins} | {h.ties} | "
                         + (f"{h.both_bad} | " if with_both_bad else "")
                         + f"{h.b_win_rate:.3f} [{h.ci95[0]:.3f}, {h.ci95[1]:.3f}] |")
    return lines


def _human_section(human: PairwiseSummary) -> list[str]:
    labels = human.labels
    choices = ", ".join(f"{name} {count}" for name, count in human.choices.items())
    lines = [f"{human.n_used} choices from `{_md(human.path)}` by {len(human.annotators)} annotator(s) "
             f"({choices}). Win rate: a win counts 1, a tie or both bad 1/2, a loss 0; "
             "[95% bootstrap interval over prompts].", ""]
    lines += _win_rate_tables(human.win_rates, human.head_to_head, labels, with_both_bad=True, who="")
    if human.bradley_terry is not None:
        bt = human.bradley_terry
        ranked = sorted(zip(bt.strengths, bt.systems), reverse=True)
        lines += ["", "Bradley-Terry log-strengths (choix, mean 0; P(i beats j) = 1 / (1 + exp(s_j - s_i))"
                      + ("" if bt.exact else "; regularised: some system never won or never lost") + "): "
                      + ", ".join(f"{_md(labels[system])} {value:+.3f}" for value, system in ranked) + "."]
    if human.metric_agreement:  # none without reference metrics
        lines += ["", "| Metric | rated pairs | decisive | pairwise accuracy | metric ties | Kendall's tau |",
                  "|---|---:|---:|---|---:|---|"]
        for name, a in human.metric_agreement.items():
            accuracy = "n/a" if a.pairwise_accuracy is None else f"{a.pairwise_accuracy:.3f}"
            tau = "n/a" if a.kendall_tau is None else f"{a.kendall_tau:.3f}"
            lines.append(f"| {name} | {a.n} | {a.n_decisive} | {accuracy} | {a.metric_ties} | {tau} |")
        lines += ["", "Pairwise accuracy: share of decisive choices where the per-sample metric scores the chosen "
                      "answer higher (a metric tie is a miss). Kendall's tau-b (scipy) of the choice (+1 / 0 / -1) "
                      "against the metric difference, each rating in both orientations."]
    if human.annotator_agreement:
        lines += ["", "| Annotators | shared pairs | Cohen's kappa | raw agreement |", "|---|---:|---|---|"]
        for g in human.annotator_agreement:
            kappa = "n/a" if g.cohen_kappa is None else f"{g.cohen_kappa:.3f}"
            lines.append(f"| {_md(g.a)} / {_md(g.b)} | {g.n_shared} | {kappa} | {g.raw_agreement:.3f} |")
    notes = []
    if human.unmatched:
        notes.append(f"{human.unmatched} rating(s) compare files that are not among the inputs and are left out.")
    if human.repeated:
        notes.append(f"{human.repeated} rating(s) were given again by the same annotator for the same pair; the later "
                     "one counts.")
    return lines + (["", *notes] if notes else [])


def _judge_section(judge: JudgeSummary) -> list[str]:
    info = judge.judge
    precision = info.get("precision") or {}
    lines = [f"`{_md(str(info.get('name') or info.get('model')))}` judged {judge.n_pairs} pair(s) from "
             f"{', '.join(f'`{_md(path)}`' for path in judge.files)} ({judge.n_lines} lines; template "
             f"`{_md(str(info.get('template')))}` {str(info.get('template_sha256', ''))[:12]}, "
             f"{info.get('format')} prompt, {precision.get('quantization', '?')}/{precision.get('compute_dtype', '?')}). "
             f"Each pair is asked in both orders; a verdict that changes with the order counts as a tie: "
             f"**{judge.n_swap_ties} of {judge.n_both_orders}** pair(s) judged in both orders"
             + (f"; {judge.n_one_order} pair(s) were judged in one order only and keep that verdict" if judge.n_one_order
                else "") + ".", "",
             "| What to trust | value [95% interval] | n |", "|---|---|---:|",
             _share_row("Position consistency (the verdict survives the swap)", judge.position_consistency, "pairs"),
             _share_row("Answer A picked (decisive verdicts of one order; 0.5: no side preferred)", judge.side_a,
                        "verdicts"),
             _share_row("Longer answer wins (decisive verdicts; 0.5: length does not decide)", judge.length_bias,
                        "pairs")]
    if judge.people_length_bias is not None:
        lines.append(_share_row("People: longer answer wins (their decisive choices)", judge.people_length_bias,
                                "choices"))
    agreement = judge.agreement
    if agreement is not None:
        lines += [f"| Agreement with people: accuracy (pairs a person did not call a tie; a judge's tie misses) | "
                  f"{_value_ci(agreement.accuracy, agreement.accuracy_ci95)} | {agreement.n} |",
                  f"| Agreement with people: Cohen's kappa | {_value_ci(agreement.cohen_kappa, agreement.cohen_kappa_ci95)}"
                  f" | {agreement.n} |"]
    labels = judge.labels
    if judge.win_rates:
        lines += [""] + _win_rate_tables(judge.win_rates, judge.head_to_head, labels, with_both_bad=False,
                                         who="judge's ")
    notes = ["A judge's verdict is a model's reading, not a person's: trust it as far as the rows above allow "
             "(a small judge, such as a 135M model, is expected to be poor). Intervals: bootstrap over pairs; win rates "
             "over prompts, ties counting half."]
    if judge.length_bias.n and judge.n_equal_length:
        notes.append(f"{judge.n_equal_length} decisive verdict(s) between answers of equal length are not in the "
                     "length row.")
    if judge.n_unmatched:
        notes.append(f"{judge.n_unmatched} line(s) compare files that are not among the inputs and are left out.")
    if judge.n_repeated:
        notes.append(f"{judge.n_repeated} line(s) were given again for the same pair and order; the later one counts.")
    return lines + ["", *notes]


def _value_ci(value: Optional[float], ci95: Optional[tuple[float, float]]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if ci95 is None else f"{value:.3f} [{ci95[0]:.3f}, {ci95[1]:.3f}]"


def _share_row(what: str, share: Share, unit: str) -> str:
    return f"| {what} | {_value_ci(share.value, share.ci95)} | {share.n} {unit} |"


def _count_notes(report: Report) -> list[str]:
    notes = []
    for result in report.groups:
        group = result.group
        if group.without_reference:
            shown = ", ".join(group.without_reference[:10]) + (", ..." if len(group.without_reference) > 10 else "")
            notes.append(f"- {_md(group.label)}: {len(group.without_reference)} row(s) without a reference were not "
                         f"scored (ids {shown}).")
    return ["", *notes] if notes else []


def _score_table(report: Report) -> list[str]:
    lines = ["| Group | n | empty answers | BLEU | ROUGE-L F1 | BERTScore F1 |", "|---|---:|---:|---|---|---|"]
    for result in report.groups:
        cells = [_md(result.group.label), str(len(result.group.records)), str(result.group.empty_predictions),
                 _ci(result.bleu, 2), _ci(result.rouge_l_f1, 4), _ci(result.bertscore_f1, 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _settings_notes(settings: dict[str, Any]) -> list[str]:
    bleu, rouge, bert, boot = settings["bleu"], settings["rougeL"], settings["bertscore"], settings["bootstrap"]
    rescale = f"rescaled with {bert['baseline']}" if bert["rescale_with_baseline"] else "not rescaled"
    return [
        f"Values with [95% bootstrap interval]: {boot['resamples']} resamples, seed {boot['seed']}; "
        "corpus BLEU is resampled as a corpus.",
        "",
        f"- BLEU: sacrebleu corpus BLEU, 0-100, signature `{bleu['signature']}`.",
        f"- ROUGE-L F1: rouge-score `rougeL` F-measure averaged over samples, stemmer "
        f"{'on' if rouge['use_stemmer'] else 'off'}. Note: {rouge['note']}.",
        f"- BERTScore F1: `{bert['model']}`, layer {bert['num_layers']}, idf {'on' if bert['idf'] else 'off'}, "
        f"{rescale} (`{bert['hash']}`). Scores from different backbones are not comparable; "
        "empty predictions score 0.",
    ]


def _comparison_table(comparisons: list[Comparison], floor: float) -> list[str]:
    lines = ["| a | b | shared ids | BLEU diff (p) | ROUGE-L F1 diff (p) | BERTScore F1 diff (p) |",
             "|---|---|---:|---|---|---|"]
    for comparison in comparisons:
        pairing = comparison.pairing
        cells = [_md(pairing.a.label), _md(pairing.b.label), str(len(pairing.shared_ids))]
        cells += [_diff(d, digits, floor) for d, digits in ((comparison.bleu, 2), (comparison.rouge_l_f1, 4),
                                                             (comparison.bertscore_f1, 4))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ratings_table(report: Report) -> list[str]:
    lines = ["| Group | rated | mean rating (1-5) | Spearman: sentence BLEU | ROUGE-L F1 | BERTScore F1 |",
             "|---|---:|---|---|---|---|"]
    summaries = [(r.group.label, r.ratings) for r in report.groups if r.ratings]
    if report.pooled_ratings is not None:
        summaries.append(("all groups", report.pooled_ratings))
    for label, summary in summaries:
        rho = [summary.correlations[name]["spearman"] for name in ("sentence_bleu", "rougeL_f1", "bertscore_f1")]
        cells = [_md(label), str(summary.n), f"{summary.mean:.2f} [{summary.ci95[0]:.2f}, {summary.ci95[1]:.2f}]"]
        cells += ["n/a" if value is None else f"{value:.3f}" for value in rho]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "A sample rated more than once counts with its mean rating; n/a: fewer than 3 rated samples or "
                  "no variation."]
    if report.unmatched_ratings:
        lines.append(f"{len(report.unmatched_ratings)} rating(s) rate answers that are not among the scored rows "
                     f"(mean {_mean(report.unmatched_ratings):.2f}); they are not in the table.")
    return lines


def _ci(estimate: Estimate, digits: int) -> str:
    low, high = estimate.ci95
    return f"{estimate.value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _diff(difference: Difference, digits: int, floor: float) -> str:
    """A paired difference; a p-value at the bootstrap's floor 1/(B+1) is only an upper bound: `p <= floor`."""
    low, high = difference.ci95
    p = difference.p_value
    if at_resampling_floor(p, floor):
        p_text = f"p <= {floor:.2g}"
    else:
        p_text = f"p = {p:.4f}" if p < 0.001 else f"p = {p:.3f}"
    return f"{difference.difference:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] ({p_text})"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- per-sample scores


def to_scores_jsonl(report: Report) -> str:
    if not report.groups:  # no reference metric computed: no per-sample score
        return ""
    lines = []
    for result in report.groups:
        samples = result.samples
        for index, record in enumerate(result.group.records):
            row = {"group": result.group.label, "id": record.raw_id, "source": record.source, "line": record.line,
                   "sentence_bleu": float(samples.sentence_bleu[index]),
                   "rougeL_f1": float(samples.rouge_l_f1[index]),
                   "bertscore_f1": float(samples.bertscore_f1[index])}
            if record.ratings:
                row["rating"] = record.rating
                row["ratings"] = record.ratings
            lines.append(json.dumps(finite(row), ensure_ascii=False))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figure


def to_png(report: Report) -> bytes:
    """Horizontal grouped bars, one block per group, all metrics on one 0-1 axis (BLEU divided by 100); below them
    the people's win rates and each judge's, when given (the rating panels alone without reference metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []  # (height in inches, drawing function)
    if report.groups:
        panels.append((1.6 + 0.7 * len(report.groups), lambda axes: _metric_bars(axes, report)))
    if report.human is not None:
        human = report.human
        panels.append((1.2 + 0.45 * len(human.win_rates), lambda axes: _win_rate_bars(
            axes, human.win_rates, human.labels, "human win rate in blind side-by-side choices (ties count half), "
                                                 "95% bootstrap interval over prompts")))
    for judge in report.judges:
        if judge.win_rates:
            panels.append((1.2 + 0.45 * len(judge.win_rates), lambda axes, judge=judge: _win_rate_bars(
                axes, judge.win_rates, judge.labels, f"win rate by {judge.annotator} (one verdict per pair from both "
                                                     "orders, ties count half), 95% bootstrap interval over prompts")))
    if not panels:
        panels.append((1.5, lambda axes: axes.text(0.5, 0.5, "no ratings compare two inputs", ha="center")))
    heights = [height for height, _ in panels]
    if len(panels) == 1:
        figure, axes = plt.subplots(figsize=(9, heights[0]), layout="constrained")
        axes_list = [axes]
    else:
        figure, axes_list = plt.subplots(len(panels), 1, figsize=(9, sum(heights)), height_ratios=heights,
                                         layout="constrained")
    for axes, (_, draw) in zip(axes_list, panels):
        draw(axes)
    if report.groups:
        figure.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)
        figure.suptitle(f"Scores per group with 95% bootstrap intervals (n = {_sizes(report)} per group)", fontsize=10)
    else:
        figure.suptitle("Pairwise ratings (no reference metrics: the inputs have no reference)", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150)
    plt.close(figure)
    return buffer.getvalue()


def _metric_bars(axes, report: Report) -> None:
    bert = report.settings["bertscore"]
    series = [
        ("BLEU / 100 (corpus, sacrebleu)", [_scaled(r.bleu, 0.01) for r in report.groups], "#4C72B0", 100.0),
        ("ROUGE-L F1", [_scaled(r.rouge_l_f1, 1.0) for r in report.groups], "#DD8452", 1.0),
        (f"BERTScore F1 ({Path(bert['model']).name}, layer {bert['num_layers']})",
         [_scaled(r.bertscore_f1, 1.0) for r in report.groups], "#55A868", 1.0),
    ]
    labels = [r.group.label for r in report.groups]
    height = 0.26
    for offset, (name, values, color, unscale) in enumerate(series):
        positions = [i + (offset - 1) * height for i in range(len(labels))]
        errors = [[value - low for value, low, _ in values], [high - value for value, _, high in values]]
        axes.barh(positions, [value for value, _, _ in values], height=height, xerr=errors, color=color,
                  label=name, error_kw={"elinewidth": 1, "capsize": 2})
        for position, (value, _, high) in zip(positions, values):
            text = f"{value * unscale:.2f}" if unscale != 1.0 else f"{value:.3f}"
            axes.text(max(high, value, 0.0) + 0.01, position, text, va="center", fontsize=6.5)
    axes.set_yticks(range(len(labels)), labels=labels, fontsize=8)
    axes.invert_yaxis()
    lowest = min(low for _, values, _, _ in series for _, low, _ in values)
    axes.set_xlim(min(0.0, lowest * 1.1), 1.0)
    axes.set_xlabel("score (BLEU divided by 100; numbers: BLEU 0-100, others 0-1)")
    axes.grid(axis="x", alpha=0.3)


def _win_rate_bars(axes, rates: list[WinRate], labels: list[str], xlabel: str) -> None:
    """Each system's win rate (ties half) with its bootstrap interval, 0.5 marked."""
    values = [r.win_rate for r in rates]
    errors = [[r.win_rate - r.ci95[0] for r in rates], [r.ci95[1] - r.win_rate for r in rates]]
    axes.barh(range(len(rates)), values, height=0.5, xerr=errors, color="#8172B3",
              error_kw={"elinewidth": 1, "capsize": 2})
    for position, rate in enumerate(rates):
        axes.text(rate.ci95[1] + 0.01, position, f"{rate.win_rate:.2f} (n = {rate.n})", va="center", fontsize=6.5)
    axes.axvline(0.5, color="#555555", linestyle="--", linewidth=0.8)
    axes.set_yticks(range(len(rates)), labels=[labels[r.system] for r in rates], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0.0, 1.15)  # room for the numbers right of an interval that reaches 1
    axes.set_xticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes.set_xlabel(xlabel, fontsize=8)
    axes.grid(axis="x", alpha=0.3)


def _scaled(estimate: Estimate, factor: float) -> tuple[float, float, float]:
    low, high = estimate.ci95
    return estimate.value * factor, low * factor, high * factor


def _sizes(report: Report) -> str:
    sizes = sorted({len(r.group.records) for r in report.groups})
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
