"""LoRA's input dropout on the CPU, with its random masks drawn by NumPy's PCG64 instead of torch's generator.

Why by hand: PEFT applies dropout to the input of every LoRA layer (seven per Llama block), and torch's CPU
dropout draws one number per element from its serial Mersenne Twister. On stories260K, profiled under load, that was
19-20% of a training step on two cores (bench/results/HISTORY.md, CPU 2026-12-01 afternoon); PCG64 draws the same
masks' worth of numbers two to three times faster. End to end, measured on SmolLM2 (BENCHMARKS.md, CPU 2026-12-06,
AMD EPYC Zen 4, quiet, three runs in alternating order): a step takes 3.49-3.66 s with these masks against 3.74-4.07
s with torch's (1.07-1.11x faster), at a 0.35-0.38 GiB lower peak. The masks have the same distribution: each element is kept with
probability 1 - p (p rounded to a multiple of 1/65536) and scaled by 1 / (1 - p). Each mask's generator is
seeded from torch's generator, so `--seed` fixes the masks and a resumed run (the Trainer restores torch's RNG
state) draws the same ones. GPUs keep torch's own dropout, which is fast there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

LEVELS = 65536  # masks are drawn as 16-bit integers


def uniform_int16(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform 16-bit integers: PCG64's raw 64-bit outputs, four per output, read as int16 (every bit of PCG64's
    output is uniform; 2.4x faster than Generator.integers, which draws one bounded number at a time)."""
    count = int(np.prod(shape))
    return np.random.PCG64(seed).random_raw((count + 3) // 4).view(np.int16)[:count].reshape(shape)


class PCG64Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.dropped_levels = round(p * LEVELS)
        self.scale = LEVELS / (LEVELS - self.dropped_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropped_levels == 0:
            return x
        seed = int(torch.randint(0, 2**62, (1,)))  # from torch's generator: --seed and resuming fix the masks
        keep = torch.from_numpy(uniform_int16(seed, x.shape)).to(x.device) >= self.dropped_levels - LEVELS // 2
        # where, then the scale: the values of x * keep * scale, in one pass less, forward and backward (autograd
        # keeps the boolean mask only)
        return torch.where(keep, x, 0.0) * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_pcg64_dropout(model) -> int:
    """Replace the torch dropout of every LoRA layer (PEFT's `lora_dropout`) with PCG64Dropout; returns how many."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout):
                dropouts[name] = PCG64Dropout(dropout.p)
                replaced += 1
    return replaced
