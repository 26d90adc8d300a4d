"""The study's report: markdown, figures and a summary JSON, made only from the committed files (committed.py).

Every count in it is the count actually used (examples trained on, held-out tokens behind each loss, records
behind each score). Each comparison is paired and made within a seed; across seeds the report gives the spread
of the per-seed results, not one pooled interval. p-values are two-sided paired bootstrap values, written
`<= 1/(B+1)` at the bootstrap's floor, and adjusted across each table with Holm's method; a difference whose
interval holds 0 is "not distinguishable at this n", never "equal".
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from ..files import atomic_write_text
from ..plots import plt, save_figure
from ..run_folder import RunFolder
from ..scoring.human import WinRate
from ..scoring.judged import JudgeSummary
from ..scoring.metrics import Comparison, Difference, Estimate, at_resampling_floor
from ..scoring.report import SMALL_SAMPLE, finite
from .committed import StudyData
from .comparisons import budget_pairs, holm, judged_runs, p_text, sweep_run_of
from .config import PATH_FIELDS as PATH_KEYS, TrainingRun

# (key, label, decimals): corpus BLEU and per-record (sentence) BLEU side by side; they can disagree.
METRICS = (("bleu", "BLEU (corpus)", 2), ("sentence_bleu", "BLEU (mean per record)", 2),
           ("rouge_l_f1", "ROUGE-L F1", 4), ("bertscore_f1", "BERTScore F1", 4))
PRECISION_NAMES = {"nf4": "4-bit NF4", "fp4": "4-bit FP4", "int8": "8-bit", "none": "full precision (bf16/fp32)"}
UNSET_WHEN_EMPTY = ("recipes", "stop")  # config keys a summary leaves out when empty (see summary)
REFERENCES_NOTE = ("The references are the Alpaca data's own outputs, written by OpenAI's text-davinci-003 (Taori et al., "
                   "2023), not by people: the scores measure closeness to that model's answers.")


# ---------------------------------------------------------------------------------------------
# Numbers from the run files
# ---------------------------------------------------------------------------------------------
def heldout_curve(run: RunFolder) -> list[tuple[int, dict]]:
    """Every held-out evaluation of a run, step 0 (before training) first."""
    results = run.eval_results()
    points = {0: results["before_training"]} if results.get("before_training") else {}
    for row in run.log():
        if "eval_loss" in row and row.get("step"):
            points[row["step"]] = {"eval_loss": row["eval_loss"], "eval_tokens": row.get("eval_tokens")}
    if results.get("after_training") and results.get("finished_at_step"):
        points[results["finished_at_step"]] = results["after_training"]
    return sorted(points.items())


def final_loss(run: RunFolder) -> float:
    return run.eval_results()["after_training"]["eval_loss"]


def throughput(run: RunFolder) -> float | None:
    """Mean trained tokens per second over the logged steps after the first (which carries start-up)."""
    values = [row["tokens_per_second"] for row in run.log() if "tokens_per_second" in row and row.get("step", 0) > 1]
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def fmt_estimate(estimate: Estimate, digits: int) -> str:
    low, high = estimate.ci95
    return f"{estimate.value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_spread(values: list[float], digits: int) -> str:
    """The mean over seeds and the range, or the single value of one seed."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"


def fmt_signed_spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:+.{digits}f}"
    return f"{statistics.mean(values):+.{digits}f} ({min(values):+.{digits}f} to {max(values):+.{digits}f})"


class Table:
    """Rows of paired differences whose p-values are adjusted together (Holm) when the table is written."""

    def __init__(self, floor: float):
        self.floor = floor
        self.rows: list[tuple[list[str], list[Difference]]] = []

    def add(self, cells: list[str], differences: list[Difference]) -> None:
        self.rows.append((cells, differences))

    def lines(self, header: list[str]) -> list[str]:
        raw = [d.p_value for _, differences in self.rows for d in differences]
        adjusted = iter(holm(raw))
        lines = ["| " + " | ".join(header + [label for _, label, _ in METRICS]) + " |",
                 "|" + "---|" * (len(header) + len(METRICS))]
        for cells, differences in self.rows:
            texts = [self.cell(d, next(adjusted), digits) for d, (_, _, digits) in zip(differences, METRICS)]
            lines.append("| " + " | ".join(cells + texts) + " |")
        return lines + ["", f"{len(raw)} tests in this table; p is the paired bootstrap p-value, Holm-adjusted across "
                            "the table (the raw value in brackets)."]

    def cell(self, d: Difference, adjusted: float, digits: int) -> str:
        low, high = d.ci95
        adjusted_text = f"<= {adjusted:.4f}" if at_resampling_floor(d.p_value, self.floor) else f"{adjusted:.4f}"
        return (f"{d.difference:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] "
                f"p {adjusted_text} ({p_text(d.p_value, self.floor)})")


def differences_of(comparison: Comparison) -> list[Difference]:
    return [getattr(comparison, key) for key, _, _ in METRICS]


def shown(model: str) -> str:
    """A model as the report names it: a name as written, a folder or file by its own name (no machine's path)."""
    return Path(model).name if Path(model).is_absolute() else model


def floor_of(data: StudyData) -> float:
    return 1 / (data.config.bootstrap + 1)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def stop_note(stop: list[str] | None) -> str:
    """How answers were cut, for the report's method line (nothing without stop strings)."""
    if not stop:
        return ""
    return ", each cut before the first of the stop strings " + ", ".join(f"`{json.dumps(s, ensure_ascii=False)}`" for s in stop)


def setup_section(data: StudyData) -> list[str]:
    config = data.config
    first_run, first = next(iter(data.runs.items()))
    info, run_config = first.info(), first.config()
    counts = info["data"]
    tokenization = counts["tokenization"]["train"]
    versions = ", ".join(f"{name} {version}" for name, version in info.get("versions", {}).items() if version)
    machines = sorted({run.info()["machine"].get("cpu") or run.info()["machine"]["processor"] for run in data.runs.values()})
    n_scored = len(data.scores[f"base-{config.main_quantization}"].group.records)
    runs_text = "; ".join(f"{budget} steps x {len(config.seeds_at(budget))} seed(s) ({', '.join(map(str, config.seeds_at(budget)))})"
                          for budget in config.budgets)
    train = run_config["train"]
    return [
        f"# Study `{config.name}`: does QLoRA on Alpaca help `{shown(config.base_model)}`, and does more training keep helping?", "",
        "## Setup", "",
        f"- Base model `{shown(config.base_model)}`; data `{Path(config.data_path).name}`; prompt template "
        f"`{run_config['data']['prompt_template']}`; at most {run_config['data']['max_seq_length']} tokens per example.",
        f"- Every budget is a training run of its own with its whole schedule ({train['lr_scheduler_type']}, warm-up "
        f"{warmup_text(train['warmup_steps'])}, peak learning rate {train['learning_rate']}): {runs_text}; "
        f"{PRECISION_NAMES[config.main_quantization]} base. Batch {train['per_device_train_batch_size']} x "
        f"{train['gradient_accumulation_steps']} accumulation; LoRA r {run_config['lora']['lora_r']} / alpha "
        f"{run_config['lora']['lora_alpha']} on `{run_config['lora']['lora_target_modules']}`. A seed sets the LoRA "
        "initialisation, the dropout masks and the order of the training records; the held-out split has its own seed, "
        "so every run holds out the same records.",
        f"- Training pool: {counts['train_examples']} examples (of {counts['train_records']} training records: "
        f"{tokenization['prompt_too_long']} left out because their prompt alone fills the limit, {tokenization['truncated']} "
        f"truncated); a run of B steps trains on the first B x {train['per_device_train_batch_size']} of them in its "
        "seed's order (at most one epoch).",
        f"- Held-out loss: mean negative log-likelihood per response token over the {counts['val_examples']} held-out "
        f"examples (never trained on), at step 0 and every {config.evaluation_spacing()} steps of every run.",
        f"- Scores: the first {n_scored} held-out records, greedy decoding, at most {config.max_new_tokens} new tokens"
        f"{stop_note(config.stop)}; "
        f"BLEU (sacrebleu) as a corpus and as the mean of per-record BLEU, ROUGE-L F1 (rouge-score), BERTScore F1 "
        f"(`{config.bertscore_model}`: not comparable with other backbones); 95% percentile bootstrap intervals and "
        f"two-sided paired bootstrap p-values, {config.bootstrap} resamples (so no p-value is below "
        f"{floor_of(data):.4f}).",
        f"- {REFERENCES_NOTE}",
        "- Base and tuned models are compared at the same base precision; the effect of quantizing the base is a "
        "comparison of its own.",
        *judge_setup(data),
        f"- Machine(s): {', '.join(machines)}, {first.info()['machine']['platform']}; {versions}.", "",
    ]


def judge_setup(data: StudyData) -> list[str]:
    """The judge's line of the setup: none without a judge in the config."""
    if not data.config.judge:
        return []
    info = next(iter(data.judged.values())).judge
    return [f"- A model as judge: `{shown(data.config.judge)}` (python -m alpaca_qlora.judge, template "
            f"`{info.get('template')}` {str(info.get('template_sha256', ''))[:12]}, {info.get('format')} prompt) says "
            "which of the base's and the tuned model's answers is better, asked in both orders; a verdict that "
            "changes with the order counts as a tie. Its win rate of the tuned model counts ties half, with a 95% "
            "bootstrap interval over records; it is a model's reading, to be trusted only as far as its position "
            "consistency (below) allows."]


def warmup_text(warmup: float) -> str:
    return f"{warmup:.0%} of the steps" if 0 < warmup < 1 else f"{warmup:g} steps"


def budget_runs(data: StudyData, budget: int) -> list[TrainingRun]:
    return [run for run in data.runs
            if run.precision == data.config.main_quantization and run.budget == budget and not run.recipe]


def budgets_section(data: StudyData) -> list[str]:
    config = data.config
    main = config.main_quantization
    base = f"base-{main}"
    base_loss = heldout_curve(data.runs[budget_runs(data, config.budgets[0])[0]])[0][1]["eval_loss"]
    lines = [f"## Budgets: base vs fine-tuned ({PRECISION_NAMES[main]} base)", "",
             "Each value is the mean over the budget's seeds, with their range in brackets; each seed's interval is "
             "in the paired table below and in metrics.json.", "",
             "| model | steps | records trained on | seeds | held-out loss | "
             + " | ".join(label for _, label, _ in METRICS) + judge_header(data) + " | empty answers |",
             "|---|---:|---:|---:|---:|" + "---|" * len(METRICS) + ("---|" if data.judged else "") + "---:|",
             f"| base (untuned) | 0 | 0 | - | {base_loss:.4f} | "
             + " | ".join(fmt_estimate(getattr(data.scores[base], key), digits) for key, _, digits in METRICS)
             + (" | -" if data.judged else "") + f" | {data.scores[base].group.empty_predictions} |"]
    for budget in config.budgets:
        runs = budget_runs(data, budget)
        batch = data.runs[runs[0]].config()["train"]["per_device_train_batch_size"]
        cells = [fmt_spread([getattr(data.scores[run.tuned], key).value for run in runs], digits) for key, _, digits in METRICS]
        empty = fmt_spread([data.scores[run.tuned].group.empty_predictions for run in runs], 1)
        if data.judged:
            cells.append(fmt_spread([tuned_win_rate(data.judged[run.tuned]).win_rate for run in runs], 3))
        lines.append(f"| tuned | {budget} | {budget * batch:,} | {len(runs)} | "
                     f"{fmt_spread([final_loss(data.runs[run]) for run in runs], 4)} | {' | '.join(cells)} | {empty} |")
    table = Table(floor_of(data))
    for run in [run for budget in config.budgets for run in budget_runs(data, budget)]:
        comparison = data.comparisons[(base, run.tuned)]
        table.add([f"{run.budget}", f"{run.seed}", str(len(comparison.pairing.shared_ids))], differences_of(comparison))
    lines += ["", "### Paired differences, tuned minus base (same records, same precision), one row per run", ""]
    lines += table.lines(["steps", "seed", "n"])
    lines += ["", "### Larger budgets against the smallest (same seed, same records)", ""]
    table = Table(floor_of(data))
    for a, b in budget_pairs(config):
        comparison = data.comparisons[(a, b)]
        run = next(run for run in data.runs if run.tuned == b)
        table.add([f"{run.budget} - {config.budgets[0]}", f"{run.seed}", str(len(comparison.pairing.shared_ids))],
                  differences_of(comparison))
    lines += table.lines(["steps", "seed", "n"]) if table.rows else ["(only one budget)"]
    lines += judge_table(data)
    lines += caution(list(data.comparisons.values()))
    return lines + ["", "The learning curves (every held-out evaluation of every run, step 0 included) and the scores "
                        "by budget (one point per seed):", "", "![learning curve](learning_curve.png)", ""]


def judge_header(data: StudyData) -> str:
    return " | judge: tuned's win rate vs base" if data.judged else ""


def tuned_win_rate(judged: JudgeSummary) -> WinRate:
    """The tuned model's (the second file's) win rate against the base, ties half."""
    return next(rate for rate in judged.win_rates if rate.system == 1)


def judge_table(data: StudyData) -> list[str]:
    """One row per judged run: the tuned model's win rate with its interval and how far the judge can be trusted."""
    if not data.judged:
        return []
    lines = ["", f"### A model as judge (`{shown(data.config.judge)}`): tuned against base, one row per run", "",
             "| steps | seed | pairs | tuned wins | base wins | ties | tuned's win rate [95% CI] | position consistency | "
             "verdict changed with the order (tie) |", "|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for run in judged_runs(data.config):
        judged = data.judged[run.tuned]
        rate = tuned_win_rate(judged)
        consistency = judged.position_consistency
        consistency_text = "-" if consistency.value is None else f"{consistency.value:.3f}"
        lines.append(f"| {run.budget} | {run.seed} | {judged.n_pairs} | {rate.wins} | {rate.losses} | {rate.ties} | "
                     f"{rate.win_rate:.3f} [{rate.ci95[0]:.3f}, {rate.ci95[1]:.3f}] | {consistency_text} | "
                     f"{judged.n_swap_ties} |")
    return lines + ["", "A win rate above 0.5 favours the tuned model; ties count half. Position consistency: the share "
                        "of pairs whose verdict survives swapping the answers' order."]


def caution(comparisons: list[Comparison]) -> list[str]:
    small = [c for c in comparisons if len(c.pairing.shared_ids) < SMALL_SAMPLE]
    if not small:
        return []
    return ["", f"Caution: these comparisons rest on {min(len(c.pairing.shared_ids) for c in small)} records, fewer than "
                f"{SMALL_SAMPLE}: intervals and p-values from so few records say little."]


def quantization_section(data: StudyData) -> list[str]:
    config = data.config
    others = [p for p in config.precisions() if p != "none"]
    lines = ["## Quantization", "", "### Quantizing the base (no training): quantized minus full precision, same records", ""]
    table = Table(floor_of(data))
    for precision in others:
        comparison = data.comparisons[("base-none", f"base-{precision}")]
        table.add([PRECISION_NAMES[precision], str(len(comparison.pairing.shared_ids))], differences_of(comparison))
    lines += table.lines(["base", "n"])
    smallest = config.budgets[0]
    trained = [config.main_quantization, *config.quantizations]
    if "none" not in trained:
        return lines + [""]
    lines += ["", f"### The same training ({smallest} steps) on a quantized base minus on the full-precision base, per seed", "",
              "| base | seed | held-out loss after training (quantized - full) | training tokens/s (quantized, full) | "
              "peak memory GiB (quantized, full) |", "|---|---:|---:|---:|---:|"]
    table = Table(floor_of(data))
    for precision in [p for p in trained if p != "none"]:
        for seed in config.seeds_at(smallest):
            quantized, full = TrainingRun(precision, smallest, seed), TrainingRun("none", smallest, seed)
            q_run, f_run = data.runs[quantized], data.runs[full]
            lines.append(f"| {PRECISION_NAMES[precision]} | {seed} | {final_loss(q_run) - final_loss(f_run):+.4f} "
                         f"({final_loss(f_run):.4f} -> {final_loss(q_run):.4f}) | {fmt_speed(q_run)}, {fmt_speed(f_run)} | "
                         f"{fmt_memory(q_run)}, {fmt_memory(f_run)} |")
            comparison = data.comparisons[(full.tuned, quantized.tuned)]
            table.add([PRECISION_NAMES[precision], str(seed), str(len(comparison.pairing.shared_ids))],
                      differences_of(comparison))
    return lines + ["", "Scores, quantized minus full precision:", ""] + table.lines(["base", "seed", "n"]) + [""]


def recipes_section(data: StudyData) -> list[str]:
    """Each recipe (NEFTune, PiSSA, ...) against the plain recipe, seed by seed, at the smallest budget."""
    config = data.config
    if not config.recipes:
        return []
    main, smallest = config.main_quantization, config.budgets[0]
    lines = ["## Recipes", "", f"Each recipe adds options to the study's training; trained on the {PRECISION_NAMES[main]} "
             f"base for {smallest} steps with the same seeds, and compared with the plain recipe seed by seed.", "",
             "| recipe | options | seed | held-out loss after training (recipe - plain) | training tokens/s (recipe, plain) |",
             "|---|---|---:|---:|---:|"]
    table = Table(floor_of(data))
    for recipe, options in config.recipes.items():
        shown_options = ", ".join(f"{name} {value}" for name, value in options.items())
        for seed in config.seeds_at(smallest):
            plain, varied = TrainingRun(main, smallest, seed), TrainingRun(main, smallest, seed, recipe)
            p_run, v_run = data.runs[plain], data.runs[varied]
            lines.append(f"| {recipe} | {shown_options} | {seed} | {final_loss(v_run) - final_loss(p_run):+.4f} "
                         f"({final_loss(p_run):.4f} -> {final_loss(v_run):.4f}) | {fmt_speed(v_run)}, {fmt_speed(p_run)} |")
            comparison = data.comparisons[(plain.tuned, varied.tuned)]
            table.add([recipe, str(seed), str(len(comparison.pairing.shared_ids))], differences_of(comparison))
    return lines + ["", "Scores, recipe minus plain:", ""] + table.lines(["recipe", "seed", "n"]) + [""]


def fmt_speed(run: RunFolder) -> str:
    speed = throughput(run)
    return "-" if speed is None else f"{speed:,.0f}"


def fmt_memory(run: RunFolder) -> str:
    memory = run.eval_results().get("peak_memory_gib")
    return "-" if memory is None else f"{memory:.2f}"


def sweep_section(data: StudyData) -> list[str]:
    config = data.config
    run = sweep_run_of(config)
    lines = [f"## Decoding sweep on the fine-tuned model ({run.name})", "",
             f"First {config.sweep_records} held-out records, sweep `{config.sweep}`.", "",
             "| setting | n | " + " | ".join(label for _, label, _ in METRICS) + " | empty answers |",
             "|---|---:|" + "---|" * len(METRICS) + "---:|"]
    for result in data.sweep:
        lines.append(f"| {result.group.label} | {len(result.group.records)} | "
                     + " | ".join(fmt_estimate(getattr(result, key), digits) for key, _, digits in METRICS)
                     + f" | {result.group.empty_predictions} |")
    return lines + ["", "![sweep](sweep.png)", ""]


def side_by_side_section(data: StudyData) -> list[str]:
    config = data.config
    if config.side_by_side < 1:
        return []
    run = sweep_run_of(config)
    base = data.scores[f"base-{config.main_quantization}"].group.records
    tuned = {record.id: record for record in data.scores[run.tuned].group.records}
    lines = [f"## Side by side: base and tuned ({run.name}) on held-out instructions", "",
             "All answers are in `generations/` beside this report.", ""]
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
    lines = ["## How long each part took", "", "Wall time of each step; the legs of a stopped and resumed step are "
             "added (a leg killed outright is not counted).", "", "| part | minutes |", "|---|---:|"]
    lines += [f"| {step} | {seconds / 60:.1f} |" for step, seconds in data.timings.items()]
    total = sum(data.timings.values())
    return lines + [f"| **all** | **{total / 60:.1f}** |", ""]


def reading_section(data: StudyData) -> list[str]:
    config = data.config
    base = f"base-{config.main_quantization}"
    lines = ["## Reading", ""]
    if config.reading.strip():
        lines += [config.reading.strip(), ""]
    lines += ["What the numbers above say, mechanically (a difference counts when its Holm-adjusted p is below 0.05 "
              "in its table; otherwise it is not distinguishable from 0 at this n):", ""]
    for budget in config.budgets:
        runs = budget_runs(data, budget)
        losses = [final_loss(data.runs[run]) for run in runs]
        parts = []
        for key, label, digits in METRICS:
            values = [getattr(data.comparisons[(base, run.tuned)], key).difference for run in runs]
            parts.append(f"{label} {fmt_signed_spread(values, digits)}")
        lines.append(f"- {budget} steps ({len(runs)} seed(s)): held-out loss {fmt_spread(losses, 4)}; tuned minus base: "
                     + "; ".join(parts) + ".")
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# Figures and files
# ---------------------------------------------------------------------------------------------
def plot_learning_curve(data: StudyData, path: Path) -> None:
    config = data.config
    base = data.scores[f"base-{config.main_quantization}"]
    figure, axes = plt.subplots(1, 1 + len(METRICS), figsize=(4 * (1 + len(METRICS)), 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, budget in enumerate(config.budgets):
        for run in budget_runs(data, budget):
            curve = heldout_curve(data.runs[run])
            axes[0].plot([s for s, _ in curve], [r["eval_loss"] for _, r in curve], marker="o", markersize=3,
                         color=colors[index % len(colors)], alpha=0.8,
                         label=f"{budget} steps" if run.seed == config.seeds_at(budget)[0] else None)
    axes[0].set_title("held-out loss (nats/token), every evaluation")
    axes[0].legend(fontsize=8)
    for axis, (key, label, _) in zip(axes[1:], METRICS):
        base_estimate = getattr(base, key)
        axis.axhspan(*base_estimate.ci95, color="grey", alpha=0.2, label="base, 95% CI")
        axis.axhline(base_estimate.value, color="grey")
        for budget in config.budgets:
            runs = budget_runs(data, budget)
            for index, run in enumerate(runs):  # the seeds side by side, a little apart
                estimate = getattr(data.scores[run.tuned], key)
                x = budget * (1 + 0.06 * (index - (len(runs) - 1) / 2))
                axis.errorbar([x], [estimate.value], yerr=[[estimate.value - estimate.ci95[0]],
                                                           [estimate.ci95[1] - estimate.value]],
                              marker="o", capsize=3, color="tab:blue", alpha=0.7)
        axis.set_xscale("log")
        axis.minorticks_off()
        axis.set_xticks(config.budgets, [str(b) for b in config.budgets])
        axis.set_title(f"{label} (95% CI)", fontsize=9)
    for axis in axes:
        axis.set_xlabel("optimizer steps")
        axis.grid(alpha=0.3)
    figure.suptitle(f"{config.name}: held-out loss and scores by budget ({PRECISION_NAMES[config.main_quantization]} base; "
                    "one point per seed)")
    save_figure(figure, path)


def plot_sweep(data: StudyData, path: Path) -> None:
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.8))
    labels = [result.group.label for result in data.sweep]
    for axis, (key, label, _) in zip(axes, METRICS):
        estimates = [getattr(result, key) for result in data.sweep]
        values = [e.value for e in estimates]
        axis.errorbar(range(len(values)), values, yerr=[[v - e.ci95[0] for v, e in zip(values, estimates)],
                                                        [e.ci95[1] - v for v, e in zip(values, estimates)]],
                      fmt="o", capsize=3)
        axis.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        axis.set_title(f"{label} (95% CI)", fontsize=9)
        axis.grid(alpha=0.3)
    save_figure(figure, path)


def summary(data: StudyData) -> dict:
    def estimate(e: Estimate) -> dict:
        return {"value": e.value, "ci95": list(e.ci95)}

    def difference(d: Difference) -> dict:
        return {"a": d.a, "b": d.b, "difference": d.difference, "ci95": list(d.ci95), "p_value": d.p_value}

    return {
        # keys added since (recipes, stop, judge) only when set: the summaries of studies without them stay as committed
        "config": {**{k: v for k, v in vars(data.config).items()
                      if k not in ("reading", "judge", *PATH_KEYS) and not (k in UNSET_WHEN_EMPTY and not v)},
                   "base_model": shown(data.config.base_model), "bertscore_model": shown(data.config.bertscore_model),
                   **({"judge": shown(data.config.judge)} if data.config.judge else {})},
        "scores": {name: {"n": len(s.group.records), "empty_predictions": s.group.empty_predictions,
                          **{key: estimate(getattr(s, key)) for key, _, _ in METRICS}} for name, s in data.scores.items()},
        "comparisons": [{"a": a, "b": b, "n": len(c.pairing.shared_ids), **{key: difference(getattr(c, key)) for key, _, _ in METRICS}}
                        for (a, b), c in data.comparisons.items()],
        "heldout_curves": {run.name: [{"step": step, **result} for step, result in heldout_curve(folder)]
                           for run, folder in data.runs.items()},
        "training_tokens_per_second": {run.name: throughput(folder) for run, folder in data.runs.items()},
        "sweep": [{"label": r.group.label, "n": len(r.group.records), **{key: estimate(getattr(r, key)) for key, _, _ in METRICS}}
                  for r in data.sweep],
        "timings_seconds": data.timings,
        **judge_summary(data),
    }


def judge_summary(data: StudyData) -> dict:
    """The judge's numbers for metrics.json: nothing without a judge in the config."""
    if not data.judged:
        return {}
    rows = {}
    for name, judged in data.judged.items():
        rate = tuned_win_rate(judged)
        rows[name] = {"n_pairs": judged.n_pairs, "tuned_wins": rate.wins, "base_wins": rate.losses, "ties": rate.ties,
                      "tuned_win_rate": rate.win_rate, "ci95": list(rate.ci95),
                      "position_consistency": judged.position_consistency.value, "n_swap_ties": judged.n_swap_ties,
                      "annotator": judged.annotator}
    return {"judge": {"model": shown(data.config.judge), "tuned_vs_base": rows}}


def render_report(data: StudyData) -> str:
    sections = [setup_section(data), budgets_section(data), quantization_section(data), recipes_section(data), sweep_section(data),
                side_by_side_section(data), timings_section(data), reading_section(data)]
    return "\n".join(line for section in sections for line in section)


def render_summary(data: StudyData) -> str:
    return json.dumps(finite(summary(data)), indent=2, default=str) + "\n"


def write_study_report(data: StudyData) -> Path:
    config = data.config
    results_dir, assets_dir = Path(config.results_dir), Path(config.assets_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    assets_dir.mkdir(parents=True, exist_ok=True)
    figures = {"learning_curve": results_dir / "learning_curve.png", "sweep": results_dir / "sweep.png"}
    plot_learning_curve(data, figures["learning_curve"])
    plot_sweep(data, figures["sweep"])
    for name, path in figures.items():
        shutil.copy(path, assets_dir / f"{config.name}_{name}.png")
    report = results_dir / "report.md"
    atomic_write_text(report, render_report(data))
    atomic_write_text(results_dir / "metrics.json", render_summary(data))
    return report
