"""Seeded sampling per answer: a sampled answer depends on its seed and its prompt, never on the batch it is in.

transformers' `generate` draws every row of a batch from the one global generator, so an answer sampled in a
batch of 16 differs from the same prompt's answer in a batch of 64, or alone. Batch mode chooses its batches by
prompt length and batch size; to keep "same seed, same settings, same answer" whatever the batching, each row gets
a torch.Generator of its own. Written by hand because no library offers per-row generators in `generate` (it takes
no generator argument); the draw itself is transformers' (its temperature, top-k and top-p processors run first,
unchanged).

Beam sampling (num_beams > 1 with sampling) draws across the beams of a row jointly inside `generate`; it keeps the
batch's seed (generate.batch_seed) and so depends on the batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from transformers import LogitsProcessor


def answer_seed(seed: int, record_id: Any) -> int:
    """The seed of one record's answer: from the setting's seed and the record's id alone (63 bits)."""
    digest = hashlib.sha256(f"{seed}:{json.dumps(record_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def samples_per_row(resolved: dict) -> bool:
    """Whether the rows of a batch can be sampled with generators of their own: sampling without beams."""
    return bool(resolved.get("do_sample")) and resolved.get("num_beams", 1) == 1


class RowSeededSampling(LogitsProcessor):
    """The last logits processor: draws each row's next token from the processed scores with the row's own
    generator and leaves that token as the row's only finite score, so `generate`'s own multinomial draw (which
    uses the global generator) can only pick it."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    @classmethod
    def seeded(cls, seeds: list[int], device) -> "RowSeededSampling":
        return cls([torch.Generator(device=device).manual_seed(seed) for seed in seeds])

    def select(self, rows: list[int]) -> "RowSeededSampling":
        """The same generators, of the given rows only (the others' answers have ended)."""
        return RowSeededSampling([self.generators[row] for row in rows])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probabilities = torch.softmax(scores.float(), dim=-1)
        tokens = torch.cat([torch.multinomial(row, 1, generator=generator)
                            for row, generator in zip(probabilities, self.generators)])
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, tokens[:, None], 0.0)
