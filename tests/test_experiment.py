"""The study command end to end on a tiny budget: every artifact is produced, and a rerun resumes."""

from __future__ import annotations

import json

import yaml

from conftest import run_script

FAST_STUDY = {
    "name": "tiny-fast",
    "budgets": [2, 4],
    "training": {"max_samples": 48, "val_set_size": 16, "per_device_train_batch_size": 4, "max_seq_length": 256,
                 "learning_rate": 3.0e-3, "logging_steps": 1},
    "eval_records": 12,
    "max_new_tokens": 16,
    "generation_batch_size": 12,
    "sweep": "top_k=1,40",
    "sweep_records": 6,
    "bertscore_model": "minilm",
    "bootstrap": 200,
}


def test_fast_study_produces_every_artifact_and_resumes(tiny_model, tiny_data, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({**FAST_STUDY, "base_model": str(tiny_model), "data_path": str(tiny_data),
                                      "run_dir": str(tmp_path / "run"), "results_dir": str(tmp_path / "results"),
                                      "assets_dir": str(tmp_path / "assets")}))
    command = ["-m", "alpaca_qlora.experiment", "--config", str(config)]
    result = run_script(*command, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = tmp_path / "results"
    report = (results / "report.md").read_text()
    for figure in ("learning_curve.png", "loss_curve.png", "sweep.png"):
        assert (results / figure).stat().st_size > 10_000, figure
        assert figure in report
        assert (tmp_path / "assets" / f"tiny-fast_{figure}").is_file()
    metrics = json.loads((results / "metrics.json").read_text())
    assert sorted(metrics["budgets"], key=int) == ["0", "2", "4"]
    assert all(metrics["budgets"][b]["n"] == 12 for b in metrics["budgets"])
    assert sorted(metrics["heldout_loss"], key=int) == ["0", "2", "4"]
    assert metrics["heldout_loss"]["4"] < metrics["heldout_loss"]["0"]
    assert len(metrics["comparisons"]) == 2 and all(c["n_shared"] == 12 for c in metrics["comparisons"])
    assert len(metrics["sweep"]) == 2 and all(g["n"] == 6 for g in metrics["sweep"])
    assert "p (paired bootstrap)" in report and "Held-out loss" in report

    rerun = run_script(*command, env={"OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("[skip]") == 7 and "[run]" not in rerun.stdout
    assert (results / "report.md").read_text() == report
