"""The study's report: markdown, figures and a summary JSON, from the run folders and the scoring's results.

Every count in it is the count actually used: training examples after tokenization (and how many were left
out or truncated), held-out examples and tokens behind each held-out loss, records behind each score.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text
from ..plots import plt, save_figure
from ..run_folder import RunFolder, library_versions, machine_info
from ..scoring.metrics import Comparison, Difference, Estimate, GroupScores
from ..scoring.report import SMALL_SAMPLE, Report, finite
from .config import StudyConfig

METRICS = (("bleu", "BLEU", 0.01), ("rouge_l_f1", "ROUGE-L F1", 1.0), ("bertscore_f1", "BERTScore F1", 1.0))
PRECISION_NAMES = {"nf4": "4-bit NF4", "fp4": "4-bit FP4", "int8": "8-bit", "none": "full precision"}


@dataclass
class StudyData:
    """Everything the report is made from."""

    config: StudyConfig
    runs: dict[str, RunFolder]  # precision -> its training run
    scores: dict[str, GroupScores]  # generation name -> scores
    comparisons: dict[tuple[str, str], Comparison]
    sweep: Report
    timings: dict[str, float]


# ---------------------------------------------------------------------------------------------
# Numbers from the run folders
# ---------------------------------------------------------------------------------------------
def heldout_at(run: RunFolder, step: int) -> dict | None:
    """The held-out result at a step: before training (0), at a budget (the log), or after training."""
    results = run.eval_results()
    if step == 0:
        return results.get("before_training")
    if step == results.get("finished_at_step"):
        return results.get("after_training")
    return next((row for row in run.log() if row.get("step") == step and "eval_loss" in row), None)


def learning_rate_at(run: RunFolder, step: int) -> float | None:
    return next((row["learning_rate"] for row in run.log() if row.get("step") == step and "learning_rate" in row), None)


def throughput(run: RunFolder) -> float | None:
    """Mean trained tokens per second over the logged steps after the first (which carries start-up)."""
    values = [row["tokens_per_second"] for row in run.log() if "tokens_per_second" in row and row.get("step", 0) > 1]
    return sum(values) / len(values) if values else None


def fmt_loss(result: dict | None) -> str:
    return "not measured" if not result else f"{result['eval_loss']:.4f}"


def fmt_estimate(estimate: Estimate, scale: float = 1.0, digits: int = 4) -> str:
    low, high = estimate.ci95
    return f"{estimate.value * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def fmt_difference(difference: Difference, scale: float = 1.0, digits: int = 4) -> str:
    low, high = difference.ci95
    return (f"{difference.difference * scale:+.{digits}f} [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}] "
            f"(p = {difference.p_value:.4f})")


def significant(difference: Difference) -> bool:
    return difference.p_value < 0.05 and (difference.ci95[0] > 0 or difference.ci95[1] < 0)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def setup_section(data: StudyData) -> list[str]:
    config = data.config
    main = data.runs[config.main_quantization]
    info, run_config = main.info(), main.config()
    counts = info["data"]
    tokenization = counts["tokenization"]["train"]
    versions = ", ".join(f"{name} {version}" for name, version in library_versions().items() if version)
    machine = machine_info()
    n_scored = len(data.scores[f"base-{config.main_quantization}"].group.records)
    return [
        f"# Study `{config.name}`: does QLoRA on Alpaca help `{config.base_model}`?", "",
        "## Setup", "",
        f"- Base model `{config.base_model}`; data `{Path(config.data_path).name}`; prompt template "
        f"`{run_config['data']['prompt_template']}`; at most {run_config['data']['max_seq_length']} tokens per example.",
        f"- Training: {counts['train_examples']} examples trained on (of {counts['train_records']} training records: "
        f"{tokenization['prompt_too_long']} left out because their prompt alone fills the limit, {tokenization['truncated']} "
        f"truncated), batch {run_config['train']['per_device_train_batch_size']} x "
        f"{run_config['train']['gradient_accumulation_steps']} accumulation, learning rate "
        f"{run_config['train']['learning_rate']} ({run_config['train']['lr_scheduler_type']}, warm-up "
        f"{run_config['train']['warmup_steps']}), LoRA r {run_config['lora']['lora_r']} / alpha {run_config['lora']['lora_alpha']} "
        f"on `{run_config['lora']['lora_target_modules']}`; one run to {config.budgets[-1]} optimizer steps, measured at "
        f"steps {', '.join(map(str, config.budgets))}.",
        f"- Held-out loss: mean negative log-likelihood per response token over the {counts['val_examples']} held-out "
        f"examples of the run's held-out split (never trained on).",
        f"- Scores: the first {n_scored} held-out records, greedy decoding, at most {config.max_new_tokens} new tokens; "
        f"BLEU (sacrebleu), ROUGE-L F1 (rouge-score), BERTScore F1 (`{config.bertscore_model}`: not comparable with other "
        f"backbones); 95% bootstrap intervals and paired bootstrap p-values, {config.bootstrap} resamples.",
        "- Base and tuned models are always compared at the same base precision; the effect of quantizing the base "
        "is a comparison of its own.",
        f"- Machine: {machine.get('cpu', machine['processor'])}, {machine['platform']}; {versions}.", "",
    ]


def learning_curve_section(data: StudyData) -> list[str]:
    config = data.config
    precision = config.main_quantization
    run = data.runs[precision]
    base = f"base-{precision}"
    lines = [f"## Base vs fine-tuned, at the same base precision ({PRECISION_NAMES[precision]})", "",
             "| model | steps | learning rate at that step | held-out loss | BLEU | ROUGE-L F1 | BERTScore F1 | empty answers |",
             "|---|---:|---:|---:|---|---|---|---:|"]
    for step, name in [(0, base), *[(b, f"step-{b}") for b in config.budgets]]:
        scores = data.scores[name]
        lr = learning_rate_at(run, step) if step else None
        lines.append(f"| {'base (untuned)' if step == 0 else f'tuned, step {step}'} | {step} | "
                     f"{'-' if lr is None else f'{lr:.2e}'} | {fmt_loss(heldout_at(run, step))} | "
                     f"{fmt_estimate(scores.bleu, digits=2)} | {fmt_estimate(scores.rouge_l_f1)} | "
                     f"{fmt_estimate(scores.bertscore_f1)} | {scores.group.empty_predictions} |")
    first_lr = learning_rate_at(run, 1)
    if first_lr == 0:
        lines += ["", "Note: the learning rate was 0 at step 1 (warm-up starts at 0), so step 1 changed nothing."]
    lines += ["", "### Paired differences (tuned - base: same records, same precision)", "",
              "| tuned at | n | BLEU | ROUGE-L F1 | BERTScore F1 |", "|---|---:|---|---|---|"]
    for step in config.budgets:
        comparison = data.comparisons[(base, f"step-{step}")]
        lines.append(f"| step {step} | {len(comparison.pairing.shared_ids)} | "
                     + " | ".join(fmt_difference(getattr(comparison, key), 1.0, 2 if key == 'bleu' else 4) for key, _, _ in METRICS) + " |")
    lines += caution([data.comparisons[(base, f"step-{b}")] for b in config.budgets])
    return lines + ["", "![learning curve](learning_curve.png)", "", "![loss curve](loss_curve.png)", ""]


def caution(comparisons: list[Comparison]) -> list[str]:
    small = [c for c in comparisons if len(c.pairing.shared_ids) < SMALL_SAMPLE]
    if not small:
        return []
    return ["", f"Caution: these comparisons rest on {min(len(c.pairing.shared_ids) for c in small)} records, fewer than "
                f"{SMALL_SAMPLE}: intervals and p-values from so few records say little."]


def quantization_section(data: StudyData) -> list[str]:
    config = data.config
    precisions = trained_precisions(config)
    if len(precisions) < 2 and "none" not in data.runs:
        lines = []
    else:
        lines = [f"## Quantization at the same budget ({config.budgets[-1]} steps)", "",
                 "| base precision | held-out loss: base -> tuned | BLEU (tuned) | ROUGE-L F1 (tuned) | BERTScore F1 (tuned) | "
                 "BERTScore F1 tuned - base | training tokens/s | peak memory (GiB) |",
                 "|---|---|---|---|---|---|---:|---:|"]
        for precision in precisions:
            run = data.runs[precision]
            tuned = data.scores[tuned_name(config, precision)]
            difference = data.comparisons[(f"base-{precision}", tuned_name(config, precision))].bertscore_f1
            results = run.eval_results()
            memory = results.get("peak_memory_gib")
            speed = throughput(run)
            lines.append(f"| {PRECISION_NAMES[precision]} | {fmt_loss(results.get('before_training'))} -> "
                         f"{fmt_loss(results.get('after_training'))} | {fmt_estimate(tuned.bleu, digits=2)} | "
                         f"{fmt_estimate(tuned.rouge_l_f1)} | {fmt_estimate(tuned.bertscore_f1)} | {fmt_difference(difference)} | "
                         f"{'-' if speed is None else f'{speed:,.0f}'} | {'-' if memory is None else f'{memory:.2f}'} |")
        lines.append("")
    lines += ["### The effect of quantizing the base (no training)", "",
              "Each quantized base against the same base in full precision, on the same records (quantized - full).", "",
              "| base | held-out loss | BLEU | ROUGE-L F1 | BERTScore F1 |", "|---|---|---|---|---|"]
    lines += precision_rows(data, [p for p in config.precisions() if p != "none"], lambda p: f"base-{p}", "before_training")
    return lines + [""] + tuned_quantization_lines(data)


def tuned_quantization_lines(data: StudyData) -> list[str]:
    """Tuned on each quantized base against tuned on the full-precision base, same budget, same records."""
    config = data.config
    if "none" not in trained_precisions(config):
        return []
    return ["### The effect of quantizing the base on the tuned model (same budget)", "",
            f"Tuned for {config.budgets[-1]} steps on each quantized base against the same training on the full-precision "
            "base, on the same records (quantized - full).", "",
            "| base | held-out loss after training | BLEU | ROUGE-L F1 | BERTScore F1 |", "|---|---|---|---|---|",
            *precision_rows(data, [p for p in trained_precisions(config) if p != "none"],
                            lambda p: tuned_name(config, p), "after_training"), ""]


def precision_rows(data: StudyData, precisions: list[str], name_of, loss_key: str) -> list[str]:
    """One row per quantized precision: its held-out loss and paired score differences against full precision."""
    full_loss = data.runs["none"].eval_results().get(loss_key) if "none" in data.runs else None
    rows = []
    for precision in precisions:
        comparison = data.comparisons[(name_of("none"), name_of(precision))]
        loss = data.runs[precision].eval_results().get(loss_key)
        loss_text = (f"{loss['eval_loss'] - full_loss['eval_loss']:+.4f} ({fmt_loss(full_loss)} -> {fmt_loss(loss)})"
                     if loss and full_loss else "not measured (no full-precision run)")
        rows.append(f"| {PRECISION_NAMES[precision]} | {loss_text} | "
                    + " | ".join(fmt_difference(getattr(comparison, key), 1.0, 2 if key == 'bleu' else 4) for key, _, _ in METRICS) + " |")
    return rows


def trained_precisions(config: StudyConfig) -> list[str]:
    return [config.main_quantization, *config.quantizations]


def tuned_name(config: StudyConfig, precision: str) -> str:
    return f"step-{config.budgets[-1]}" if precision == config.main_quantization else f"tuned-{precision}"


def sweep_section(data: StudyData) -> list[str]:
    config = data.config
    lines = [f"## Decoding sweep on the fine-tuned model ({PRECISION_NAMES[config.main_quantization]}, "
             f"{config.budgets[-1]} steps)", "", f"First {config.sweep_records} held-out records, sweep `{config.sweep}`.", "",
             "| setting | n | BLEU | ROUGE-L F1 | BERTScore F1 | empty answers |", "|---|---:|---|---|---|---:|"]
    for result in data.sweep.groups:
        lines.append(f"| {result.group.label} | {len(result.group.records)} | {fmt_estimate(result.bleu, digits=2)} | "
                     f"{fmt_estimate(result.rouge_l_f1)} | {fmt_estimate(result.bertscore_f1)} | {result.group.empty_predictions} |")
    return lines + ["", "![sweep](sweep.png)", ""]


def side_by_side_section(data: StudyData) -> list[str]:
    config = data.config
    if config.side_by_side < 1:
        return []
    base = data.scores[f"base-{config.main_quantization}"].group.records
    tuned = {record.id: record for record in data.scores[f"step-{config.budgets[-1]}"].group.records}
    lines = [f"## Side by side: base and tuned ({config.budgets[-1]} steps) on held-out instructions", ""]
    for record in base[: config.side_by_side]:
        lines += [f"**Instruction** ({record.id}): {one_line(record.instruction)}"]
        if record.input:
            lines += ["", f"**Input**: {one_line(record.input)}"]
        lines += ["", f"- reference: {one_line(record.reference)}", f"- base: {one_line(record.prediction) or '(empty)'}",
                  f"- tuned: {one_line(tuned[record.id].prediction) or '(empty)'}", ""]
    return lines


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + " ..."


def timings_section(data: StudyData) -> list[str]:
    lines = ["## How long each part took", "", "| part | minutes |", "|---|---:|"]
    lines += [f"| {step} | {seconds / 60:.1f} |" for step, seconds in data.timings.items()]
    total = sum(data.timings.values())
    return lines + [f"| **all** | **{total / 60:.1f}** |", ""]


def reading_section(data: StudyData) -> list[str]:
    config = data.config
    base, final = f"base-{config.main_quantization}", f"step-{config.budgets[-1]}"
    comparison = data.comparisons[(base, final)]
    run = data.runs[config.main_quantization]
    before, after = heldout_at(run, 0), heldout_at(run, config.budgets[-1])
    lines = ["## Reading", ""]
    if config.reading.strip():
        lines += [config.reading.strip(), ""]
    lines += ["What the numbers above say, mechanically:", ""]
    if before and after:
        lines.append(f"- Held-out loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f} after {config.budgets[-1]} steps "
                     f"({after['eval_tokens']:,} response tokens).")
    for key, label, _ in METRICS:
        difference = getattr(comparison, key)
        direction = "higher" if difference.difference > 0 else "lower"
        verdict = "significant" if significant(difference) else "not significant"
        lines.append(f"- {label}: tuned is {direction} than base by {abs(difference.difference):.4f} "
                     f"({verdict}, p = {difference.p_value:.4f}, n = {len(comparison.pairing.shared_ids)}).")
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# Figures and files
# ---------------------------------------------------------------------------------------------
def plot_learning_curve(data: StudyData, path: Path) -> None:
    config = data.config
    run = data.runs[config.main_quantization]
    steps = [0, *config.budgets]
    names = [f"base-{config.main_quantization}", *[f"step-{b}" for b in config.budgets]]
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    losses = [(step, heldout_at(run, step)) for step in steps]
    axes[0].plot([s for s, r in losses if r], [r["eval_loss"] for s, r in losses if r], marker="o", color="tab:orange")
    axes[0].set_title("held-out loss (nats/token)")
    for axis, (key, label, scale) in zip(axes[1:], METRICS):
        estimates = [getattr(data.scores[name], key) for name in names]
        values = [e.value * scale for e in estimates]
        axis.errorbar(steps, values, yerr=[[v - e.ci95[0] * scale for v, e in zip(values, estimates)],
                                           [e.ci95[1] * scale - v for v, e in zip(values, estimates)]], marker="o", capsize=4)
        axis.set_title(f"{label}{' / 100' if scale != 1 else ''} (95% CI)")
    for axis in axes:
        axis.set_xlabel("optimizer steps (0 = base model)")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{config.name}: held-out scores over training ({PRECISION_NAMES[config.main_quantization]} base)")
    save_figure(figure, path)


def summary(data: StudyData) -> dict:
    def estimate(e: Estimate) -> dict:
        return {"value": e.value, "ci95": list(e.ci95)}

    def difference(d: Difference) -> dict:
        return {"a": d.a, "b": d.b, "difference": d.difference, "ci95": list(d.ci95), "p_value": d.p_value}

    return {
        "config": {k: v for k, v in vars(data.config).items() if k != "reading"},
        "scores": {name: {"n": len(s.group.records), "empty_predictions": s.group.empty_predictions,
                          **{key: estimate(getattr(s, key)) for key, _, _ in METRICS}} for name, s in data.scores.items()},
        "comparisons": [{"a": a, "b": b, "n": len(c.pairing.shared_ids), **{key: difference(getattr(c, key)) for key, _, _ in METRICS}}
                        for (a, b), c in data.comparisons.items()],
        "heldout": {precision: run.eval_results() for precision, run in data.runs.items()},
        "heldout_at_budgets": {str(step): heldout_at(data.runs[data.config.main_quantization], step)
                               for step in [0, *data.config.budgets]},
        "training_tokens_per_second": {precision: throughput(run) for precision, run in data.runs.items()},
        "sweep": [{"label": r.group.label, "n": len(r.group.records), **{key: estimate(getattr(r, key)) for key, _, _ in METRICS}}
                  for r in data.sweep.groups],
        "timings_seconds": data.timings,
    }


def write_study_report(data: StudyData, sweep_png: Path) -> Path:
    config = data.config
    results_dir, assets_dir = Path(config.results_dir), Path(config.assets_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    assets_dir.mkdir(parents=True, exist_ok=True)
    figures = {"learning_curve": results_dir / "learning_curve.png", "loss_curve": results_dir / "loss_curve.png",
               "sweep": results_dir / "sweep.png"}
    plot_learning_curve(data, figures["learning_curve"])
    shutil.copy(data.runs[config.main_quantization].file("loss_curve.png"), figures["loss_curve"])
    shutil.copy(sweep_png, figures["sweep"])
    for name, path in figures.items():
        shutil.copy(path, assets_dir / f"{config.name}_{name}.png")
    sections = [setup_section(data), learning_curve_section(data), quantization_section(data), sweep_section(data),
                side_by_side_section(data), timings_section(data), reading_section(data)]
    report = results_dir / "report.md"
    atomic_write_text(report, "\n".join(line for section in sections for line in section))
    atomic_write_text(results_dir / "metrics.json", json.dumps(finite(summary(data)), indent=2, default=str) + "\n")
    return report
