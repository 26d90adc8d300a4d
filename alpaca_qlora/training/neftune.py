"""NEFTune (Jain et al., 2023, arXiv 2310.05914) with each example's noise scaled by that example's own length.

The paper adds to the token embeddings of an example of L tokens (embedding size d) noise drawn uniformly from
[-alpha / sqrt(L d), +alpha / sqrt(L d)]. transformers' hook (integrations/neftune.py, what `--neftune_noise_alpha`
switches on in the Trainer) takes L as the batch row's length: with packing (this toolkit's default) a row holds
many examples, and each would get a fraction of its noise (about 1/sqrt(8) for 8 equal examples in a row).

Here L is read per token from the batch the model is about to see: the example the token belongs to (packed rows:
position ids restart at 0 at each example; padded rows: the row's real, unpadded tokens). Written by hand because no
library scales NEFTune per example for packed or padding-free batches (transformers and TRL scale by the row).
"""

from __future__ import annotations

import torch

from .collators import sequence_boundaries


def example_lengths(inputs: dict) -> torch.Tensor:
    """(batch, sequence) float tensor: for every position, the length of the example it belongs to."""
    input_ids = inputs["input_ids"]
    if inputs.get("position_ids") is not None and inputs.get("attention_mask") is None:  # packed rows
        boundaries, _ = sequence_boundaries(inputs["position_ids"])  # the packed attention's own sequences
        lengths = (boundaries[1:] - boundaries[:-1]).long()
        return torch.repeat_interleave(lengths, lengths).reshape(input_ids.shape).float()
    mask = inputs.get("attention_mask")
    real = mask.sum(-1) if mask is not None else torch.full(input_ids.shape[:1], input_ids.shape[1], device=input_ids.device)
    return real.clamp(min=1).unsqueeze(-1).expand(input_ids.shape).float()


class PerExampleNEFTune:
    """A forward hook on the input embeddings: in training, the embeddings plus NEFTune noise scaled per example.

    The trainer sets `lengths` (example_lengths of the batch) before each training forward and clears it after;
    without lengths (evaluation, generation) or in eval mode the embeddings pass unchanged."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.lengths: torch.Tensor | None = None

    def bound(self, lengths: torch.Tensor, embedding_size: int) -> torch.Tensor:
        """The largest noise per position: alpha / sqrt(L d)."""
        return self.alpha / torch.sqrt(lengths * embedding_size)

    def __call__(self, module: torch.nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training or self.lengths is None:
            return output
        bound = self.bound(self.lengths.to(output.device, torch.float32), output.shape[-1]).unsqueeze(-1)
        noise = torch.empty(output.shape, device=output.device, dtype=torch.float32).uniform_(-1, 1) * bound
        return output + noise.to(output.dtype)
