"""Which generation files the study compares, and how a table of comparisons is read.

Every comparison is paired (the same held-out records) and made within one seed; what varies between seeds is
then shown as the spread of the per-seed differences, never pooled into one interval. A table's p-values are
adjusted together (Holm), and a p-value at the bootstrap's floor is written as `<= floor`.
"""

from __future__ import annotations

from ..scoring.metrics import at_resampling_floor
from .config import StudyConfig, TrainingRun


def comparison_pairs(config: StudyConfig) -> list[tuple[str, str]]:
    """(a, b) pairs, each read as b minus a."""
    smallest = config.budgets[0]
    pairs = [(f"base-{run.precision}", run.tuned) for run in config.runs()]  # tuned - untuned, same base precision
    pairs += budget_pairs(config)
    pairs += [("base-none", f"base-{precision}") for precision in config.precisions() if precision != "none"]
    trained = [config.main_quantization, *config.quantizations]
    if "none" in trained:  # the same training on a quantized base against it on the full-precision base
        pairs += [(TrainingRun("none", smallest, seed).tuned, TrainingRun(precision, smallest, seed).tuned)
                  for precision in trained if precision != "none" for seed in config.seeds_at(smallest)]
    return pairs + recipe_pairs(config)


def recipe_pairs(config: StudyConfig) -> list[tuple[str, str]]:
    """Each recipe against the plain recipe: same precision, budget and seed (read as recipe minus plain)."""
    main, smallest = config.main_quantization, config.budgets[0]
    return [(TrainingRun(main, smallest, seed).tuned, TrainingRun(main, smallest, seed, recipe).tuned)
            for recipe in config.recipes for seed in config.seeds_at(smallest)]


def budget_pairs(config: StudyConfig) -> list[tuple[str, str]]:
    """Each larger budget against the smallest, with the same seed (same LoRA init and data order at the start)."""
    main, smallest = config.main_quantization, config.budgets[0]
    return [(TrainingRun(main, smallest, seed).tuned, TrainingRun(main, budget, seed).tuned)
            for budget in config.budgets[1:] for seed in config.seeds_at(budget) if seed in config.seeds_at(smallest)]


def judged_runs(config: StudyConfig) -> list[TrainingRun]:
    """The runs a configured judge compares with the untuned base: the main precision's, every budget and seed (the
    recipes are compared with the plain recipe by the metrics)."""
    return [run for run in config.runs() if run.precision == config.main_quantization and not run.recipe]


def sweep_run_of(config: StudyConfig) -> TrainingRun:
    """The decoding sweep runs on the main precision's largest budget, first seed."""
    budget = config.budgets[-1]
    return TrainingRun(config.main_quantization, budget, config.seeds_at(budget)[0])


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (family-wise error), in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def p_text(p_value: float, floor: float) -> str:
    """A bootstrap p-value as it can be read: at the floor 1/(B+1) it only says `<= floor`."""
    return f"<= {floor:.4f}" if at_resampling_floor(p_value, floor) else f"{p_value:.4f}"
