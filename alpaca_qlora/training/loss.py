"""Cross-entropy on the trained positions only, in chunks: full-vocabulary logits are never materialised.

Why by hand: a causal LM computes logits for every position (batch x length x vocabulary, upcast to
fp32 by the loss) although the prompt is masked out of the loss. With a 32k-150k vocabulary those
logits are often the largest tensor of a QLoRA step. Here the model's output layer is swapped for
a pass-through during training, and the loss applies the real output layer to the positions that
have a label only, a chunk at a time under activation checkpointing, so at most one chunk of logits
is alive at once. It plugs into the Trainer through its own hook, `compute_loss_func`, so gradient
accumulation and multi-GPU loss scaling stay the Trainer's. Models whose logits are post-processed
after the output layer (soft-capping, logit scaling) keep the standard path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.tokenization import IGNORE_INDEX

CHUNK_TOKENS = 4096
POSTPROCESSED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class HiddenStatesHead(nn.Module):
    """Stands in for the output layer: returns the final hidden states; the real layer is `head`."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    @property
    def weight(self) -> torch.Tensor:  # tied-weight and PEFT lookups still find the output matrix
        return self.head.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


def install_hidden_states_head(model) -> HiddenStatesHead | None:
    """Swap the output layer of `model` (PEFT-wrapped or not) for a pass-through; None where unsafe."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in POSTPROCESSED_LOGITS):
        return None
    head = base.get_output_embeddings()
    if not isinstance(head, nn.Linear) or isinstance(head, HiddenStatesHead):
        return None
    wrapper = HiddenStatesHead(head)
    base.set_output_embeddings(wrapper)
    return wrapper


def _chunk_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def trained_token_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module,
                           chunk_tokens: int = CHUNK_TOKENS) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy over the labelled positions, their number)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected, wanted = hidden[:, :-1][keep], targets[keep]
    total = hidden.sum() * 0.0  # keeps the graph when nothing is labelled
    for start in range(0, wanted.numel(), chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss_sum, selected[start:end], wanted[start:end], head, use_reentrant=False)
    return total, int(wanted.numel())


def make_loss_func(head: HiddenStatesHead):
    """The Trainer's `compute_loss_func`: mean over the labelled tokens of the (accumulated) batch."""

    def loss_func(outputs, labels, num_items_in_batch=None):
        total, count = trained_token_loss_sum(outputs["logits"], labels, head.head)
        return total / (num_items_in_batch if num_items_in_batch is not None else max(count, 1))

    return loss_func
