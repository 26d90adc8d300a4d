"""Attention for packed rows: each example attends only to itself, with no mask tensor.

Why by hand: with packed rows (position ids restarting at 0, no attention mask), transformers'
sdpa path builds a dense block-diagonal mask and pays for the full row length squared.

- `packed_sdpa` (the CPU default): cuts each row at its position-id restarts and runs torch's own
  scaled_dot_product_attention with is_causal=True per example (measured on this project's CPU, stories260K:
  attention 0.27 -> 0.13 s, step 1.43 -> 0.94 s, logits equal to 1e-4 and gradients to 1e-6; bench/results/
  HISTORY.md, optimisation log). No library offers varlen attention on the CPU. It is one of the two modules of
  ours a CPU training step passes through inside the model's forward (the other: lora_dropout.py); the step itself
  reads in three files (collators.py, trainer.py, loss.py).
- `packed_varlen` (opt-in on CUDA, `--attn_implementation packed_varlen`): torch's own varlen
  flash-attention kernel (`torch.nn.attention.varlen`, torch >= 2.10) over the whole batch as one
  sequence list: one kernel call per layer, no padding, no mask. transformers' `flash_attention_2`
  does the same but needs the flash-attn package, which has no wheel for every torch/CUDA pair.
  Off CUDA it is `packed_sdpa`.

With a padding mask or without position ids both hand over to transformers' sdpa unchanged.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..run_folder import PACKED_SDPA, PACKED_VARLEN
from .collators import sequence_boundaries

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
    output_dtype = query.dtype
    if query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16):
        # torch's CPU flash attention is slower in 16 bits than in fp32, forward and backward (measured: 4.2 ms vs
        # 2.8 ms for a 200-token example of SmolLM2's shape): upcast, and hand back the dtype that came in.
        query, key, value = query.float(), key.float(), value.float()
    rows = []
    for b, spans in enumerate(example_spans(position_ids.expand(query.shape[0], -1))):
        lengths = [e - s for s, e in spans]  # split, not slices: its backward is one cat, not a zero-filled copy per example
        parts = [
            F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
            for q, k, v in zip(*(t[b : b + 1].split(lengths, dim=2) for t in (query, key, value)))
        ]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous().to(output_dtype), None


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def varlen_supported() -> bool:
    """torch's varlen API present, and a GPU its flash kernel runs on (Ampere or newer, which has bf16)."""
    try:
        _varlen_parameters()
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def kernel_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(dtype the flash kernel computes in, dtype handed back): 16-bit only. Under autocast (QLoRA keeps
    norms in fp32, so q/k/v can arrive in fp32) both are autocast's dtype, as sdpa's output would be."""
    if dtype in (torch.float16, torch.bfloat16):
        return dtype, dtype
    if torch.is_autocast_enabled("cuda"):
        autocast_dtype = torch.get_autocast_dtype("cuda")
        return autocast_dtype, autocast_dtype
    return torch.bfloat16, dtype


def causal_varlen(query, key, value, cu_seqlens: torch.Tensor, max_length: int, scaling: float | None) -> torch.Tensor:
    """(tokens, heads, dim) in and out; bridges the signature changes of torch's varlen_attn across releases."""
    from torch.nn.attention.varlen import varlen_attn

    params = _varlen_parameters()
    options = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if scaling is not None and "scale" in params:
        options["scale"] = scaling
    elif scaling is not None:
        query = query * (scaling * query.shape[-1] ** 0.5)
    if key.shape[1] != query.shape[1]:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_length, max_length, **options)


def packed_varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query (batch, heads, length, dim), key/value (batch, kv_heads, length, dim) -> (batch, length, heads, dim)."""
    position_ids = kwargs.get("position_ids")
    if not query.is_cuda or dropout or attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return packed_sdpa_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    cu_seqlens, max_length = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    batch, heads, length, dim = query.shape
    if cu_seqlens is None:  # the collator sends them (no device sync); a direct call gets them here
        cu_seqlens, max_length = sequence_boundaries(position_ids.expand(batch, -1))
    kernel_dtype, output_dtype = kernel_dtypes(query.dtype)
    flat = [t.transpose(1, 2).reshape(batch * length, t.shape[1], dim).to(kernel_dtype) for t in (query, key, value)]
    output = causal_varlen(*flat, cu_seqlens.to(query.device, torch.int32), int(max_length), scaling)
    return output.reshape(batch, length, heads, dim).to(output_dtype), None


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    # Packed rows need no mask tensor at all; a padding mask goes the usual sdpa way.
    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register_packed_attention(name: str = PACKED_SDPA) -> str:
    function = {PACKED_SDPA: packed_sdpa_attention, PACKED_VARLEN: packed_varlen_attention}[name]
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, packed_sdpa_mask)
    return name
