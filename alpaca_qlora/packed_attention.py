"""Attention for packed rows on the CPU: each example attends only to itself, computed per example.

Why by hand: with packed rows (position ids restarting at 0, no attention mask), transformers'
sdpa path builds a dense block-diagonal mask and pays for the full row length squared. On GPUs
flash-attention's varlen kernels skip that waste; on the CPU no library offers varlen attention.
This function cuts each row at its position-id restarts and runs torch's own
scaled_dot_product_attention with is_causal=True per example (measured on this project's CPU:
about half the attention time of the masked dense call, at equal results). With a padding mask
or without position ids it hands over to transformers' sdpa unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "packed_sdpa"


def example_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each example: a new one begins wherever the position does not go up by 1."""
    spans = []
    for row in position_ids.tolist():
        starts = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1] + 1]
        spans.append(list(zip(starts, starts[1:] + [len(row)])))
    return spans


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query (batch, heads, length, dim), key/value (batch, kv_heads, length, dim) -> (batch, length, heads, dim)."""
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b, spans in enumerate(example_spans(position_ids.expand(query.shape[0], -1))):
        parts = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e],
                dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa,
            )
            for s, e in spans
        ]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    # Packed rows need no mask tensor at all; a padding mask goes the usual sdpa way.
    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register_packed_attention() -> str:
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
    return PACKED_SDPA
