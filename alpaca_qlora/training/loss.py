"""Cross-entropy on the labelled positions only, in chunks: full-vocabulary logits are never materialised.

Why by hand: a causal LM computes logits for every position (batch x length x vocabulary, upcast to fp32
by the loss) although the prompt is masked out of the loss. With a 32k-150k vocabulary those logits are
often the largest tensor of a QLoRA step. The trainer (training/trainer.py) runs the model's own forward
with `logits_to_keep` set to no position, so the output layer is skipped, takes the final hidden states,
and calls this with the model's untouched output layer: it is applied to the positions that have a label
only, a chunk at a time under activation checkpointing, so at most one chunk of logits is alive at once.
Same value and gradients as the model's own loss (tests/test_prompts_and_tokenization.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.tokenization import IGNORE_INDEX

CHUNK_TOKENS = 4096


def no_positions(device: torch.device) -> torch.Tensor:
    """`logits_to_keep` that keeps no position: the model's forward runs its decoder but not its output layer."""
    return torch.empty(0, dtype=torch.long, device=device)


def _chunk_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, output_layer: nn.Module) -> torch.Tensor:
    return F.cross_entropy(output_layer(_as_output_input(hidden, output_layer)).float(), targets, reduction="sum")


def _as_output_input(hidden: torch.Tensor, output_layer: nn.Module) -> torch.Tensor:
    """The hidden states in the output layer's dtype. Mixed precision autocasts the model's own forward only
    (accelerate wraps `model.forward`); this runs after it, so a 16-bit output layer (a 16-bit base, as with
    --quantization none --compute_dtype bf16) meets the fp32 states of upcast norms. Cast as autocast would."""
    weight = getattr(output_layer, "weight", None)
    if weight is None or not weight.is_floating_point() or weight.dtype == hidden.dtype:
        return hidden
    if torch.is_autocast_enabled(hidden.device.type):
        return hidden
    return hidden.to(weight.dtype)


def labelled_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, output_layer: nn.Module,
                      chunk_tokens: int = CHUNK_TOKENS) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy over the labelled positions, their number).

    hidden: the decoder's final hidden states (batch, length, hidden); labels: (batch, length), IGNORE_INDEX where
    no loss is taken; position i predicts label i + 1, as in the models' own loss."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected, wanted = hidden[:, :-1][keep], targets[keep]
    total = hidden.sum() * 0.0  # keeps the graph when nothing is labelled
    for start in range(0, wanted.numel(), chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss_sum, selected[start:end], wanted[start:end], output_layer, use_reentrant=False)
    return total, int(wanted.numel())
