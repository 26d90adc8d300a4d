"""Seeded sampling per answer: a sampled answer depends on its seed and its prompt, never on the batch it is in.

transformers' `generate` draws every row of a batch from the one global generator, so an answer sampled in a
batch of 16 differs from the same prompt's answer in a batch of 64, or alone. Batch mode chooses its batches by
prompt length and batch size; to keep "same seed, same settings, same answer" whatever the batching, each row gets
a torch.Generator of its own. Written by hand because no library offers per-row generators in `generate` (it takes
no generator argument). The scores it draws from are shaped by transformers' own temperature, top-k and top-p
warpers, applied here first: `generate` appends the warpers it builds after every logits processor it is given, so
without this a processor of ours would draw from unwarped scores (it did, until 2026-12-06: temperature, top_k and
top_p had no effect on batch-mode sampling; found by a sweep whose top_k=10 and top_k=50 answers were identical).

Beam sampling (num_beams > 1 with sampling) draws across the beams of a row jointly inside `generate`; it keeps the
batch's seed (generate.batch_seed) and so depends on the batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def answer_seed(seed: int, record_id: Any) -> int:
    """The seed of one record's answer: from the setting's seed and the record's id alone (63 bits)."""
    digest = hashlib.sha256(f"{seed}:{json.dumps(record_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def samples_per_row(resolved: dict) -> bool:
    """Whether the rows of a batch can be sampled with generators of their own: sampling without beams."""
    return bool(resolved.get("do_sample")) and resolved.get("num_beams", 1) == 1


def sampling_warpers(resolved: dict) -> list:
    """transformers' warpers for the resolved temperature, top-k and top-p, in the order and under the conditions
    `generate` builds them (generation/utils.py, _get_logits_processor; no beams, so one token kept at least)."""
    warpers = []
    if resolved["temperature"] is not None and resolved["temperature"] != 1.0:
        warpers.append(TemperatureLogitsWarper(resolved["temperature"]))
    if resolved["top_k"] is not None and resolved["top_k"] != 0:
        warpers.append(TopKLogitsWarper(top_k=resolved["top_k"], min_tokens_to_keep=1))
    if resolved["top_p"] is not None and resolved["top_p"] < 1.0:
        warpers.append(TopPLogitsWarper(top_p=resolved["top_p"], min_tokens_to_keep=1))
    return warpers


class RowSeededSampling(LogitsProcessor):
    """The last logits processor: warps the processed scores (temperature, top-k, top-p, as `generate` would), draws
    each row's next token with the row's own generator, and leaves that token as the row's only finite score, so
    `generate`'s own warpers and multinomial draw (which uses the global generator) can only keep and pick it."""

    def __init__(self, generators: list[torch.Generator], warpers: list):
        self.generators = generators
        self.warpers = warpers

    @classmethod
    def seeded(cls, seeds: list[int], device, resolved: dict) -> "RowSeededSampling":
        return cls([torch.Generator(device=device).manual_seed(seed) for seed in seeds], sampling_warpers(resolved))

    def select(self, rows: list[int]) -> "RowSeededSampling":
        """The same generators, of the given rows only (the others' answers have ended)."""
        return RowSeededSampling([self.generators[row] for row in rows], self.warpers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probabilities = torch.softmax(scores.float(), dim=-1)
        tokens = torch.cat([torch.multinomial(row, 1, generator=generator)
                            for row, generator in zip(probabilities, self.generators)])
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, tokens[:, None], 0.0)
