"""--prompt_template FILE: alpaca-lora's template files (prompt_input, prompt_no_input, response_split), validated,
used by training and generation alike, and kept in the run folder so generation does not need the original file."""

from __future__ import annotations

import json

import pytest

from alpaca_qlora.cli import UserError
from alpaca_qlora.data.prompts import build_prompt, check_prompt_template
from alpaca_qlora.generation.source import resolve_prompt_template
from conftest import run_script, training_args

# alpaca-lora's templates/alpaca_short.json, as that repository ships it
ALPACA_SHORT = {
    "description": "A shorter template to experiment with.",
    "prompt_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "prompt_no_input": "### Instruction:\n{instruction}\n\n### Response:\n",
    "response_split": "### Response:",
}


def write(folder, name, values):
    path = folder / name
    path.write_text(json.dumps(values) if name.endswith(".json") else "\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items()))
    return str(path)


def test_a_template_file_builds_the_prompts(tmp_path):
    for name in ("short.json", "short.yaml"):
        path = write(tmp_path, name, ALPACA_SHORT)
        assert build_prompt({"instruction": "Add {input}.", "input": "2 and 3"}, path) == (
            "### Instruction:\nAdd {input}.\n\n### Input:\n2 and 3\n\n### Response:\n")  # braces in a record stay
        assert build_prompt({"instruction": "Name a colour.", "input": ""}, path) == (
            "### Instruction:\nName a colour.\n\n### Response:\n")


@pytest.mark.parametrize("change,words", [
    ({"prompt_input": "### Instruction:\n{instruction}\n\n### Response:\n"}, "prompt_input must hold {input} once, found it 0 times"),
    ({"prompt_no_input": "{instruction} {input} ### Response:"}, "prompt_no_input must not hold {input} (records without an input use it)"),
    ({"response_split": "### Answer:"}, "response_split '### Answer:' is not in prompt_input"),
    ({"response_split": None}, "response_split is missing or empty"),
    ({"prompt_imput": "x"}, "unknown key(s) prompt_imput (a template holds prompt_input, prompt_no_input, "
     "response_split and an optional description)"),
    ({"prompt_input": 3}, "prompt_input must be a text, got 3"),
])
def test_template_file_mistakes_are_one_line(tmp_path, change, words):
    values = {key: value for key, value in {**ALPACA_SHORT, **change}.items() if value is not None}
    path = write(tmp_path, "bad.json", values)
    with pytest.raises(UserError) as error:
        check_prompt_template(path)
    assert str(error.value) == f"--prompt_template {path}: {words}"


def test_unknown_template_name_is_refused():
    with pytest.raises(UserError, match="--prompt_template alpaka: choose alpaca, chat, or a template file"):
        check_prompt_template("alpaka")


def test_training_keeps_a_copy_that_generation_uses(tiny_model, tiny_data, tmp_path):
    template = tmp_path / "short.json"
    template.write_text(json.dumps(ALPACA_SHORT))
    run = tmp_path / "run"
    result = run_script(*training_args(tiny_model, tiny_data, run, "--max_steps", "1", "--val_set_size", "0",
                                       "--prompt_template", str(template)), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "prompt_template.json").read_text()) == ALPACA_SHORT
    template.unlink()  # generation reads the run's copy, not the original file
    run_config = json.loads((run / "run_config.json").read_text())
    assert resolve_prompt_template(None, run_config, str(run)) == str(run / "prompt_template.json")
    answer = run_script("inference.py", "--adapter", str(run), "--instruction", "Name a colour.", "--max_new_tokens", "4",
                        env={"OMP_NUM_THREADS": "1"})
    assert answer.returncode == 0, answer.stderr[-3000:]
    refused = run_script("inference.py", "--adapter", str(run), "--prompt_template", "alpaca", "--instruction", "Hi.")
    assert refused.returncode == 2 and "was trained with the template file" in refused.stderr
