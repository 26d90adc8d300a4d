"""A batch's common prompt beginning, computed once: the template's preamble is not run through the model per prompt.

Every Alpaca prompt starts with the same preamble ("Below is an instruction that describes a task. ..."), about
half of a short prompt's tokens; a chat template's system prompt is the same. Prefilling it for each prompt of a
batch is that much repeated work: on the CPU, where prefill is bound by arithmetic, it was as long as the decoding
of a 64-token answer for SmolLM2 (bench/bench_generation.py). Here the tokens that every prompt of the batch begins
with are run once, at batch size 1; their keys and values are copied to every row (DynamicCache's own
batch_repeat_interleave) and `generate` continues from that cache over each prompt's own tokens.

Layout: each row is [shared tokens, padding, own tokens], with the attention mask 0 on the padding. transformers
derives positions from the mask (its cumulative sum), so every prompt token keeps the position it has in the
prompt alone, exactly as with left padding; only the floating-point rounding of the shared part can differ (it is
computed in a batch of 1). bench/bench_generation.py compares the greedy answers with a plain left-padded script.

Written by hand because transformers' prefix re-use ("re-use a prompt cache") is documented for one prompt, not
for a padded batch. Used for text prompts decoded without beams (beam search reorders and expands the cache itself).
"""

from __future__ import annotations

import torch

# Below this many common tokens the saving does not pay for the extra forward call.
MIN_SHARED_TOKENS = 8


def shared_length(token_ids: list[list[int]]) -> int:
    """How many leading tokens every prompt has in common, leaving each prompt at least one token of its own
    (`generate` needs an uncached token per row to start from)."""
    shortest = min(len(ids) for ids in token_ids)
    length = 0
    while length < shortest - 1 and all(ids[length] == token_ids[0][length] for ids in token_ids):
        length += 1
    return length


def left_padded(token_ids: list[list[int]], pad_token_id: int, device) -> dict:
    """The usual layout: each prompt at the right, padding at the left."""
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def prefix_shared_inputs(model, token_ids: list[list[int]], pad_token_id: int, num_beams: int) -> dict:
    """`generate`'s inputs for a batch of tokenized prompts: with the shared beginning prefilled once when there is
    one worth it (two or more prompts, no beams), else left-padded."""
    device = next(model.parameters()).device
    shared = shared_length(token_ids) if len(token_ids) > 1 and num_beams == 1 else 0
    if shared < MIN_SHARED_TOKENS:
        return left_padded(token_ids, pad_token_id, device)
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([token_ids[0][:shared]], device=device), past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(len(token_ids))
    own = [ids[shared:] for ids in token_ids]
    padded = left_padded(own, pad_token_id, device)
    prefix = torch.tensor([token_ids[0][:shared]] * len(token_ids), dtype=torch.long, device=device)
    return {"input_ids": torch.cat([prefix, padded["input_ids"]], dim=1),
            "attention_mask": torch.cat([torch.ones_like(prefix), padded["attention_mask"]], dim=1),
            "past_key_values": cache}
