"""Liger-Kernel's fused Triton kernels, opt-in with `--use_liger_kernel true`, with a clean fallback.

Liger fuses RMSNorm, SwiGLU and RoPE into single Triton kernels (fewer memory round trips on a GPU).
Its fused linear cross-entropy is left off: this project's own loss (chunked_loss.py) already
replaces the model's lm_head and never builds full-vocabulary logits, and Liger's version works by
replacing the model's forward, which would bypass it.

Triton needs a CUDA GPU, so where Liger cannot run (no GPU, package missing, model type Liger does
not know) training goes on with the standard layers and one warning line says why. The kernels are
applied here rather than by the Trainer, so the Trainer never sees the flag: its evaluation would
otherwise pass Liger-only arguments to a model whose forward Liger did not replace.
"""

from __future__ import annotations

import importlib.util

import torch

LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": False}


def liger_unavailable_reason() -> str | None:
    if not torch.cuda.is_available():
        return "Liger's Triton kernels need a CUDA GPU"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel)"
    return None


def apply_liger_kernels(model, train_args) -> str:
    """Patch the base model under the LoRA wrapper in place; returns what runs, for the run folder."""
    if not train_args.use_liger_kernel:
        return "none"
    train_args.use_liger_kernel = False  # applied here, not by the Trainer (see the module docstring)
    reason = liger_unavailable_reason()
    if reason is None:
        from transformers.trainer_utils import unwrap_peft_model

        base = unwrap_peft_model(model)
        try:
            from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance
        except Exception as error:  # noqa: BLE001 - e.g. a Triton that does not match torch raises more than ImportError
            reason = f"liger-kernel does not import ({type(error).__name__}: {error})"
        else:
            if base.config.model_type in MODEL_TYPE_TO_APPLY_LIGER_FN:
                kernels = {**LIGER_KERNELS, **(train_args.liger_kernel_config or {}), "fused_linear_cross_entropy": False}
                _apply_liger_kernel_to_instance(model=base, **kernels)  # what transformers' Trainer calls too
                return "liger: " + ", ".join(name for name, on in kernels.items() if on)
            reason = f"Liger has no kernels for model type '{base.config.model_type}'"
    print(f"warning: --use_liger_kernel: {reason}; training with the standard PyTorch layers")
    return "none"
