"""Pinned numbers of a short QLoRA run, as torchtune pins its recipes: a change that moves them is a
behaviour change and must say so here.

4 steps of batch 8 on 80 records (16 held out), NF4, seed 3, learning rate 3e-3 without warm-up. The
values were recorded on an Intel Xeon with AVX512; forcing torch and oneDNN down to AVX2 moved them by
at most 2e-6, so the tolerance is 1e-4: far below what a changed batch, mask or loss would move.
The runs ask for fp32 compute: the automatic choice is bf16 4-bit layers on CPUs that multiply bf16 natively and
fp32 elsewhere, and the pins must hold on every CPU.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_script, training_args

TOLERANCE = 1e-4
PATHS = {"packed": [], "padded": ["--packing", "false"], "full_logits": ["--loss", "full_logits"]}

# path -> (training loss at steps 1-4, held-out loss before, after). "packed" is the default: packed rows and the
# chunked loss on labelled positions; "full_logits" the same rows with the model's own loss over every position;
# "padded" padded batches grouped by length.
# Re-pinned once (2026-12-01) when the held-out evaluation stopped drawing from the global random stream (a DataLoader
# did), which had shifted LoRA dropout masks and the length-grouped order of the training that followed; with that
# evaluation off, the old and the new code gave identical losses and gradient norms.
# Re-pinned again (2026-12-01) when LoRA dropout masks came from NumPy's PCG64 (--lora_dropout_rng pcg64, the CPU
# default): other masks from the same distribution; with --lora_dropout_rng torch the old pins are reproduced exactly.
# Re-pinned a third time (2026-12-02) when the PCG64 masks came from its raw 64-bit outputs read as four 16-bit
# numbers each (other masks, same distribution); the change to where() alone left every pin unmoved.
TINY = {
    "packed": ([6.232499, 6.206829, 6.119061, 6.119172], 6.221527, 6.103078),
    "padded": ([6.234565, 6.210011, 6.115610, 6.132527], 6.221527, 6.109759),
    "full_logits": ([6.232499, 6.206830, 6.119062, 6.119172], 6.221527, 6.103078),
}
STORIES260K = {
    "packed": ([4.657625, 4.086056, 3.593920, 3.426336], 4.055287, 3.464491),
    "padded": ([4.524585, 5.224419, 3.419551, 3.797503], 4.055287, 3.475306),
    "full_logits": ([4.657625, 4.086057, 3.593920, 3.426335], 4.055286, 3.464491),
}


def short_run(model, data, output, path: str) -> tuple[list[float], float, float]:
    result = run_script(*training_args(model, data, output, "--max_steps", "4", "--logging_steps", "1",
                                       "--val_set_size", "16", "--seed", "3", "--max_samples", "96", "--compute_dtype", "fp32",
                                       *PATHS[path]))
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
