"""Pinned numbers of a short QLoRA run, as torchtune pins its recipes: a change that moves them is a
behaviour change and must say so here.

4 steps of batch 8 on 80 records (16 held out), NF4, seed 3, learning rate 3e-3 without warm-up. The
values were recorded on an Intel Xeon with AVX512; forcing torch and oneDNN down to AVX2 moved them by
at most 2e-6, so the tolerance is 1e-4: far below what a changed batch, mask or loss would move.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_script, training_args

TOLERANCE = 1e-4
PATHS = {"packed": [], "padded": ["--packing", "false"]}

# path -> (training loss at steps 1-4, held-out loss before, after)
TINY = {
    "packed": ([6.232499, 6.205453, 6.118515, 6.119001], 6.221527, 6.102487),
    "padded": ([6.303174, 6.151253, 6.153203, 6.113908], 6.221526, 6.114426),
}
STORIES260K = {
    "packed": ([4.657625, 4.085766, 3.592330, 3.421967], 4.055287, 3.468968),
    "padded": ([3.796957, 3.854595, 3.824312, 4.413518], 4.055287, 3.424004),
}


def short_run(model, data, output, path: str) -> tuple[list[float], float, float]:
    result = run_script(*training_args(model, data, output, "--max_steps", "4", "--logging_steps", "1",
                                       "--val_set_size", "16", "--seed", "3", "--max_samples", "96", *PATHS[path]))
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    results = json.loads((output / "eval_results.json").read_text())
    losses = [row["loss"] for row in log if "loss" in row]
    return losses, results["before_training"]["eval_loss"], results["after_training"]["eval_loss"]


def assert_pinned(actual, expected) -> None:
    losses, before, after = actual
    pinned_losses, pinned_before, pinned_after = expected
    assert losses == pytest.approx(pinned_losses, abs=TOLERANCE)
    assert (before, after) == pytest.approx((pinned_before, pinned_after), abs=TOLERANCE)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_tiny_model_losses_are_pinned(path, tiny_model, tiny_data, tmp_path):
    assert_pinned(short_run(tiny_model, tiny_data, tmp_path / "run", path), TINY[path])


@pytest.mark.parametrize("path", sorted(PATHS))
def test_stories260k_losses_are_pinned(path, model_dir, alpaca_json, tmp_path):
    assert_pinned(short_run(model_dir, alpaca_json, tmp_path / "run", path), STORIES260K[path])
