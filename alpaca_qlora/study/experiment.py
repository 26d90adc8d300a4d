"""The study end to end: fine-tune, generate on held-out records with the base and the tuned model,
score both with a paired test, follow the scores over training budgets, and sweep decoding settings.

    python -m alpaca_qlora.experiment --config experiments/stories260k.yaml

Each step runs the project's own scripts (training_script.py, inference.py, evaluate_metrics.py)
as a user would, and is skipped when its output already exists, so an interrupted study resumes
where it stopped. The report (markdown + figures) is written to `results_dir`, the figures also
to `assets_dir`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import fail, read_config_file, run_cli
from ..files import atomic_write_text
from ..jsonl import read_objects, write_jsonl
from ..plots import plt, save_figure
from ..run_folder import read_log

REPO_ROOT = Path(__file__).resolve().parents[2]
METRICS = (("bleu", "BLEU / 100", 0.01), ("rougeL_f1", "ROUGE-L F1", 1.0), ("bertscore_f1", "BERTScore F1", 1.0))


@dataclass
class StudyConfig:
    name: str
    base_model: str
    data_path: str
    run_dir: str
    results_dir: str
    budgets: list[int]  # optimizer steps at which the learning curve is measured; the last is the full run
    training: dict = field(default_factory=dict)  # more training_script.py options (name: value)
    assets_dir: str = "assets"
    eval_records: int = 300
    max_new_tokens: int = 128
    generation_batch_size: int = 32
    sweep: str = "num_beams=1,4 top_k=10,50 temperature=0.7 do_sample=true"
    sweep_records: int = 100
    bertscore_model: str = "minilm"
    bootstrap: int = 1000


def load_study_config(path: str, overrides: dict) -> StudyConfig:
    values = {**read_config_file(path), **{k: v for k, v in overrides.items() if v is not None}}
    names = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        fail(f"{path}: unknown key(s) {', '.join(unknown)}")
    try:
        config = StudyConfig(**values)
    except TypeError as error:
        fail(f"{path}: {error}")
    if not config.budgets or sorted(config.budgets) != config.budgets or config.budgets[0] < 1:
        fail(f"{path}: budgets must be increasing step counts >= 1, got {config.budgets}")
    return config


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
def run_step(title: str, command: list[str], done: Path) -> None:
    if done.exists():
        print(f"[skip] {title}: {done} exists")
        return
    print(f"[run] {title}\n      {' '.join(command)}", flush=True)
    started = time.time()
    result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT)
    if result.returncode != 0:
        fail(f"{title} failed (exit code {result.returncode}); rerun the same command to resume")
    print(f"[done] {title} in {time.time() - started:.0f} s", flush=True)


def train_step(config: StudyConfig) -> None:
    run_dir = Path(config.run_dir)
    step_spacing = math.gcd(*config.budgets)
    options = {"max_steps": config.budgets[-1], "save_strategy": "steps", "save_steps": step_spacing,
               "save_total_limit": len(config.budgets) * 1000, "eval_strategy": "steps", "eval_steps": step_spacing,
               **config.training}
    command = ["training_script.py", "--base_model", config.base_model, "--data_path", config.data_path,
               "--output_dir", str(run_dir)]
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    if run_dir.is_dir() and any(run_dir.glob("checkpoint-*/trainer_state.json")):
        command += ["--resume_from_checkpoint", "true"]
    run_step("fine-tune", command, run_dir / "adapter_model.safetensors")


def sample_prompts(config: StudyConfig) -> tuple[Path, Path]:
    """The first records of the run's held-out split (already shuffled): the fixed evaluation sample."""
    run_dir = Path(config.run_dir)
    held_out = read_objects(run_dir / "val.jsonl")
    if len(held_out) < config.eval_records:
        fail(f"{run_dir / 'val.jsonl'} has {len(held_out)} records, the study asks for eval_records={config.eval_records}")
    eval_path, sweep_path = run_dir / "study_eval_prompts.jsonl", run_dir / "study_sweep_prompts.jsonl"
    write_jsonl(eval_path, held_out[: config.eval_records])
    write_jsonl(sweep_path, held_out[: config.sweep_records])
    return eval_path, sweep_path


def adapter_for_budget(config: StudyConfig, step: int) -> Path:
    run_dir = Path(config.run_dir)
    return run_dir if step == config.budgets[-1] else run_dir / f"checkpoint-{step}"


def generation_file(config: StudyConfig, step: int) -> Path:
    return Path(config.run_dir) / ("generations_base.jsonl" if step == 0 else f"generations_step{step}.jsonl")


def generate_step(config: StudyConfig, prompts: Path) -> None:
    common = ["--prompts_file", str(prompts), "--max_new_tokens", str(config.max_new_tokens),
              "--batch_size", str(config.generation_batch_size)]
    for step in [0, *config.budgets]:
        model = ["--base_model", config.base_model] if step == 0 else ["--adapter", str(adapter_for_budget(config, step))]
        output = generation_file(config, step)
        run_step(f"generate ({'base model' if step == 0 else f'step {step}'})",
                 ["inference.py", *model, *common, "--output_file", str(output)], output.with_suffix(".done"))
        output.with_suffix(".done").touch()


def score_step(config: StudyConfig) -> Path:
    output_dir = Path(config.run_dir) / "study_scores"
    files = [str(generation_file(config, step)) for step in [0, *config.budgets]]
    run_step("score base and every budget (paired against the base)",
             ["evaluate_metrics.py", *files, "--output_dir", str(output_dir), "--bertscore_model", config.bertscore_model,
              "--bootstrap", str(config.bootstrap)], output_dir / "metrics.json")
    return output_dir


def sweep_step(config: StudyConfig, prompts: Path) -> Path:
    run_dir = Path(config.run_dir)
    output = run_dir / "generations_sweep.jsonl"
    run_step("decoding sweep on the fine-tuned model",
             ["inference.py", "--adapter", str(run_dir), "--prompts_file", str(prompts), "--output_file", str(output),
              "--sweep", config.sweep, "--max_new_tokens", str(config.max_new_tokens),
              "--batch_size", str(config.generation_batch_size)], output.with_suffix(".done"))
    output.with_suffix(".done").touch()
    output_dir = run_dir / "study_sweep_scores"
    run_step("score the sweep", ["evaluate_metrics.py", str(output), "--output_dir", str(output_dir),
                                 "--bertscore_model", config.bertscore_model, "--bootstrap", str(config.bootstrap)],
             output_dir / "metrics.json")
    return output_dir


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def budget_of(group: dict, config: StudyConfig) -> int:
    source = Path(group["source"]).name
    for step in [0, *config.budgets]:
        if generation_file(config, step).name == source:
            return step
    fail(f"unexpected group source {group['source']} in the study's scores")


def heldout_losses(config: StudyConfig) -> dict[int, float]:
    run_dir = Path(config.run_dir)
    results = json.loads((run_dir / "eval_results.json").read_text())
    losses = {0: results["before_training"]["eval_loss"]}
    for row in read_log(run_dir / "train_log.jsonl"):
        if "eval_loss" in row and row["step"] in config.budgets:
            losses[row["step"]] = row["eval_loss"]
    losses[config.budgets[-1]] = results["after_training"]["eval_loss"]
    return losses


def plot_learning_curve(scores: dict[int, dict], losses: dict[int, float], path: Path, title: str) -> None:
    steps = sorted(scores)
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    axes[0].plot(sorted(losses), [losses[s] for s in sorted(losses)], marker="o", color="tab:orange")
    axes[0].set_title("held-out loss (nats/token)")
    for axis, (key, label, scale) in zip(axes[1:], METRICS):
        values = [scores[s][key] * scale for s in steps]
        low = [v - scores[s][f"{key}_ci95"][0] * scale for v, s in zip(values, steps)]
        high = [scores[s][f"{key}_ci95"][1] * scale - v for v, s in zip(values, steps)]
        axis.errorbar(steps, values, yerr=[low, high], marker="o", capsize=4)
        axis.set_title(f"{label} (95% CI)")
    for axis in axes:
        axis.set_xlabel("optimizer steps (0 = base model)")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    save_figure(figure, path)


def fmt(value: float, ci: list[float], scale: float = 1.0, digits: int = 4) -> str:
    return f"{value * scale:.{digits}f} [{ci[0] * scale:.{digits}f}, {ci[1] * scale:.{digits}f}]"


def comparison_table(comparisons: list[dict], labels: dict[str, str]) -> list[str]:
    lines = ["| comparison | metric | base | tuned | difference [95% CI] | p (paired bootstrap) |", "|---|---|---:|---:|---|---:|"]
    for comparison in comparisons:
        name = f"{labels.get(comparison['b_source'], comparison['b'])} vs base"
        for key, label, _ in METRICS:
            c = comparison[key]
            lines.append(f"| {name} | {label.split(' /')[0]} | {c['a']:.4f} | {c['b']:.4f} | "
                         f"{c['difference']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {c['p_value']:.4f} |")
    return lines


def write_report(config: StudyConfig, scores_dir: Path, sweep_dir: Path) -> Path:
    results_dir, assets_dir, run_dir = Path(config.results_dir), Path(config.assets_dir), Path(config.run_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    assets_dir.mkdir(parents=True, exist_ok=True)
    metrics = json.loads((scores_dir / "metrics.json").read_text())
    sweep = json.loads((sweep_dir / "metrics.json").read_text())
    by_budget = {budget_of(group, config): group for group in metrics["groups"]}
    losses = heldout_losses(config)
    labels = {group["source"]: ("base model" if step == 0 else f"step {step}") for step, group in by_budget.items()}

    figures = {"learning_curve": results_dir / "learning_curve.png", "loss_curve": results_dir / "loss_curve.png",
               "sweep": results_dir / "sweep.png"}
    plot_learning_curve(by_budget, losses, figures["learning_curve"], f"{config.name}: held-out scores over training")
    shutil.copy(run_dir / "loss_curve.png", figures["loss_curve"])
    shutil.copy(sweep_dir / "metrics.png", figures["sweep"])
    for name, path in figures.items():
        shutil.copy(path, assets_dir / f"{config.name}_{name}.png")

    run_info = json.loads((run_dir / "run_info.json").read_text())
    final = config.budgets[-1]
    lines = [
        f"# Study `{config.name}`: base vs fine-tuned on held-out Alpaca", "",
        f"Base model `{config.base_model}`, QLoRA ({json.loads((run_dir / 'run_config.json').read_text())['model']['quantization']}) "
        f"for {final} optimizer steps on {run_info['data']['train_records']} training records; "
        f"scored on the first {config.eval_records} records of the run's held-out split (never trained on), "
        f"greedy decoding, at most {config.max_new_tokens} new tokens. BERTScore backbone: "
        f"`{metrics['settings']['bertscore']['model']}` layer {metrics['settings']['bertscore']['num_layers']} "
        f"(not comparable with other backbones). Intervals: 95% bootstrap, {config.bootstrap} resamples.",
        "", f"Machine: {run_info['machine']['platform']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in run_info["versions"].items() if v), "",
        "## Base vs fine-tuned (and each budget vs base)", "",
        "| model | held-out loss | BLEU | ROUGE-L F1 | BERTScore F1 |", "|---|---:|---|---|---|",
    ]
    for step in sorted(by_budget):
        g = by_budget[step]
        lines.append(f"| {'base model' if step == 0 else f'step {step}'} | {losses.get(step, float('nan')):.4f} | "
                     f"{fmt(g['bleu'], g['bleu_ci95'], digits=2)} | {fmt(g['rougeL_f1'], g['rougeL_f1_ci95'])} | "
                     f"{fmt(g['bertscore_f1'], g['bertscore_f1_ci95'])} |")
    lines += ["", "### Paired differences (tuned - base, same records)", "", *comparison_table(metrics["comparisons"], labels)]
    lines += ["", "## Learning curve", "", "![learning curve](learning_curve.png)", "", "![loss curve](loss_curve.png)",
              "", "## Decoding sweep on the fine-tuned model", "",
              f"First {config.sweep_records} held-out records, sweep `{config.sweep}`.", "",
              "| setting | BLEU | ROUGE-L F1 | BERTScore F1 |", "|---|---|---|---|"]
    for g in sweep["groups"]:
        lines.append(f"| {g['label']} | {fmt(g['bleu'], g['bleu_ci95'], digits=2)} | {fmt(g['rougeL_f1'], g['rougeL_f1_ci95'])} | "
                     f"{fmt(g['bertscore_f1'], g['bertscore_f1_ci95'])} |")
    lines += ["", "![sweep](sweep.png)", "", "## Reading", "", *verdict(by_budget, losses, metrics["comparisons"], final), ""]
    report = results_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    atomic_write_text(results_dir / "metrics.json", json.dumps({"budgets": {str(k): v for k, v in by_budget.items()},
                                                                "heldout_loss": {str(k): v for k, v in losses.items()},
                                                                "comparisons": metrics["comparisons"],
                                                                "sweep": sweep["groups"]}, indent=2) + "\n")
    return report


def verdict(by_budget: dict, losses: dict, comparisons: list[dict], final: int) -> list[str]:
    """Plain statements of what moved significantly (p < 0.05, CI excluding 0) and what did not."""
    final_source = by_budget[final]["source"]
    final_comparison = next(c for c in comparisons if c["b_source"] == final_source)
    steps = sorted(by_budget)
    lines = [f"- Held-out loss (mean NLL per response token over the whole held-out split): {losses[0]:.4f} before "
             f"training, {losses[final]:.4f} after {final} steps; over the budgets {steps}: "
             + ", ".join(f"{losses[s]:.4f}" for s in steps if s in losses) + "."]
    for key, label, scale in METRICS:
        lines.append(f"- {label} over the budgets {steps}: " + ", ".join(f"{by_budget[s][key] * scale:.4f}" for s in steps) + ".")
    lines.append(f"- Tuned ({final} steps) vs base on the same {final_comparison['n_shared']} records:")
    for key, label, _ in METRICS:
        c = final_comparison[key]
        significant = c["p_value"] < 0.05 and (c["ci95"][0] > 0 or c["ci95"][1] < 0)
        direction = "higher" if c["difference"] > 0 else "lower"
        lines.append(f"  - {label.split(' /')[0]}: the fine-tuned model is {direction} by {abs(c['difference']):.4f} "
                     + (f"(significant, p = {c['p_value']:.4f})." if significant else f"(not significant, p = {c['p_value']:.4f})."))
    return lines


# ---------------------------------------------------------------------------------------------
def run_study(config: StudyConfig) -> Path:
    train_step(config)
    eval_prompts, sweep_prompts = sample_prompts(config)
    generate_step(config, eval_prompts)
    scores_dir = score_step(config)
    sweep_dir = sweep_step(config, sweep_prompts)
    report = write_report(config, scores_dir, sweep_dir)
    print(f"report: {report}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML/JSON study config (see experiments/)")
    parser.add_argument("--run_dir", help="override the config's run_dir")
    parser.add_argument("--results_dir", help="override the config's results_dir")
    parser.add_argument("--assets_dir", help="override the config's assets_dir")
    args = parser.parse_args(argv)
    overrides = {"run_dir": args.run_dir, "results_dir": args.results_dir, "assets_dir": args.assets_dir}
    run_study(load_study_config(args.config, overrides))


if __name__ == "__main__":
    run_cli(main)
