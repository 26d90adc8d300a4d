"""Liger-Kernel's fused Triton kernels, opt-in with `--use_liger_kernel true`, with a clean fallback.

Liger fuses RMSNorm, SwiGLU and RoPE into single Triton kernels (fewer memory round trips on a GPU).
Its fused linear cross-entropy is left off: this project's chunked loss (training/loss.py) already never
builds full-vocabulary logits, and Liger's version works by replacing the model's forward.

Triton needs a CUDA GPU, so where Liger cannot run (no GPU, package missing, model type Liger does not
know) the plan says so and training goes on with the standard layers. The kernels are applied here
rather than by the Trainer, so the Trainer never sees the flag: its evaluation would otherwise pass
Liger-only arguments to a model whose forward Liger did not replace.
"""

from __future__ import annotations

import importlib.util

import torch

LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": False}
NONE = "none"


def liger_plan(requested: bool, model_config) -> tuple[str, str | None]:
    """What `--use_liger_kernel` turns into on this machine: ("liger: <kernels>" or "none", why not)."""
    if not requested:
        return NONE, None
    if not torch.cuda.is_available():
        return NONE, "--use_liger_kernel: Liger's Triton kernels need a CUDA GPU; standard PyTorch layers"
    if importlib.util.find_spec("liger_kernel") is None:
        return NONE, "--use_liger_kernel: liger-kernel is not installed (pip install liger-kernel); standard PyTorch layers"
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception as error:  # noqa: BLE001 - e.g. a Triton that does not match torch raises more than ImportError
        return NONE, f"--use_liger_kernel: liger-kernel does not import ({type(error).__name__}: {error}); standard PyTorch layers"
    model_type = getattr(model_config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return NONE, f"--use_liger_kernel: Liger has no kernels for model type '{model_type}'; standard PyTorch layers"
    return "liger: " + ", ".join(name for name, on in LIGER_KERNELS.items() if on), None


def apply_liger_kernels(model, plan_kernels: str, liger_kernel_config: dict | None = None) -> None:
    """Patch the base model under the LoRA wrapper in place, as the plan decided."""
    if plan_kernels == NONE:
        return
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
    from transformers.trainer_utils import unwrap_peft_model

    kernels = {**LIGER_KERNELS, **(liger_kernel_config or {}), "fused_linear_cross_entropy": False}
    _apply_liger_kernel_to_instance(model=unwrap_peft_model(model), **kernels)  # what transformers' Trainer calls too
