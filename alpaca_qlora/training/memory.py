"""The gradient-checkpointing policy: recompute activations only where memory asks for it.

Checkpointing trades about a quarter more compute for activation memory. On GPUs memory is what
limits QLoRA, so it stays on. On the CPU it is turned on only when a batch's activations would
need more than a quarter of the free RAM. Either way, an explicit --gradient_checkpointing
(or --activation_checkpointing) true/false wins.
"""

from __future__ import annotations

import psutil
import torch


def activation_bytes(hidden_size: int, num_layers: int, tokens: int, bytes_per_value: int) -> int:
    """Activations kept for the backward pass without checkpointing: about 34 x hidden bytes per token
    and layer in 16-bit precision (Korthikanti et al., 2022, less the attention scores that sdpa and
    flash attention do not keep), scaled to the compute precision."""
    return int(17 * hidden_size * num_layers * tokens * bytes_per_value)


def checkpointing_needed(model_config, tokens_per_batch: int, bytes_per_value: int) -> bool:
    if torch.cuda.is_available():
        return True
    text_config = getattr(model_config, "text_config", None) or model_config
    hidden = getattr(text_config, "hidden_size", None)
    layers = getattr(text_config, "num_hidden_layers", None)
    if not hidden or not layers:
        return True  # unknown shape: stay on the safe side
    needed = activation_bytes(hidden, layers, tokens_per_batch, bytes_per_value)
    return needed > psutil.virtual_memory().available / 4
