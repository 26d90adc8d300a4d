"""Generate in segments of a few tokens, and drop the answers that have ended from the batch between segments.

`generate` runs every row of a batch until the longest answer ends: a row that wrote its end-of-sequence token
after 20 of 96 tokens is computed 76 more times, as padding. On Alpaca prompts SmolLM2's answers used 54% of their
96-token budget (bench/results/2026-12-06), so half of the decoding was spent on finished rows. Here `generate` is
called for SEGMENT_TOKENS at a time; between calls the finished rows leave the batch and its KV cache
(DynamicCache.batch_select_indices) and the others go on from where they were: the next call is given each row's
tokens so far and the cache, so it feeds only the last token, exactly as its own next step would. Each row's tokens
are the ones one call would have written (greedy answers compared in BENCHMARKS.md; sampled rows keep their own
generators, sampling.py).

Written by hand because `generate` keeps finished rows to the end (transformers' continuous batching does drop them,
but on the CPU it ran slower than plain `generate`: 59 against 87 answer tokens/s, SmolLM2, 64 prompts). Used for
two or more text prompts decoded without beams (beam search reorders its rows itself) and without a streamer.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, LogitsProcessorList

from .sampling import RowSeededSampling
from .stop_strings import StopAtStrings

SEGMENT_TOKENS = 16  # 8 and 16 were equally fast, 32 slower (SmolLM2, 128 prompts, 96 new tokens, batch 64)


def generate_in_segments(model, inputs: dict, kwargs: dict, stops: set[int], sampler: RowSeededSampling | None,
                         stopping_criteria=None, until_stop: StopAtStrings | None = None) -> list[list[int]]:
    """Each row's new tokens (up to and including its stop token, or max_new_tokens of them). `until_stop` (also one
    of `stopping_criteria`) ends a row that has written a stop string; it is asked again here, after each segment, on
    the row's whole answer so far (a stop string written across two segments counts), as `generate` does not say
    which rows its criteria ended."""
    max_new_tokens = kwargs["max_new_tokens"]
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    cache = inputs.get("past_key_values") or DynamicCache(config=model.config)
    prompt_width = input_ids.shape[1]
    rows = list(range(len(input_ids)))  # the original index of each row still generating
    answers: dict[int, list[int]] = {}
    written = 0
    while rows:
        processors = LogitsProcessorList([sampler] if sampler is not None else [])
        asked = min(SEGMENT_TOKENS, max_new_tokens - written)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                                **{**kwargs, "max_new_tokens": asked}, use_cache=True, logits_processor=processors,
                                stopping_criteria=stopping_criteria)
        new = output.shape[1] - input_ids.shape[1]
        written += new
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), new)], dim=1)
        stopped = written >= max_new_tokens or new < asked  # every row ended, or a stopping criterion ended the call
        going_on = []
        for position, row in enumerate(rows):
            tokens = output[position, prompt_width:].tolist()
            wrote_stop_string = until_stop is not None and until_stop.ended(tokens)
            if stopped or stops.intersection(tokens[len(tokens) - new:]) or wrote_stop_string:
                answers[row] = tokens
            else:
                going_on.append(position)
        if not going_on:
            break
        if len(going_on) < len(rows):
            keep = torch.tensor(going_on, device=input_ids.device)
            cache.batch_select_indices(keep)
            output, attention_mask = output[keep], attention_mask[keep]
            sampler = sampler.select(going_on) if sampler is not None else None
            rows = [rows[position] for position in going_on]
        input_ids = output
    return [answers[row] for row in range(len(answers))]
