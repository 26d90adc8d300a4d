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

from ..cli import fail, read_config_file
from ..modeling import PACKAGE_PREFIX, QUANTIZATIONS

PATH_FIELDS = ("data_path", "run_dir", "results_dir", "assets_dir")


@dataclass
class StudyConfig:
    name: str
    base_model: str
    data_path: str
    run_dir: str  # training runs, prompts, generations and timings (large; not committed)
    results_dir: str  # the report, its figures and the score files (small; committed)
    budgets: list[int]  # optimizer steps at which the learning curve is measured; the last is the full run
    training: dict = field(default_factory=dict)  # more training_script.py options (name: value)
    quantizations: list[str] = field(default_factory=list)  # more base precisions, each trained to the last budget
    assets_dir: str = "assets"
    eval_records: int = 300
    max_new_tokens: int = 128
    generation_batch_size: int = 32
    sweep: str = "num_beams=1,4 top_k=10,50 temperature=0.7 do_sample=true"
    sweep_records: int = 100
    side_by_side: int = 5
    bertscore_model: str = "minilm"
    bootstrap: int = 1000
    reading: str = ""  # the authors' reading of the results, printed in the report

    @property
    def main_quantization(self) -> str:
        return str(self.training.get("quantization", "nf4"))

    def precisions(self) -> list[str]:
        """Every base precision the study generates with: the main run's, the extra ones, and full precision."""
        return list(dict.fromkeys([self.main_quantization, *self.quantizations, "none"]))


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
    base = values.get("base_model")
    if isinstance(base, str) and not base.startswith(PACKAGE_PREFIX) and (looks_like_path(base) or (config_folder / base).exists()):
        values["base_model"] = resolve(base, config_folder)
    for name, value in overrides.items():  # flags: relative to the folder the command runs in
        if value is not None:
            values[name] = str(Path(value).expanduser().resolve())
    try:
        config = StudyConfig(**values)
    except TypeError as error:
        fail(f"{path}: {error}")
    check_study_config(config, path)
    return config


def check_study_config(config: StudyConfig, path: str) -> None:
    budgets = config.budgets
    if not isinstance(budgets, list) or not budgets or not all(isinstance(b, int) and b >= 1 for b in budgets) \
            or sorted(set(budgets)) != budgets:
        fail(f"{path}: budgets must be increasing step counts >= 1, got {budgets}")
    if not isinstance(config.training, dict):
        fail(f"{path}: training must be a mapping of training_script.py options")
    for reserved in ("output_dir", "base_model", "data_path", "max_steps", "resume_from_checkpoint"):
        if reserved in config.training:
            fail(f"{path}: training.{reserved} is set by the study itself; remove it")
    for quantization in [config.main_quantization, *config.quantizations]:
        if quantization not in QUANTIZATIONS:
            fail(f"{path}: quantization '{quantization}' is not one of {', '.join(QUANTIZATIONS)}")
    for name in ("eval_records", "max_new_tokens", "generation_batch_size", "sweep_records", "bootstrap"):
        if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
            fail(f"{path}: {name} must be a whole number >= 1, got {getattr(config, name)!r}")
    if config.sweep_records > config.eval_records:
        fail(f"{path}: sweep_records ({config.sweep_records}) must not exceed eval_records ({config.eval_records})")


def step_spacing(budgets: list[int]) -> int:
    """Checkpoints and held-out evaluations every this many steps land on every budget."""
    return math.gcd(*budgets)
