"""A researcher's everyday use: overwriting a run, inputs with other field names and YAML lists, two processes on
one generations file, empty answers, what a run folder tells its reader, and quiet output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, run_script, training_args

sys.path.insert(0, str(REPO_ROOT))
import evaluate_metrics  # noqa: E402
import inference  # noqa: E402

NOISE = ("kernels-community", "is_gradient_checkpointing", "Token indices sequence length", "Traceback")


@pytest.fixture(scope="module")
def renamed_data(tmp_path_factory, tiny_records):
    """The synthetic records under other field names, without `input` where it is empty."""
    rows = [{"question": r["instruction"], **({"context": r["input"]} if r["input"] else {}), "answer": r["output"]}
            for r in tiny_records[:64]]
    path = tmp_path_factory.mktemp("renamed") / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_model, renamed_data):
    """A run on renamed fields, with LoRA targets given as a YAML list and no held-out set."""
    root = tmp_path_factory.mktemp("everyday")
    config = root / "run.yaml"
    config.write_text("lora_target_modules: [q_proj, v_proj]\ninstruction_field: question\ninput_field: context\n"
                      "output_field: answer\nval_set_size: 0\n")
    run = root / "run"
    result = run_script(*training_args(tiny_model, renamed_data, run, "--config", str(config), "--max_steps", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "stdout.txt").write_text(result.stdout)
    (root / "stderr.txt").write_text(result.stderr)
    return run


def test_renamed_fields_and_yaml_list_train(small_run):
    adapter = json.loads((small_run / "adapter_config.json").read_text())
    assert {name.split(".")[-1] for name in adapter["target_modules"]} == {"q_proj", "v_proj"}
    info = json.loads((small_run / "run_info.json").read_text())
    assert info["data"]["train_records"] == 64 and info["data"]["val_records"] == 0


def test_no_heldout_set_is_said_not_faked(small_run):
    assert not (small_run / "val.jsonl").exists()
    results = json.loads((small_run / "eval_results.json").read_text())
    assert results["heldout"].startswith("none: no held-out records") and "after_training" not in results
    assert results["finished_at_step"] == 2


def test_model_card_and_quiet_output(small_run, tiny_model):
    card = (small_run / "README.md").read_text()
    assert "More Information Needed" not in card
    for text in (str(tiny_model), "LoRA: r 16, alpha 32", "64 trained on", "2 optimizer steps", "PeftModel.from_pretrained",
                 "inference.py --adapter"):
        assert text in card, text
    output = (small_run.parent / "stdout.txt").read_text() + (small_run.parent / "stderr.txt").read_text()
    assert not [noise for noise in NOISE if noise in output]


def test_overwrite_replaces_a_run_and_keeps_nothing_stale(tiny_model, tiny_data, tmp_path):
    run = tmp_path / "run"
    first = run_script(*training_args(tiny_model, tiny_data, run, "--max_steps", "2", "--val_set_size", "8",
                                      "--save_strategy", "steps", "--save_steps", "1"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert (run / "checkpoint-2").is_dir()
    second = run_script(*training_args(tiny_model, tiny_data, run, "--max_steps", "1", "--val_set_size", "8",
                                       "--overwrite_output_dir"))
    assert second.returncode == 0, second.stderr[-2000:]
    assert not list(run.glob("checkpoint-*")) and json.loads((run / "eval_results.json").read_text())["finished_at_step"] == 1


def test_loss_curve_starts_before_training(tiny_model, tiny_data, tmp_path):
    from alpaca_qlora.plots import plt

    run = tmp_path / "run"
    result = run_script(*training_args(tiny_model, tiny_data, run, "--max_steps", "2", "--val_set_size", "8",
                                       "--eval_strategy", "steps", "--eval_steps", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    image = plt.imread(run / "loss_curve.png")
    assert image.shape[0] > 200
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "eval_loss" in row] == [2]  # the Trainer's history; step 0 comes from eval_results
    assert json.loads((run / "eval_results.json").read_text())["before_training"]["eval_loss"] > 0


def test_prompts_without_references_and_other_field_names(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "new.jsonl"
    prompts.write_text(json.dumps({"id": 7, "question": "Add 1 and 2."}) + "\n" + json.dumps({"id": 8, "question": "Reverse it.", "context": "apple"}) + "\n")
    output = tmp_path / "gens.jsonl"
    inference.main(["--base_model", str(tiny_model), "--prompts_file", str(prompts), "--output_file", str(output),
                    "--instruction_field", "question", "--input_field", "context", "--max_new_tokens", "3"])
    rows = sorted((json.loads(line) for line in output.read_text().splitlines()), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == [7, 8] and all("reference" not in row for row in rows)
    assert rows[1]["input"] == "apple" and rows[0]["precision"] == {"quantization": "none", "compute_dtype": "fp32",
                                                                    "cpu_4bit_kernel": None}
    with pytest.raises(SystemExit):  # nothing to score against: said in one line
        from alpaca_qlora.cli import run_cli

        run_cli(lambda: evaluate_metrics.main([str(output), "--output_dir", str(tmp_path / "m")]))
    assert "none of its 2 rows has a reference" in capsys.readouterr().err


def test_scores_keep_integer_ids_and_count_empty_answers(tmp_path):
    gens = tmp_path / "gens.jsonl"
    rows = [{"id": i, "instruction": "q", "input": "", "reference": "a b c", "prediction": "" if i == 1 else "a b",
             "settings": {}, "base_model": "m", "adapter": None} for i in range(4)]
    rows.append({"id": 9, "instruction": "new", "input": "", "prediction": "x", "settings": {}, "base_model": "m", "adapter": None})
    gens.write_text("".join(json.dumps(row) + "\n" for row in rows))
    evaluate_metrics.main([str(gens), "--output_dir", str(tmp_path / "m"), "--bertscore_model", "minilm", "--bootstrap", "20"])
    scores = [json.loads(line) for line in (tmp_path / "m" / "scores.jsonl").read_text().splitlines()]
    assert [row["id"] for row in scores] == [0, 1, 2, 3]
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["groups"][0]["n_empty_predictions"] == 1 and metrics["groups"][0]["n_without_reference"] == 1
    markdown = (tmp_path / "m" / "metrics.md").read_text()
    assert "1 row(s) without a reference were not scored (ids 9)" in markdown and "fewer than 30" not in markdown


def test_a_second_process_on_the_same_output_file_is_refused(tiny_model, tiny_records, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    # enough prompts that the first process is still writing when the second has started up (tens of seconds)
    records = [{**tiny_records[i % len(tiny_records)], "id": i} for i in range(400)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    output = tmp_path / "gens.jsonl"
    command = [sys.executable, "inference.py", "--base_model", str(tiny_model), "--prompts_file", str(prompts),
               "--output_file", str(output), "--max_new_tokens", "48", "--batch_size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (output.exists() and output.read_text().count("\n") >= 1):
        assert first.poll() is None and time.time() < deadline, "the first process ended before it wrote a line"
        time.sleep(0.05)
    second = run_script(*command[1:])
    assert first.poll() is None, "the first process finished before the second started: nothing was tested"
    first.wait(timeout=600)
    assert second.returncode == 2 and "is being written by another inference.py process" in second.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert first.returncode == 0 and len(lines) == 400 and len({row["id"] for row in lines}) == 400
    assert not (tmp_path / ".gens.jsonl.lock").exists()


def test_merge_states_its_precision(tiny_model, tiny_data, tmp_path):
    run = tmp_path / "run"
    assert run_script(*training_args(tiny_model, tiny_data, run, "--max_steps", "1", "--val_set_size", "8")).returncode == 0
    merged = run_script("-m", "alpaca_qlora.merge", "--adapter", str(run), "--output_dir", str(tmp_path / "merged"), "--dtype", "fp32")
    assert merged.returncode == 0, merged.stderr[-2000:]
    compute = json.loads((run / "run_config.json").read_text())["plan"]["compute_dtype"]  # bf16 or fp32, by the CPU
    assert "the base model itself is unchanged" in merged.stdout and f"trained with nf4 base, {compute} compute" in merged.stdout
    info = json.loads((tmp_path / "merged" / "merge_info.json").read_text())
    assert info["trained_with"] == f"nf4 base, {compute} compute" and "full-precision base" in info["note"]
    again = run_script("-m", "alpaca_qlora.merge", "--adapter", str(run), "--output_dir", str(tmp_path / "merged"), "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_bf16_compute_trains_on_a_16bit_and_a_4bit_base(quantization, tiny_model, tiny_data, tmp_path):
    """--compute_dtype bf16 on the CPU: a bf16 base (plain LoRA) and an NF4 base both train and lower the held-out
    loss (a bf16 output layer once met the fp32 hidden states of the chunked loss, outside autocast)."""
    run = tmp_path / "run"
    result = run_script(*training_args(tiny_model, tiny_data, run, "--max_steps", "3", "--val_set_size", "16",
                                       "--quantization", quantization, "--compute_dtype", "bf16"))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "eval_results.json").read_text())
    assert results["after_training"]["eval_loss"] < results["before_training"]["eval_loss"]
