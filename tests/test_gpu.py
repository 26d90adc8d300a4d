"""Checks of the GPU-only code paths, on a tiny random Llama in bf16. Skipped without CUDA;
bench/gpu.sh runs them first on a lent H100/H200."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from alpaca_qlora.collators import PackedCollator, pop_token_counts
from alpaca_qlora.packed_attention import PACKED_SDPA, PACKED_VARLEN, register_packed_attention, varlen_supported

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=1000, max_position_embeddings=512)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()


def packed_batch(sequence_boundaries: bool) -> dict:
    generator = torch.Generator().manual_seed(1)
    examples = []
    for length in (37, 120, 5, 301, 64, 250, 18, 99):
        ids = torch.randint(3, 1000, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    batch = PackedCollator(pad_token_id=0, max_row_length=None, sequence_boundaries=sequence_boundaries)(examples)
    pop_token_counts(batch)
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}


def loss_logits_and_grads(model, batch) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    output = model(**batch, use_cache=False)
    output.loss.backward()
    grads = {name: p.grad.float() for name, p in model.named_parameters() if name.endswith(("q_proj.weight", "down_proj.weight"))}
    return float(output.loss), output.logits.detach().float(), grads


@pytest.mark.skipif(not varlen_supported(), reason="needs CUDA and torch.nn.attention.varlen (torch >= 2.10)")
@pytest.mark.parametrize("boundaries_from_collator", [True, False])
def test_packed_varlen_equals_per_example_sdpa(boundaries_from_collator):
    reference = tiny_llama()
    reference.set_attn_implementation(register_packed_attention(PACKED_SDPA))
    want = loss_logits_and_grads(reference, packed_batch(sequence_boundaries=False))
    model = tiny_llama()
    model.set_attn_implementation(register_packed_attention(PACKED_VARLEN))
    got = loss_logits_and_grads(model, packed_batch(sequence_boundaries=boundaries_from_collator))
    assert abs(got[0] - want[0]) < 1e-2 * abs(want[0])
    assert (got[1] - want[1]).abs().max() < 0.05 * want[1].abs().max()
    for name, grad in want[2].items():
        assert torch.allclose(got[2][name], grad, atol=0.05 * float(grad.abs().max())), name


def test_liger_kernels_keep_loss_and_gradients():
    pytest.importorskip("liger_kernel")
    from alpaca_qlora.kernels import apply_liger_kernels

    want = loss_logits_and_grads(tiny_llama(), packed_batch(sequence_boundaries=False))
    model = tiny_llama()
    args = SimpleNamespace(use_liger_kernel=True, liger_kernel_config=None)
    assert apply_liger_kernels(model, args).startswith("liger:") and args.use_liger_kernel is False
    got = loss_logits_and_grads(model, packed_batch(sequence_boundaries=False))
    assert abs(got[0] - want[0]) < 1e-2 * abs(want[0])
    for name, grad in want[2].items():
        assert torch.allclose(got[2][name], grad, atol=0.05 * float(grad.abs().max())), name
