"""Bad input, across the three scripts and merge: one line `error: ...` naming the file, record and field or the
flag, exit code 2, no traceback, and nothing written or modified (every file under the test's folders is
compared byte for byte before and after)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from alpaca_qlora.cli import run_cli
from alpaca_qlora.data.synthetic import build_tiny_llama
from alpaca_qlora.training.merge import main as merge_main
from alpaca_qlora.training.train import main as train_main
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
import evaluate_metrics  # noqa: E402
import inference  # noqa: E402

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}


# ---------------------------------------------------------------------------------------------
# The world each case runs in
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model, tiny_records):
    """Files the cases point at: data, a finished run, generations, a second model of another shape."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data.json"
    data.write_text(json.dumps(tiny_records[:60]))
    run = root / "run"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        train_main(["--base_model", str(tiny_model), "--data_path", str(data), "--output_dir", str(run), "--max_steps", "2",
                    "--val_set_size", "8", "--per_device_train_batch_size", "4", "--save_strategy", "steps",
                    "--save_steps", "1", "--logging_steps", "1", "--max_seq_length", "128"])
    other = build_tiny_llama(root / "other_model", tiny_records[:50], hidden_size=32, intermediate_size=64)
    gens = root / "gens.jsonl"
    gens.write_text("".join(json.dumps({"id": i, "instruction": "q", "input": "", "reference": "a b c", "prediction": "a b",
                                        "settings": {}, "base_model": "m", "adapter": None}) + "\n" for i in range(3)))
    return {"root": root, "model": str(tiny_model), "data": str(data), "run": str(run), "other": str(other), "gens": str(gens)}


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def make(root: Path, name: str, content) -> str:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return str(path)


def copy_run(world, root: Path, name: str = "run_copy") -> Path:
    target = root / name
    shutil.copytree(world["run"], target)
    return target


# ---------------------------------------------------------------------------------------------
# The cases: (id, script, argv builder, expected text in the error line)
# ---------------------------------------------------------------------------------------------
def train_args(w, t, *extra, data=None, output=None):
    return ["--base_model", w["model"], "--data_path", data or w["data"], "--output_dir", output or str(t / "out"),
            "--max_steps", "1", "--max_seq_length", "128", "--val_set_size", "8", "--per_device_train_batch_size", "4", *extra]


def config_file(t, text):
    return make(t, "run.yaml", text)


def foreign_folder(t):
    make(t, "proj/thesis.tex", "my thesis")
    return str(t / "proj")


def run_with_ratings(w, t):
    run = copy_run(w, t)
    make(run, "ratings.jsonl", {"id": 1, "rating": 5, "prediction": "x"})
    return str(run)


def broken_config_model(w, t):
    model = t / "bad_model"
    shutil.copytree(w["model"], model)
    config = json.loads((model / "config.json").read_text())
    config["hidden_size"] = "sixty-four"
    (model / "config.json").write_text(json.dumps(config))
    return str(model)


def adapter_with(w, t, change):
    run = copy_run(w, t)
    change(run)
    return str(run)


def list_adapter_config(run):
    (run / "adapter_config.json").write_text("[1, 2]")


def corrupt_weights(run):
    (run / "adapter_model.safetensors").write_bytes(b"\x00" * 64)


def run_checkpoint(t, init="pissa", base="base-model"):
    """A run folder made by hand, with no training: its run_config.json's LoRA initialisation and a checkpoint-1
    folder whose adapter_config.json names `base`."""
    make(t, f"{init}_run/run_config.json", {"lora": {"init_lora_weights": init}})
    return str(Path(make(t, f"{init}_run/checkpoint-1/adapter_config.json", {"base_model_name_or_path": base})).parent)


def prompts(t, records=None, raw=None, name="prompts.jsonl"):
    if raw is not None:
        return make(t, name, raw)
    return make(t, name, "".join(json.dumps(r) + "\n" for r in (records or [GOOD, {**GOOD, "instruction": "Bye."}])))


def batch_args(w, t, *extra, output=None, prompts_path=None):
    return ["--base_model", w["model"], "--prompts_file", prompts_path or prompts(t), "--output_file",
            output or str(t / "gens_out.jsonl"), "--max_new_tokens", "2", *extra]


def torn_generations_with_other_settings(w, t):
    path = t / "old.jsonl"
    line = {"id": 0, "instruction": "Say hi.", "input": "", "reference": "Hi.", "prediction": "x", "settings": {"top_k": 3},
            "base_model": w["model"], "adapter": None, "precision": {}}
    path.write_text(json.dumps(line) + "\n" + '{"id": 1, "instr')
    return str(path)


TRAIN_CASES = [
    ("train-non-utf8-json", lambda w, t: train_args(w, t, data=make(t, "d.json", b'[{"instruction": "\xff"}]')), "not valid UTF-8"),
    ("train-non-utf8-jsonl", lambda w, t: train_args(w, t, data=make(t, "d.jsonl", json.dumps(GOOD).encode() + b"\n\xfe\n")), "d.jsonl:2: not valid UTF-8"),
    ("train-broken-json", lambda w, t: train_args(w, t, data=make(t, "d.json", "[{")), "d.json:1: not valid JSON"),
    ("train-broken-jsonl-line", lambda w, t: train_args(w, t, data=make(t, "d.jsonl", json.dumps(GOOD) + "\n{oops\n")), "d.jsonl:2: not valid JSON"),
    ("train-not-a-list", lambda w, t: train_args(w, t, data=make(t, "d.json", {"instruction": "a"})), "top level must be a JSON list"),
    ("train-record-not-object", lambda w, t: train_args(w, t, data=make(t, "d.json", [GOOD, ["x"]])), "record 1: expected an object"),
    ("train-missing-instruction", lambda w, t: train_args(w, t, data=make(t, "d.json", [GOOD, {"output": "b"}])), "record 1: missing field 'instruction'"),
    ("train-output-not-string", lambda w, t: train_args(w, t, data=make(t, "d.json", [GOOD, {**GOOD, "output": 3}])), "record 1: field 'output' must be a string"),
    ("train-output-missing", lambda w, t: train_args(w, t, data=make(t, "d.json", [GOOD, {"instruction": "a"}])), "record 1: missing field 'output'"),
    ("train-empty-instruction", lambda w, t: train_args(w, t, data=make(t, "d.json", [{**GOOD, "instruction": " "}])), "record 0: field 'instruction' is empty"),
    ("train-id-not-scalar", lambda w, t: train_args(w, t, data=make(t, "d.json", [{**GOOD, "id": [1]}])), "record 0: field 'id' must be a string or an integer"),
    ("train-txt-data", lambda w, t: train_args(w, t, data=make(t, "d.txt", "hello")), "unsupported data file type '.txt'"),
    ("train-data-is-dir", lambda w, t: train_args(w, t, data=str(t)), "is a directory"),
    ("train-data-missing", lambda w, t: train_args(w, t, data=str(t / "nope.json")), "nope.json: no such file"),
    ("train-field-mapping-missing", lambda w, t: train_args(w, t, "--instruction_field", "question"), "missing field 'question'"),
    ("train-lr-negative", lambda w, t: train_args(w, t, "--learning_rate", "-0.001"), "--learning_rate must be >= 0"),
    ("train-lr-nan", lambda w, t: train_args(w, t, "--learning_rate", "nan"), "--learning_rate must be >= 0, got nan"),
    ("train-batch-zero", lambda w, t: train_args(w, t, "--per_device_train_batch_size", "0"), "--per_device_train_batch_size must be > 0"),
    ("train-batch-negative", lambda w, t: train_args(w, t, "--per_device_train_batch_size", "-4"), "--per_device_train_batch_size must be > 0"),
    ("train-batch-float", lambda w, t: train_args(w, t, "--per_device_train_batch_size", "2.5"), "invalid int value: '2.5'"),
    ("train-yaml-float-for-int", lambda w, t: train_args(w, t, "--config", config_file(t, "per_device_train_batch_size: 2.5\n")), "run.yaml: --per_device_train_batch_size: invalid int value"),
    ("train-yaml-list-for-number", lambda w, t: train_args(w, t, "--config", config_file(t, "learning_rate: [1, 2]\n")), "run.yaml: --learning_rate: invalid float value"),
    ("train-yaml-unknown-key", lambda w, t: train_args(w, t, "--config", config_file(t, "lerning_rate: 0.1\n")), "run.yaml: unknown flag --lerning_rate; did you mean --learning_rate?"),
    ("train-yaml-not-mapping", lambda w, t: train_args(w, t, "--config", config_file(t, "- a\n- b\n")), "expected a mapping of option names"),
    ("train-yaml-broken", lambda w, t: train_args(w, t, "--config", config_file(t, "a: [\n")), "run.yaml: cannot parse"),
    ("train-yaml-missing", lambda w, t: train_args(w, t, "--config", str(t / "none.yaml")), "none.yaml: no such file"),
    ("train-unknown-flag", lambda w, t: train_args(w, t, "--bogus", "1"), "unknown flag --bogus"),
    ("train-misspelled-flag", lambda w, t: train_args(w, t, "--lerning_rate", "1e-3"), "did you mean --learning_rate?"),
    ("train-bad-choice", lambda w, t: train_args(w, t, "--quantization", "nf3"), "--quantization: invalid choice"),
    ("train-seq-length-1", lambda w, t: train_args(w, t, "--max_seq_length", "1"), "--max_seq_length must be at least 2"),
    ("train-dropout", lambda w, t: train_args(w, t, "--lora_dropout", "1.5"), "--lora_dropout must be in [0, 1)"),
    ("train-val-negative", lambda w, t: train_args(w, t, "--val_set_size", "-1"), "--val_set_size must be >= 0"),
    ("train-max-samples-zero", lambda w, t: train_args(w, t, "--max_samples", "0"), "--max_samples must be > 0"),
    ("train-val-too-large", lambda w, t: train_args(w, t, "--val_set_size", "500"), "--val_set_size 500.0 leaves no training records"),
    ("train-val-default-too-large", lambda w, t: ["--base_model", w["model"], "--data_path", w["data"], "--output_dir", str(t / "out")], "--val_set_size 2000 leaves no training records out of 60"),
    ("train-max-steps-zero", lambda w, t: train_args(w, t, "--max_steps", "0"), "--max_steps must be > 0"),
    ("train-accumulation-zero", lambda w, t: train_args(w, t, "--gradient_accumulation_steps", "0"), "--gradient_accumulation_steps must be > 0"),
    ("train-output-is-file", lambda w, t: train_args(w, t, output=make(t, "file.txt", "x")), "exists and is not a folder"),
    ("train-output-parent-is-file", lambda w, t: train_args(w, t, output=str(Path(make(t, "file.txt", "x")) / "run")), "is a file, not a folder"),
    ("train-output-not-empty", lambda w, t: train_args(w, t, output=foreign_folder(t)), "is not empty; pass --overwrite_output_dir"),
    ("train-overwrite-foreign-folder", lambda w, t: train_args(w, t, "--overwrite_output_dir", output=foreign_folder(t)), "is not a run folder of training_script.py (it holds thesis.tex)"),
    ("train-overwrite-keeps-ratings", lambda w, t: train_args(w, t, "--overwrite_output_dir", output=run_with_ratings(w, t)), "holds files training did not write (ratings.jsonl)"),
    ("train-resume-nothing", lambda w, t: train_args(w, t, "--resume_from_checkpoint", "true", output=str(t / "empty")), "no checkpoint-* folder"),
    ("train-resume-other-lora-r", lambda w, t: train_args(w, t, "--resume_from_checkpoint", "true", "--lora_r", "4", output=str(copy_run(w, t))), "--lora_r is 4 here but 16"),
    ("train-resume-other-base", lambda w, t: ["--base_model", w["other"], "--data_path", w["data"], "--output_dir", str(copy_run(w, t)), "--resume_from_checkpoint", "true", "--max_steps", "3", "--val_set_size", "8", "--per_device_train_batch_size", "4", "--max_seq_length", "128"], "--base_model is"),
    ("train-base-missing", lambda w, t: ["--base_model", str(t / "nowhere"), "--data_path", w["data"], "--output_dir", str(t / "out"), "--val_set_size", "8"], "no such folder"),
    ("train-base-bad-config", lambda w, t: ["--base_model", broken_config_model(w, t), "--data_path", w["data"], "--output_dir", str(t / "out"), "--max_steps", "1", "--val_set_size", "8"], "cannot read the configuration of"),
    ("train-int8-on-cpu", lambda w, t: train_args(w, t, "--quantization", "int8"), "--quantization int8 needs a CUDA GPU"),
    ("train-target-modules-unknown", lambda w, t: train_args(w, t, "--lora_target_modules", "nonexistent_proj", "--val_set_size", "4"), "--lora_target_modules nonexistent_proj"),
    ("train-gguf-missing", lambda w, t: ["--base_model", str(t / "m.gguf"), "--data_path", w["data"], "--output_dir", str(t / "out"), "--val_set_size", "8"], "no such GGUF file"),
]

INFERENCE_CASES = [
    ("infer-temperature-nan", lambda w, t: batch_args(w, t, "--temperature", "nan"), "--temperature must be a finite number"),
    ("infer-repetition-penalty-nan", lambda w, t: batch_args(w, t, "--repetition_penalty", "nan"), "--repetition_penalty must be a finite number"),
    ("infer-top-p", lambda w, t: batch_args(w, t, "--top_p", "1.5"), "--top_p must be in (0, 1]"),
    ("infer-top-k", lambda w, t: batch_args(w, t, "--top_k", "-1"), "--top_k must be >= 0"),
    ("infer-knob-without-sampling", lambda w, t: batch_args(w, t, "--top_k", "10", "--do_sample", "false"), "--top_k has no effect with --do_sample false"),
    ("infer-misspelled-flag", lambda w, t: batch_args(w, t, "--temprature", "0.7"), "did you mean --temperature?"),
    ("infer-unknown-flag", lambda w, t: batch_args(w, t, "--bogus", "1"), "unknown flag --bogus"),
    ("infer-output-without-prompts", lambda w, t: ["--base_model", w["model"], "--instruction", "hi", "--output_file", str(t / "x.jsonl")], "--output_file is for batch mode"),
    ("infer-prompts-without-output", lambda w, t: ["--base_model", w["model"], "--prompts_file", prompts(t)], "needs --output_file"),
    ("infer-prompts-non-utf8", lambda w, t: batch_args(w, t, prompts_path=prompts(t, raw=b'{"instruction": "\xff"}\n')), "prompts.jsonl:1: not valid UTF-8"),
    ("infer-prompts-duplicate-ids", lambda w, t: batch_args(w, t, prompts_path=prompts(t, [{**GOOD, "id": 1}, {**GOOD, "id": 1}])), "record 1: duplicate id 1"),
    ("infer-prompts-no-instruction", lambda w, t: batch_args(w, t, prompts_path=prompts(t, [{"input": "x"}])), "record 0: missing field 'instruction'"),
    ("infer-output-is-prompts", lambda w, t: batch_args(w, t, output=str(t / "same.jsonl"), prompts_path=prompts(t, name="same.jsonl")), "is the --prompts_file"),
    ("infer-output-is-user-data", lambda w, t: batch_args(w, t, output=make(t, "data.json", [GOOD])), "not a generations file of inference.py"),
    ("infer-output-is-notes", lambda w, t: batch_args(w, t, "--overwrite", output=make(t, "notes.txt", "my notes\nline two")), "not a generations file of inference.py"),
    ("infer-output-is-one-record-no-newline", lambda w, t: batch_args(w, t, output=make(t, "one.jsonl", json.dumps({"id": 7, **GOOD}))), "its last line is not a generation line"),
    ("infer-torn-output-other-settings", lambda w, t: batch_args(w, t, output=torn_generations_with_other_settings(w, t)), "written with the base at another precision"),
    ("infer-output-parent-is-file", lambda w, t: batch_args(w, t, output=str(Path(make(t, "f.txt", "x")) / "g.jsonl")), "is a file, not a folder"),
    ("infer-output-is-folder", lambda w, t: batch_args(w, t, output=str(t)), "is a folder"),
    ("infer-adapter-config-list", lambda w, t: ["--adapter", adapter_with(w, t, list_adapter_config), "--instruction", "hi"], "expected a JSON object"),
    ("infer-adapter-corrupt", lambda w, t: ["--adapter", adapter_with(w, t, corrupt_weights), "--instruction", "hi", "--max_new_tokens", "2"], "cannot put the adapter"),
    ("infer-adapter-other-base", lambda w, t: ["--adapter", w["run"], "--base_model", w["other"], "--instruction", "hi", "--max_new_tokens", "2"], "trained for another base model"),
    ("infer-adapter-missing", lambda w, t: ["--adapter", str(t / "nope"), "--instruction", "hi"], "no such folder"),
    ("infer-pissa-checkpoint", lambda w, t: ["--adapter", run_checkpoint(t, base=w["model"]), "--instruction", "hi"],
     "checkpoint-1: a checkpoint of a --init_lora_weights pissa run"),
    ("infer-sweep-bad-value", lambda w, t: batch_args(w, t, "--sweep", "top_k=1,a"), "'a' is not an integer"),
    ("infer-sweep-unknown", lambda w, t: batch_args(w, t, "--sweep", "beams=1,2"), "unknown setting 'beams'"),
    ("infer-sweep-nan", lambda w, t: batch_args(w, t, "--sweep", "temperature=0.5,nan"), "temperature=nan: must be a finite number"),
    ("infer-rate-with-instruction", lambda w, t: ["--base_model", w["model"], "--instruction", "hi", "--rate"], "for interactive mode"),
    ("infer-ratings-file-not-ratings", lambda w, t: ["--base_model", w["model"], "--ratings_file", make(t, "r.jsonl", json.dumps(GOOD) + "\n")], "not a rating"),
    ("infer-batch-size-zero", lambda w, t: batch_args(w, t, "--batch_size", "0"), "--batch_size must be >= 1"),
]

EVALUATE_CASES = [
    ("eval-non-utf8", lambda w, t: [make(t, "g.jsonl", b'{"prediction": "\xff"}\n'), "--output_dir", str(t / "m")], "g.jsonl:1: not valid UTF-8"),
    ("eval-missing-prediction", lambda w, t: [make(t, "g.jsonl", json.dumps({"reference": "a"}) + "\n"), "--output_dir", str(t / "m")], "missing field 'prediction'"),
    ("eval-bootstrap-zero", lambda w, t: [w["gens"], "--output_dir", str(t / "m"), "--bootstrap", "0"], "--bootstrap must be at least 1"),
    ("eval-misspelled-flag", lambda w, t: [w["gens"], "--output_dir", str(t / "m"), "--bootstrp", "10"], "did you mean --bootstrap?"),
    ("eval-output-is-file", lambda w, t: [w["gens"], "--output_dir", make(t, "m", "x")], "exists and is not a folder"),
    ("eval-bad-rating", lambda w, t: [w["gens"], "--output_dir", str(t / "m"), "--ratings", make(t, "r.jsonl", json.dumps({"id": 0, "rating": 7}) + "\n")], "rating must be an integer from 1 to 5"),
    ("eval-no-references", lambda w, t: [make(t, "g.jsonl", json.dumps({"id": 0, "prediction": "a"}) + "\n"), "--output_dir", str(t / "m")], "none of its 1 rows has a reference"),
]

MERGE_CASES = [
    ("merge-adapter-missing", lambda w, t: ["--adapter", str(t / "nope"), "--output_dir", str(t / "out")], "no such folder"),
    ("merge-pissa-checkpoint", lambda w, t: ["--adapter", run_checkpoint(t), "--base_model", w["model"], "--output_dir",
                                             str(t / "out")], "its weights apply to the base as pissa modified it"),
    ("merge-adapter-config-list", lambda w, t: ["--adapter", adapter_with(w, t, list_adapter_config), "--output_dir", str(t / "out")], "expected a JSON object"),
    ("merge-adapter-corrupt", lambda w, t: ["--adapter", adapter_with(w, t, corrupt_weights), "--output_dir", str(t / "out")], "cannot put the adapter"),
    ("merge-other-base", lambda w, t: ["--adapter", w["run"], "--base_model", w["other"], "--output_dir", str(t / "out")], "trained for another base model"),
    ("merge-output-is-file", lambda w, t: ["--adapter", w["run"], "--output_dir", make(t, "out", "x")], "exists and is not a folder"),
    ("merge-output-foreign", lambda w, t: ["--adapter", w["run"], "--output_dir", foreign_folder(t), "--overwrite"], "is not a merged model of this command"),
    ("merge-misspelled-flag", lambda w, t: ["--adapter", w["run"], "--output_dir", str(t / "out"), "--dtipe", "bf16"], "did you mean --dtype?"),
    ("merge-bad-dtype", lambda w, t: ["--adapter", w["run"], "--output_dir", str(t / "out"), "--dtype", "fp8"], "--dtype: invalid choice"),
]

MAINS = {"train": train_main, "infer": inference.main, "eval": evaluate_metrics.main, "merge": merge_main}
CASES = TRAIN_CASES + INFERENCE_CASES + EVALUATE_CASES + MERGE_CASES


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id,build,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case_id, build, expected, world, tmp_path, capsys):
    argv = build(world, tmp_path)
    before = snapshot(tmp_path), snapshot(world["root"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: MAINS[case_id.split("-")[0]](argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2, err
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    assert expected in err[-1], err[-1]
    assert (snapshot(tmp_path), snapshot(world["root"])) == before


def test_only_a_pissa_runs_checkpoints_are_refused(tmp_path):
    """A PiSSA run's checkpoint holds the adapter before conversion (it applies to the modified base); its finished
    folder holds the converted one. Other runs' checkpoints, LoftQ's too (its adapter is never converted), load."""
    from alpaca_qlora.cli import UserError
    from alpaca_qlora.run_folder import adapter_base_model

    checkpoint = run_checkpoint(tmp_path)
    with pytest.raises(UserError) as refused:
        adapter_base_model(checkpoint)
    assert str(refused.value) == (
        f"--adapter {checkpoint}: a checkpoint of a --init_lora_weights pissa run ({tmp_path / 'pissa_run' / 'run_config.json'}): "
        "its weights apply to the base as pissa modified it, not to the base its adapter_config.json names; use the "
        f"finished run folder {tmp_path / 'pissa_run'}, which holds the converted adapter")
    make(tmp_path, "pissa_run/adapter_config.json", {"base_model_name_or_path": "base-model"})
    assert adapter_base_model(str(tmp_path / "pissa_run")) == "base-model"
    for init in ("default", "gaussian", "loftq"):
        assert adapter_base_model(run_checkpoint(tmp_path, init)) == "base-model"


def test_interactive_set_answers_errors_and_goes_on(world, tmp_path, monkeypatch, capsys):
    ratings = tmp_path / "ratings.jsonl"
    session = "/set temperature=nan\n/set repetition_penalty=nan\n/set top_k=10 do_sample=false\nAdd 2 and 3.\n/rate 4\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(session))
    inference.main(["--base_model", world["model"], "--max_new_tokens", "3", "--ratings_file", str(ratings)])
    out = capsys.readouterr().out
    assert "error: temperature=nan: must be a finite number" in out
    assert "error: repetition_penalty=nan: must be a finite number" in out
    assert "error: --top_k has no effect with --do_sample false" in out
    assert [json.loads(line)["rating"] for line in ratings.read_text().splitlines()] == [4]


def test_adapter_weights_unchanged_by_a_refused_resume(world, tmp_path):
    """The refused resume leaves the run exactly as it was: the adapter too (checked by value, not only bytes)."""
    run = copy_run(world, tmp_path)
    before = load_file(run / "adapter_model.safetensors")
    with pytest.raises(SystemExit):
        run_cli(lambda: train_main(train_args(world, tmp_path, "--resume_from_checkpoint", "true", "--lora_alpha", "8",
                                              output=str(run))))
    after = load_file(run / "adapter_model.safetensors")
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)
    save_file(after, tmp_path / "unused.safetensors")  # the file is a loadable safetensors file still
