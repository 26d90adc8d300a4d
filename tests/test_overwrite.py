"""Every `--overwrite` replaces only what its own command wrote: a user's file beside the output survives byte for
byte, the command's own files are replaced. One test per door (merge, teacher, scoring; training's
--overwrite_output_dir is in test_everyday.py), each through the real entry point."""

from __future__ import annotations

import json

import pytest

from alpaca_qlora.cli import UserError
from conftest import run_script

USER_NOTES = "my eval notes\nmerged on Tuesday: looks good\n".encode("utf-8") + b"\xff\x00 raw bytes"


def add_user_files(folder):
    """A user's own file and folder, put beside a command's output."""
    (folder / "my_eval_notes.md").write_bytes(USER_NOTES)
    (folder / "mine").mkdir()
    (folder / "mine" / "ratings.jsonl").write_bytes(USER_NOTES)


def assert_user_files_intact(folder):
    assert (folder / "my_eval_notes.md").read_bytes() == USER_NOTES
    assert (folder / "mine" / "ratings.jsonl").read_bytes() == USER_NOTES


# ---------------------------------------------------------------------------------------------
# Merge
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def adapter(tiny_model, tmp_path):
    """A LoRA adapter on the tiny Llama, with non-zero updates (built here, not trained)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.1)
    path = tmp_path / "adapter"
    model.save_pretrained(path)
    return path


def merge(adapter, output, *extra):
    return run_script("-m", "alpaca_qlora.merge", "--adapter", str(adapter), "--output_dir", str(output), *extra)


def test_merge_overwrite_keeps_the_users_files(adapter, tmp_path):
    out = tmp_path / "merged"
    first = merge(adapter, out, "--dtype", "fp32")
    assert first.returncode == 0, first.stderr[-2000:]
    fp32_weights = (out / "model.safetensors").read_bytes()
    add_user_files(out)
    (tmp_path / ".merged.merging-dead").mkdir()  # the aside folder of a merge killed before it moved in
    (tmp_path / ".merged.merging-dead" / "model.safetensors").write_bytes(b"half")

    again = merge(adapter, out, "--dtype", "bf16", "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert_user_files_intact(out)
    info = json.loads((out / "merge_info.json").read_text())
    assert info["dtype"] == "bf16" and (out / "model.safetensors").read_bytes() != fp32_weights
    assert "my_eval_notes.md" not in info["files"] and "model.safetensors" in info["files"]
    assert sorted(p.name for p in out.iterdir()) == sorted(info["files"] + ["my_eval_notes.md", "mine"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]  # no aside folder left, the dead one gone


def test_merge_overwrite_of_a_folder_that_does_not_list_its_files_is_refused(tmp_path):
    """A merge_info.json without the list of the merge's files (an older version wrote it): what is the merge's and
    what is the user's cannot be told apart, so nothing is deleted."""
    from alpaca_qlora.training.merge import main as merge_main

    out = tmp_path / "merged"
    out.mkdir()
    (out / "merge_info.json").write_text(json.dumps({"dtype": "bf16"}))
    add_user_files(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(UserError) as error:
        merge_main(["--adapter", str(tmp_path / "adapter"), "--output_dir", str(out), "--overwrite"])
    assert str(error.value) == (f"--overwrite: {out / 'merge_info.json'} does not list the files the merge wrote (an older "
                                "version wrote it); nothing was changed: remove the merged model yourself or choose "
                                "another --output_dir")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------------------------
def test_teacher_overwrite_keeps_the_users_files(tiny_model, tmp_path):
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps({"id": f"p{i}", "text": text}) + "\n" for i, text in enumerate(
        ["The bakery sells rye bread every morning.", "The river trail is closed until May."])))
    templates = tmp_path / "templates.yaml"
    templates.write_text(json.dumps({"name": "t", "fixed_questions": ["Is this post allowed here?"]}))
    out = tmp_path / "qa"
    argv = ["-m", "alpaca_qlora.teacher", "--teacher", str(tiny_model), "--documents", str(posts), "--templates",
            str(templates), "--output_dir", str(out), "--max_new_tokens", "6", "--questions_per_source", "1",
            "--heldout", "0", "--teacher_prompt_template", "alpaca", "--min_answer_words", "0"]
    first = run_script(*argv, env={"OMP_NUM_THREADS": "1"})
    assert first.returncode == 0, first.stderr[-2000:]
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    add_user_files(out)
    (out / "answers.generations.jsonl").write_text("")  # the command's own files are replaced, not resumed
    (out / "train.jsonl").write_text("stale\n")

    again = run_script(*argv, "--overwrite", env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    assert_user_files_intact(out)
    now = {p.name: p.read_bytes() for p in out.iterdir() if p.name not in ("my_eval_notes.md", "mine")}
    assert sorted(now) == sorted(written)
    for name in written:  # the same files again; the generation lines differ only in their timings
        if name.endswith(".generations.jsonl"):
            assert without_timings(now[name]) == without_timings(written[name]), name
        else:
            assert now[name] == written[name], name


def without_timings(lines: bytes) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines.splitlines()]


# ---------------------------------------------------------------------------------------------
# Scoring (evaluate_metrics.py; the study and the moderation experiment write their scores through it)
# ---------------------------------------------------------------------------------------------
def test_scoring_overwrite_keeps_the_users_files_and_removes_its_stale_aside_folder(tmp_path):
    gens = tmp_path / "gens.jsonl"
    gens.write_text("".join(json.dumps({"id": i, "instruction": f"Q{i}?", "input": "", "reference": f"the answer is {i}",
                                        "prediction": f"an answer is {i}", "settings": {"temperature": 0.7},
                                        "base_model": "m", "adapter": None}) + "\n" for i in range(6)))
    out = tmp_path / "metrics"
    argv = ["evaluate_metrics.py", str(gens), "--output_dir", str(out), "--bertscore_model", "minilm",
            "--bootstrap", "50", "--no_progress"]
    first = run_script(*argv)
    assert first.returncode == 0, first.stderr[-2000:]
    written = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "metrics.png"}
    add_user_files(out)
    (out / "metrics.md").write_text("stale")
    (out / ".report-dead").mkdir()  # the aside folder of a scoring killed while writing
    (out / ".report-dead" / "metrics.csv").write_text("half")

    again = run_script(*argv, "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert_user_files_intact(out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in written} == written
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, "metrics.png", "my_eval_notes.md", "mine"])


def test_study_scoring_always_overwrites_and_keeps_the_users_files(tmp_path):
    """The study rescores into results/scores on every run (--overwrite, in this process): its own files only."""
    from alpaca_qlora.scoring.metrics import MetricConfig, load_scorers
    from alpaca_qlora.study.scores import score_files

    gens = tmp_path / "step-5.jsonl"
    gens.write_text("".join(json.dumps({"id": i, "instruction": f"Q{i}?", "input": "", "reference": f"the answer is {i}",
                                        "prediction": f"an answer is {i}", "settings": {"temperature": 0.7},
                                        "base_model": "m", "adapter": None}) + "\n" for i in range(4)))
    scorers = load_scorers(MetricConfig(bertscore_model="minilm", bootstrap=20, no_progress=True))
    out = tmp_path / "results" / "scores"
    score_files({"step-5": gens}, [], scorers, out)
    written = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "metrics.png"}
    add_user_files(out)
    score_files({"step-5": gens}, [], scorers, out)
    assert_user_files_intact(out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in written} == written
