"""Every value of a study config that a later step would refuse, refused before the first step runs.

config.py checks the config's own shape (keys, types, budgets, folders). Here each step's inputs are checked as
the step itself will read them: the training runs' commands parsed by training_script.py's own parser and
checks (nothing is run), the base model, the data and its held-out split, the sweep as inference.py parses it,
and the BERTScore backbone as scoring resolves it. A step's message names its flags (`--lora_r`); here it names
the config key that sets the flag instead (`training.lora_r`), after the config file: one line, exit 2, before
anything is written.
"""

from __future__ import annotations

import difflib
import os
import re
from contextlib import contextmanager
from typing import Iterator

from ..cli import UserError, fail
from .config import StudyConfig
from .scores import metric_config
from .steps import sweep_size, training_arguments


def in_config_terms(message: str, keys: dict[str, str]) -> str:
    """A step's message with each flag the study sets from a config key written as that key."""
    return re.sub(r"--(\w+)", lambda flag: keys.get(flag[1], flag[0]), message)


@contextmanager
def refused_as(where: str, keys: dict[str, str]) -> Iterator[None]:
    """A step's refusal, told as the config's: `where` (the config file) first, flags written as config keys."""
    try:
        yield
    except UserError as error:
        fail(f"{where}: {in_config_terms(str(error), keys)}")


@contextmanager
def no_trace_of_parsing() -> Iterator[None]:
    """TrainingArguments, as it is built, sets accelerate's environment variables (DeepSpeed, FSDP, compile) and
    transformers' global DeepSpeed config: neither may reach this process's scoring or the steps it starts."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    environment = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environment)
        unset_hf_deepspeed_config()


def training_option_names() -> list[str]:
    from ..training.config import build_parser

    return [action.dest for action in build_parser()._actions if action.option_strings and action.dest != "help"]


def check_training(config: StudyConfig, path: str) -> None:
    """Each training run's command, parsed and checked as training_script.py does before it reads a model; then the
    base model, the data and the held-out split that the evaluation sample is drawn from."""
    from ..modeling import check_model_available
    from ..training.config import parse_training_config
    from ..training.train import load_split

    options = training_option_names()
    given = [("training", config.training), *((f"recipes.{recipe}", added) for recipe, added in config.recipes.items())]
    for key, values in given:
        for name in values:
            if name not in options:
                close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}?" if close else "see python training_script.py --help"
                fail(f"{path}: {key}.{name}: unknown training option ({hint})")
    keys = {"base_model": "base_model", "data_path": "data_path", "output_dir": "run_dir",
            **{name: f"{key}.{name}" for key, values in reversed(given) for name in values}}
    with refused_as(path, keys):
        with no_trace_of_parsing():
            runs = config.runs()
            main_run = parse_training_config(training_arguments(config, runs[0]))
            for run in runs[1:]:
                parse_training_config(training_arguments(config, run))
        check_model_available(config.base_model)
    with refused_as(f"{path}: data_path", keys):
        held_out = load_split(main_run).val
    if len(held_out) < config.eval_records:
        fail(f"{path}: eval_records {config.eval_records} is more than the {len(held_out)} held-out records the main run "
             "keeps (training.val_set_size and training.max_samples set them)")


def check_judge(config: StudyConfig, path: str) -> None:
    """The judge, as python -m alpaca_qlora.judge takes it: a causal LM that is there (a folder, cached, or the Hub)."""
    from ..judge.job import check_judge_model

    with refused_as(path, {"judge": "judge"}):
        check_judge_model(config.judge)


def check_steps_accept(config: StudyConfig, path: str) -> None:
    """The sweep, the scoring's backbone, the judge and the training runs (their data last), as the steps will take
    them."""
    from ..scoring.metrics import resolve_backbone

    with refused_as(path, {"sweep": "sweep"}):
        sweep_size(config)
    with refused_as(f"{path}: bertscore_model {config.bertscore_model}",
                    {"bertscore_model": "bertscore_model", "bertscore_num_layers": "bertscore_num_layers"}):
        resolve_backbone(metric_config(config))
    if config.judge:
        check_judge(config, path)
    check_training(config, path)
