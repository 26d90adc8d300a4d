"""Checks of the GPU-only code paths (packed_varlen attention, Liger kernels), on a tiny random Llama:
plain bf16, and the QLoRA setup training uses (NF4 base, LoRA, fp32 norms, bf16 autocast, gradient
checkpointing). Skipped without CUDA; bench/gpu.sh runs them first on a lent H100/H200."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from alpaca_qlora.training.collators import PackedCollator
from alpaca_qlora.run_folder import PACKED_SDPA, PACKED_VARLEN
from alpaca_qlora.training.packed_attention import register_packed_attention, varlen_supported

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_varlen = pytest.mark.skipif(not varlen_supported(), reason="needs CUDA (sm80+) and torch.nn.attention.varlen (torch >= 2.10)")
COMPARED = ("q_proj.weight", "down_proj.weight", "q_proj.lora_B.default.weight", "down_proj.lora_B.default.weight")


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=1000, max_position_embeddings=512)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(path)
    return path


def qlora_model(path, attention: str):
    """What training builds: NF4 base with bf16 compute, LoRA on all linear layers, checkpointing."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from alpaca_qlora.modeling import load_base_model

    model = load_base_model(str(path), "nf4", torch.bfloat16, True, "uint8", "sdpa", device_map={"": 0})
    model.config.use_cache = False
    model.set_attn_implementation(register_packed_attention(attention))
    torch.manual_seed(0)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             bias="none", task_type="CAUSAL_LM"))
    for name, parameter in model.named_parameters():  # non-zero B: gradients reach every LoRA matrix
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02, generator=torch.Generator(parameter.device).manual_seed(1))
    return model.train()


def packed_batch(sequence_boundaries: bool) -> dict:
    generator = torch.Generator().manual_seed(1)
    examples = []
    for length in (37, 120, 5, 301, 64, 250, 18, 99):
        ids = torch.randint(3, 1000, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    batch = PackedCollator(pad_token_id=0, max_row_length=None, sequence_boundaries=sequence_boundaries)(examples)
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}


def loss_logits_and_grads(model, batch, autocast: bool = False) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        output = model(**batch, use_cache=False)
    output.loss.backward()
    grads = {name: p.grad.float() for name, p in model.named_parameters() if p.grad is not None and name.endswith(COMPARED)}
    assert grads
    return float(output.loss), output.logits.detach().float(), grads


def assert_close(got, want) -> None:
    assert abs(got[0] - want[0]) < 1e-2 * abs(want[0])
    assert (got[1] - want[1]).abs().max() < 0.05 * want[1].abs().max()
    assert got[2].keys() == want[2].keys()
    for name, grad in want[2].items():
        assert torch.allclose(got[2][name], grad, atol=0.05 * float(grad.abs().max())), name


@pytest.fixture
def varlen_calls(monkeypatch):
    """Counts calls of torch's varlen kernel (the real one runs), so a silent fallback cannot pass."""
    import torch.nn.attention.varlen as varlen

    calls = []
    real = varlen.varlen_attn

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(varlen, "varlen_attn", counting)
    return calls


@needs_varlen
@pytest.mark.parametrize("boundaries_from_collator", [True, False])
def test_packed_varlen_equals_per_example_sdpa(boundaries_from_collator, varlen_calls):
    reference = tiny_llama()
    reference.set_attn_implementation(register_packed_attention(PACKED_SDPA))
    want = loss_logits_and_grads(reference, packed_batch(sequence_boundaries=False))
    assert not varlen_calls
    model = tiny_llama()
    model.set_attn_implementation(register_packed_attention(PACKED_VARLEN))
    got = loss_logits_and_grads(model, packed_batch(sequence_boundaries=boundaries_from_collator))
    assert len(varlen_calls) == 2  # one call per layer, the whole batch at once
    assert_close(got, want)


@needs_varlen
def test_packed_varlen_in_the_qlora_setup(tiny_llama_dir, varlen_calls):
    """NF4 + LoRA + fp32 norms + bf16 autocast + checkpointing: q/k/v may arrive in fp32 here."""
    want = loss_logits_and_grads(qlora_model(tiny_llama_dir, PACKED_SDPA), packed_batch(False), autocast=True)
    got = loss_logits_and_grads(qlora_model(tiny_llama_dir, PACKED_VARLEN), packed_batch(True), autocast=True)
    assert len(varlen_calls) == 4  # 2 layers, forward + the checkpointed recomputation
    assert_close(got, want)


@pytest.fixture
def restore_llama_module(monkeypatch):
    """Liger replaces module-level names of transformers' Llama code; put them back after the test."""
    from transformers.models.llama import modeling_llama

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))


@pytest.mark.parametrize("setup", ["bf16", "qlora"])
def test_liger_kernels_keep_loss_and_gradients(setup, tiny_llama_dir, restore_llama_module):
    pytest.importorskip("liger_kernel")
    from alpaca_qlora.training.kernels import apply_liger_kernels

    build = tiny_llama if setup == "bf16" else (lambda: qlora_model(tiny_llama_dir, PACKED_SDPA))
    want = loss_logits_and_grads(build(), packed_batch(False), autocast=setup == "qlora")
    model = build()
    args = SimpleNamespace(use_liger_kernel=True, liger_kernel_config=None)
    assert apply_liger_kernels(model, args).startswith("liger:") and args.use_liger_kernel is False
    norm = model.get_base_model().model.norm if setup == "qlora" else model.model.norm
    assert "forward" in vars(norm)  # patched on the instance
    got = loss_logits_and_grads(model, packed_batch(False), autocast=setup == "qlora")
    assert_close(got, want)
