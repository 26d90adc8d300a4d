"""NEFTune per example: each example's noise is scaled by its own length, alpha / sqrt(L d), in packed rows too
(transformers' hook scales by the row, which gives each of k packed examples about 1/sqrt(k) of its noise)."""

from __future__ import annotations

import json
import math

import torch
from transformers.integrations.neftune import neftune_post_forward_hook

from alpaca_qlora.training.collators import PackedCollator, PaddedCollator
from alpaca_qlora.training.neftune import PerExampleNEFTune, example_lengths
from conftest import run_script, training_args

ALPHA, WIDTH = 5.0, 256
LENGTHS = [3, 40, 97, 20]  # one packed row of four examples (160 tokens), then its padding tail


def examples(lengths):
    return [{"input_ids": [7] * n, "labels": [7] * n} for n in lengths]


def packed_row(lengths, pad=0):
    """One row laid out as PackedCollator lays it: examples side by side, position ids restarting at 0 for each,
    then the padding tail as one more sequence."""
    positions = [p for n in lengths for p in range(n)] + list(range(pad))
    return {"input_ids": torch.full((1, len(positions)), 7), "position_ids": torch.tensor([positions])}


def measured_noise(hook, batch, embedding):
    """The noise the hook adds to each position's embedding: hooked output minus the plain embedding."""
    embedding.train()
    plain = embedding.weight[batch["input_ids"]]
    handle = embedding.register_forward_hook(hook)
    try:
        noisy = embedding(batch["input_ids"])
    finally:
        handle.remove()
    return (noisy - plain).detach()


def test_example_lengths_of_packed_and_padded_batches():
    lengths = example_lengths(packed_row(LENGTHS, pad=10))[0].tolist()
    assert lengths == [n for n in LENGTHS for _ in range(n)] + [10] * 10  # the padding tail: a sequence of its own
    packed = PackedCollator(pad_token_id=0, max_row_length=100)(examples(LENGTHS))  # the collator's own rows
    per_token = example_lengths(packed)
    real = packed["labels"] != -100
    assert sorted(per_token[real].tolist()) == sorted(n for n in LENGTHS for _ in range(n))
    padded = PaddedCollator(pad_token_id=0)(examples([3, 9]))
    assert example_lengths(padded).tolist() == [[3.0] * 9, [9.0] * 9]


def test_each_packed_example_gets_the_noise_of_its_own_length():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(16, WIDTH)
    packed = packed_row(LENGTHS)
    hook = PerExampleNEFTune(ALPHA)
    hook.lengths = example_lengths(packed)
    noise = measured_noise(hook, packed, embedding)[0]
    start = 0
    for n in LENGTHS:
        part = noise[start:start + n].abs()
        bound = ALPHA / math.sqrt(n * WIDTH)
        assert float(part.max()) <= bound * (1 + 1e-6)
        assert float(part.max()) > 0.98 * bound  # n x 256 uniform draws reach near their bound
        assert abs(float(part.mean()) / bound - 0.5) < 0.05  # |U(-b, b)| has mean b/2
        start += n
    # transformers' hook on the same row: every example gets the row's bound alpha / sqrt(160 d)
    embedding.neftune_noise_alpha = ALPHA
    row_noise = measured_noise(neftune_post_forward_hook, packed, embedding)[0]
    assert float(row_noise.abs().max()) <= ALPHA / math.sqrt(sum(LENGTHS) * WIDTH) * (1 + 1e-6)
    # the 3-token example: ours sqrt(160 / 3) = 7.3 times transformers'
    assert float(noise[:3].abs().mean()) / float(row_noise[:3].abs().mean()) > 6


def test_no_noise_outside_training_or_without_lengths():
    embedding = torch.nn.Embedding(16, WIDTH)
    batch = PackedCollator(pad_token_id=0, max_row_length=None)(examples([4, 5]))
    hook = PerExampleNEFTune(ALPHA)
    assert float(measured_noise(hook, batch, embedding).abs().max()) == 0  # no lengths set
    hook.lengths = example_lengths(batch)
    embedding.eval()
    handle = embedding.register_forward_hook(hook)
    assert torch.equal(embedding(batch["input_ids"]), embedding.weight[batch["input_ids"]])
    handle.remove()


def test_training_with_neftune_uses_the_per_example_hook(tiny_model, tiny_data, tmp_path):
    """The plan says so, and the noise changes training (the first logged loss differs from a run without it)."""
    losses = {}
    for name, extra in (("plain", []), ("neftune", ["--neftune_noise_alpha", "5"])):
        out = tmp_path / name
        result = run_script(*training_args(tiny_model, tiny_data, out, "--max_steps", "2", "--logging_steps", "1",
                                           "--val_set_size", "0", *extra), env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        losses[name] = [row["loss"] for row in rows if "loss" in row]
        if name == "neftune":
            assert "NEFTune: alpha 5.0: each example's noise scaled by its own length" in result.stdout + result.stderr
    assert len(losses["plain"]) == len(losses["neftune"]) == 2
    assert losses["plain"][0] != losses["neftune"][0]
