"""Cross-entropy on the labelled positions only, in chunks: full-vocabulary logits are never materialised.

Why by hand: a causal LM computes logits for every position (batch x length x vocabulary, upcast to fp32
by the loss) although the prompt is masked out of the loss. With a 32k-150k vocabulary those logits are
often the largest tensor of a QLoRA step. The trainer (training/trainer.py) runs the model's own forward
with `logits_to_keep` set to no position, so the output layer is skipped, takes the final hidden states,
and calls this with the model's untouched output layer: it is applied to the positions that have a label
only, a chunk at a time, so at most one chunk of logits is alive at once.

A bias-free linear output layer (every causal LM this project has met) goes through `LinearCrossEntropy`: each
chunk's gradients are computed in the forward, while its logits exist, so the output layer's product runs twice
(logits, gradient) instead of three times (logits, logits again under checkpointing, gradient). The same idea as
Liger's fused linear cross-entropy, whose kernels need Triton on a GPU; this is plain torch, for every device.
Any other output layer keeps the checkpointed chunks. Same value and gradients as the model's own loss
(tests/test_prompts_and_tokenization.py).

Three paths, each with its reason: LinearCrossEntropy (measured on SmolLM2, CPU 2026-12-02: 2.31 -> 2.07 s/step,
1.11x, and closer to the float64 loss: worst gradient 2.6e-6 against 3.9e-4 for torch's fp32 log-softmax); the
checkpointed chunks for an output layer with a bias or of another kind (never materialises the full logits either);
the model's own full-logits loss where the model post-processes its logits, has no `logits_to_keep`, or FSDP /
DeepSpeed shard the output layer (training/plan.py choose_loss).
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


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` (logits upcast to fp32) against `targets`, chunk by chunk; the
    gradients for `hidden` (and `weight` when it is trained) are made in the forward, chunk by chunk, and only
    scaled in the backward. Exact: the same products autograd would run, in the same dtypes."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            chunk, wanted = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
            logits = F.linear(chunk, weight).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, wanted[:, None]).squeeze(1)).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            grad_logits = logits.sub_(log_norm[:, None]).exp_()  # softmax, in place of the logits
            grad_logits[torch.arange(wanted.numel(), device=wanted.device), wanted] -= 1
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_tokens] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ chunk).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def fused_output_weight(output_layer: nn.Module) -> torch.Tensor | None:
    """The weight of a plain bias-free linear output layer (LinearCrossEntropy's case), else None."""
    if type(output_layer) is not nn.Linear or output_layer.bias is not None:
        return None
    return output_layer.weight


def labelled_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, output_layer: nn.Module,
                      chunk_tokens: int = CHUNK_TOKENS) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy over the labelled positions, their number).

    hidden: the decoder's final hidden states (batch, length, hidden); labels: (batch, length), IGNORE_INDEX where
    no loss is taken; position i predicts label i + 1, as in the models' own loss."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected, wanted = hidden[:, :-1][keep], targets[keep]
    total = hidden.sum() * 0.0  # keeps the graph when nothing is labelled
    weight = fused_output_weight(output_layer)
    if weight is not None and wanted.numel():
        return total + LinearCrossEntropy.apply(_as_output_input(selected, output_layer), weight, wanted, chunk_tokens), \
            int(wanted.numel())
    for start in range(0, wanted.numel(), chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss_sum, selected[start:end], wanted[start:end], output_layer, use_reentrant=False)
    return total, int(wanted.numel())
