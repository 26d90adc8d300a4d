"""The study's configuration: a YAML/JSON file, with paths resolved once.

Paths written in the config file are relative to the file's own folder (so a shipped config works from any
folder); paths given as flags are relative to the folder the command runs in. After loading, every path
is absolute, and the subprocesses the study starts receive only absolute paths.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import check_writable_folder, fail, read_config_file
from ..modeling import PACKAGE_PREFIX, QUANTIZATIONS

PATH_FIELDS = ("data_path", "run_dir", "results_dir", "assets_dir")


@dataclass
class StudyConfig:
    name: str
    base_model: str
    data_path: str
    run_dir: str  # training runs, prompts, generations and timings (large; not committed)
    results_dir: str  # the report, its figures and the score files (small; committed)
    budgets: list[int]  # optimizer steps: each budget is a training run of its own, with its own full schedule
    training: dict = field(default_factory=dict)  # more training_script.py options (name: value)
    quantizations: list[str] = field(default_factory=list)  # more base precisions, each trained at the first budget
    # more recipes (name: training_script.py options added to `training`), each trained on the main precision at the
    # first budget with that budget's seeds, and compared with the plain recipe seed by seed (NEFTune, PiSSA, DoRA ...)
    recipes: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [42])  # training seeds (data order, LoRA init, dropout)
    seeded_budgets: list[int] | None = None  # budgets trained with every seed (the others with the first); None: all
    eval_steps: int | None = None  # held-out loss every this many steps in every run; None: the budgets' gcd
    assets_dir: str = "assets"
    eval_records: int = 300
    max_new_tokens: int = 128
    stop: list[str] | None = None  # every generation ends its answers before these strings (inference.py --stop)
    generation_batch_size: int = 32
    sweep: str = "num_beams=1,4 top_k=10,50 temperature=0.7 do_sample=true"
    sweep_records: int = 100
    side_by_side: int = 5
    bertscore_model: str = "minilm"  # minilm, a model bert-score knows the layer of, or a model folder
    bertscore_num_layers: int | None = None  # the layer BERTScore uses; a model folder needs it
    bootstrap: int = 1000
    reading: str = ""  # the authors' reading of the results, printed in the report
    judge: str | None = None  # a causal LM that judges tuned against base (python -m alpaca_qlora.judge); None: no judge

    @property
    def main_quantization(self) -> str:
        return str(self.training.get("quantization", "nf4"))

    def precisions(self) -> list[str]:
        """Every base precision the study generates with: the main run's, the extra ones, and full precision."""
        return list(dict.fromkeys([self.main_quantization, *self.quantizations, "none"]))

    def seeds_at(self, budget: int) -> list[int]:
        every = self.budgets if self.seeded_budgets is None else self.seeded_budgets
        return list(self.seeds) if budget in every else list(self.seeds[:1])

    def runs(self) -> list["TrainingRun"]:
        """Every training run: the main precision at every budget, the other precisions at the first budget."""
        main = [TrainingRun(self.main_quantization, budget, seed) for budget in self.budgets for seed in self.seeds_at(budget)]
        others = [TrainingRun(precision, self.budgets[0], seed) for precision in self.quantizations
                  for seed in self.seeds_at(self.budgets[0])]
        recipes = [TrainingRun(self.main_quantization, self.budgets[0], seed, recipe) for recipe in self.recipes
                   for seed in self.seeds_at(self.budgets[0])]
        return main + others + recipes

    def evaluation_spacing(self) -> int:
        return self.eval_steps if self.eval_steps is not None else math.gcd(*self.budgets)


@dataclass(frozen=True)
class TrainingRun:
    """One training run of the study: a base precision, a budget of optimizer steps (its whole schedule), a seed, and
    the recipe it adds to the study's training options ("" for none)."""

    precision: str
    budget: int
    seed: int
    recipe: str = ""

    @property
    def name(self) -> str:
        return f"{self.recipe + '-' if self.recipe else ''}{self.precision}-{self.budget}-seed{self.seed}"

    @property
    def tuned(self) -> str:
        """The name of its generation file (and of its group in the scores)."""
        return f"tuned-{self.name}"


REQUIRED_KEYS = [f.name for f in dataclasses.fields(StudyConfig)
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
TEXT_KEYS = ("name", "base_model", "data_path", "run_dir", "results_dir", "assets_dir", "sweep", "bertscore_model", "reading")


def resolve(value: str, folder: Path) -> str:
    return str((folder / Path(value).expanduser()).resolve())


def looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith(".gguf")


def load_study_config(path: str, overrides: dict) -> StudyConfig:
    values = read_config_file(path)
    names = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        fail(f"{path}: unknown key(s) {', '.join(unknown)}")
    config_folder = Path(path).resolve().parent
    for name in PATH_FIELDS:
        if isinstance(values.get(name), str):
            values[name] = resolve(values[name], config_folder)
    for name in ("base_model", "bertscore_model", "judge"):  # a model folder, or a name (a hub id, minilm, package:...)
        model = values.get(name)
        if isinstance(model, str) and not model.startswith(PACKAGE_PREFIX) and (looks_like_path(model) or (config_folder / model).exists()):
            values[name] = resolve(model, config_folder)
    for name, value in overrides.items():  # flags: relative to the folder the command runs in
        if value is not None:
            values[name] = str(Path(value).expanduser().resolve())
    missing = [name for name in REQUIRED_KEYS if name not in values]
    if missing:
        fail(f"{path}: missing key(s) {', '.join(missing)}")
    config = StudyConfig(**values)
    check_study_config(config, path)
    for name in ("run_dir", "results_dir", "assets_dir"):  # a file in the way fails the step that writes there
        given_as = f"--{name}" if overrides.get(name) is not None else f"{path}: {name}"
        check_writable_folder(getattr(config, name), given_as)
    return config


RESERVED_TRAINING_OPTIONS = ("output_dir", "base_model", "data_path", "max_steps", "resume_from_checkpoint", "seed")


def check_recipes(config: StudyConfig, path: str) -> None:
    if not isinstance(config.recipes, dict):
        fail(f"{path}: recipes must be a mapping of names to training_script.py options, got {config.recipes!r}")
    for name, options in config.recipes.items():
        if not isinstance(name, str) or not name.replace("_", "").isalnum() or not name[:1].isalpha():
            fail(f"{path}: recipe name {name!r} must be letters, digits and '_', beginning with a letter")
        if not isinstance(options, dict) or not options:
            fail(f"{path}: recipes.{name} must be a non-empty mapping of training_script.py options")
        for reserved in (*RESERVED_TRAINING_OPTIONS, "quantization"):
            if reserved in options:
                fail(f"{path}: recipes.{name}.{reserved} is set by the study itself; remove it")


def check_study_config(config: StudyConfig, path: str) -> None:
    budgets = config.budgets
    if not isinstance(budgets, list) or not budgets or not all(isinstance(b, int) and b >= 1 for b in budgets) \
            or sorted(set(budgets)) != budgets:
        fail(f"{path}: budgets must be increasing step counts >= 1, got {budgets}")
    if not isinstance(config.training, dict):
        fail(f"{path}: training must be a mapping of training_script.py options")
    for reserved in RESERVED_TRAINING_OPTIONS:
        if reserved in config.training:
            fail(f"{path}: training.{reserved} is set by the study itself; remove it")
    check_recipes(config, path)
    seeds = config.seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        fail(f"{path}: seeds must be a list of distinct whole numbers, got {seeds!r}")
    if config.seeded_budgets is not None and (not isinstance(config.seeded_budgets, list)
                                              or not set(config.seeded_budgets) <= set(budgets)):
        fail(f"{path}: seeded_budgets must list budgets of {budgets}, got {config.seeded_budgets!r}")
    if config.eval_steps is not None and (isinstance(config.eval_steps, bool) or not isinstance(config.eval_steps, int)
                                          or config.eval_steps < 1):
        fail(f"{path}: eval_steps must be a whole number >= 1, got {config.eval_steps!r}")
    if not isinstance(config.quantizations, list):
        fail(f"{path}: quantizations must be a list of base precisions, got {config.quantizations!r}")
    for quantization in [config.main_quantization, *config.quantizations]:
        if quantization not in QUANTIZATIONS:
            fail(f"{path}: quantization '{quantization}' is not one of {', '.join(QUANTIZATIONS)}")
    for name in TEXT_KEYS:
        value = getattr(config, name)
        if not isinstance(value, str) or (name != "reading" and not value.strip()):
            fail(f"{path}: {name} must be a text, got {value!r}")
    if config.judge is not None and (not isinstance(config.judge, str) or not config.judge.strip()):
        fail(f"{path}: judge must name a model (a causal LM), got {config.judge!r}")
    if "/" in config.name:
        fail(f"{path}: name {config.name!r} begins the figures' file names ({config.name}_sweep.png); use no '/'")
    minimums = {"eval_records": 1, "max_new_tokens": 1, "generation_batch_size": 1, "sweep_records": 1, "bootstrap": 1,
                "side_by_side": 0}
    if config.bertscore_num_layers is not None:
        minimums["bertscore_num_layers"] = 1
    for name, minimum in minimums.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            fail(f"{path}: {name} must be a whole number >= {minimum}, got {value!r}")
    if config.stop is not None and (not isinstance(config.stop, list) or not config.stop
                                    or not all(isinstance(stop, str) and stop for stop in config.stop)):
        fail(f"{path}: stop must be a list of non-empty texts, e.g. stop: [\"### Instruction:\"], got {config.stop!r}")
    if config.sweep_records > config.eval_records:
        fail(f"{path}: sweep_records ({config.sweep_records}) must not exceed eval_records ({config.eval_records})")
