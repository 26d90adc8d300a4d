"""bitsandbytes' two CPU paths for 4-bit layers, exercised on any CPU by forcing its AVX512-BF16 detection.

On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight in place for a bf16 kernel the first
time the layer runs in eval mode without gradients. That kernel needs widths divisible by 32 and has
no backward. Training must never take it (a held-out evaluation would otherwise crash, or cut the
gradients of every later step); inference takes it only with bf16 compute, where the widths fit.
"""

from __future__ import annotations

import json

import bitsandbytes.functional
import bitsandbytes.nn.modules
import pytest
import torch
from safetensors.torch import load_file

from alpaca_qlora.modeling import PACKED_CPU_BLOCK, load_base_model
from alpaca_qlora.data.synthetic import build_tiny_llama
from conftest import run_script, training_args

CPU_HAS_AVX512BF16 = bool(bitsandbytes.functional.has_avx512bf16())


@pytest.fixture
def detected(monkeypatch):
    """bitsandbytes believes the CPU has AVX512-BF16 (whatever it has) for the layers built in this test."""
    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)


def linear4bit_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]


def repacked(model) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, bitsandbytes.nn.Linear4bit) and getattr(m.weight.quant_state, "packing_format_for_cpu", False)]


@pytest.fixture(scope="module")
def aligned_model(tmp_path_factory, tiny_records):
    """Every width a multiple of 32: where the repack does not crash, only silently breaks training."""
    return build_tiny_llama(tmp_path_factory.mktemp("aligned") / "model", tiny_records[:50], intermediate_size=128)


def input_gradient(model, ids: torch.Tensor) -> torch.Tensor:
    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeddings, labels=ids, use_cache=False).loss.backward()
    assert embeddings.grad is not None, "no gradient reached the input through the 4-bit layers"
    return embeddings.grad


def test_evaluation_does_not_repack_a_training_model(aligned_model, detected):
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2]])
    fresh = load_base_model(str(aligned_model), "nf4", torch.float32).train()
    expected = input_gradient(fresh, ids)

    model = load_base_model(str(aligned_model), "nf4", torch.float32)
    assert linear4bit_layers(model) and not any(m.support_avx512bf16_for_cpu for m in linear4bit_layers(model))
    model.eval()
    with torch.no_grad():  # what the held-out evaluation and the packing probe do
        model(input_ids=ids, use_cache=False)
    assert repacked(model) == []
    model.train()
    assert torch.equal(input_gradient(model, ids), expected)


def test_inference_allows_the_packed_kernel_only_with_bf16_and_fitting_widths(tiny_model, detected):
    fp32 = load_base_model(str(tiny_model), "nf4", torch.float32, packed_cpu_kernel=False)
    assert not any(m.support_avx512bf16_for_cpu for m in linear4bit_layers(fp32))
    bf16 = load_base_model(str(tiny_model), "nf4", torch.bfloat16, packed_cpu_kernel=True)
    allowed = {name.split(".")[-1] for name, m in bf16.named_modules()
               if isinstance(m, bitsandbytes.nn.Linear4bit) and m.support_avx512bf16_for_cpu}
    # q/k/v/o map 64 to 64 or 32; gate/up_proj write 176 (not a multiple of 32); down_proj reads 176
    # (not whole blocks of 64 scales)
    assert allowed == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert all(m.out_features % PACKED_CPU_BLOCK == 0 for m in linear4bit_layers(bf16) if m.support_avx512bf16_for_cpu)


@pytest.mark.skipif(not CPU_HAS_AVX512BF16, reason="the packed kernel itself needs a CPU with AVX512-BF16")
def test_packed_kernel_generates_on_mixed_widths(tiny_model):
    from alpaca_qlora.generation import generate
    from alpaca_qlora.generation.settings import GenerationSettings, resolve_settings
    from alpaca_qlora.generation.source import InferenceModelArguments, resolve_model_source

    source = resolve_model_source(InferenceModelArguments(base_model=str(tiny_model), quantization="nf4", compute_dtype="bf16"))
    model, tokenizer = generate.load_for_inference(source)
    answers = generate.generate_answers(model, tokenizer, ["Add 2 and 3.", "Reverse the word."],
                                          resolve_settings(GenerationSettings(max_new_tokens=6)))
    assert len(answers) == 2
    assert {name.split(".")[-1] for name in repacked(model)} == {"q_proj", "k_proj", "v_proj", "o_proj"}


@pytest.mark.parametrize("widths", ["mixed", "aligned"])
def test_training_is_identical_whatever_the_detection_says(widths, tiny_model, aligned_model, tiny_data, tmp_path,
                                                          forced_avx512bf16_env):
    """The whole script, held-out evaluation before, during and after training: same adapter, same losses."""
    model = tiny_model if widths == "mixed" else aligned_model
    results = {}
    for detected in (True, False):
        output = tmp_path / f"run-{detected}"
        result = run_script(*training_args(model, tiny_data, output, "--max_steps", "6", "--val_set_size", "16",
                                           "--eval_strategy", "steps", "--eval_steps", "3"),
                            env=forced_avx512bf16_env(detected))
        assert result.returncode == 0, result.stderr[-3000:]
        results[detected] = (load_file(output / "adapter_model.safetensors"),
                             json.loads((output / "eval_results.json").read_text()))
    (with_adapter, with_eval), (without_adapter, without_eval) = results[True], results[False]
    assert with_adapter.keys() == without_adapter.keys()
    for name in with_adapter:
        assert torch.equal(with_adapter[name], without_adapter[name]), name
    assert with_eval["after_training"] == without_eval["after_training"]
    assert with_eval["before_training"] == without_eval["before_training"]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_automatic_compute_dtype_follows_the_cpu(native_bf16, tiny_model, monkeypatch):
    """auto: bf16 4-bit layers where the CPU multiplies bf16 natively, fp32 elsewhere; never autocast on the CPU
    unless asked; a 16/32-bit base and the sharding engines stay fp32. Decided once, with the reason recorded."""
    from alpaca_qlora.modeling import load_model_config
    from alpaca_qlora.training import plan as plan_module
    from alpaca_qlora.training.config import parse_training_config

    from alpaca_qlora import modeling

    monkeypatch.setattr(modeling, "cpu_multiplies_bf16", lambda: native_bf16)  # the one rule of `auto`
    model_config = load_model_config(str(tiny_model))

    def plan_for(*options: str):
        return plan_module.make_plan(parse_training_config(["--base_model", str(tiny_model), *options]), model_config,
                                     has_heldout=False)

    auto = plan_for()
    assert (auto.compute_dtype, auto.mixed_precision) == (("bf16" if native_bf16 else "fp32"), "no")
    assert ("natively" if native_bf16 else "no AVX512-BF16") in dict(auto.reasons)["compute dtype"]
    assert plan_for("--quantization", "none").compute_dtype == "fp32"
    assert (plan_for("--compute_dtype", "fp32").compute_dtype, plan_for("--compute_dtype", "bf16").compute_dtype) == ("fp32", "bf16")
    assert plan_for("--compute_dtype", "bf16").mixed_precision == "no"
    assert plan_for("--compute_dtype", "bf16", "--bf16", "true", "--use_cpu", "true").mixed_precision == "bf16"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_generation_decides_the_compute_dtype_as_training_does(native_bf16, monkeypatch):
    """A bare base resolves auto by training's own rule; a run's adapter generates in the dtype its plan trained in
    (when its base is loaded as it trained); the flag wins."""
    from alpaca_qlora import modeling
    from alpaca_qlora.generation.source import generation_compute_dtype

    monkeypatch.setattr(modeling, "cpu_multiplies_bf16", lambda: native_bf16)
    assert generation_compute_dtype(None, "nf4") == ("bf16" if native_bf16 else "fp32")
    assert generation_compute_dtype(None, "none") == "fp32"
    run = {"model": {"quantization": "nf4", "compute_dtype": "auto"}, "plan": {"compute_dtype": "bf16"}}
    assert generation_compute_dtype(None, "nf4", run) == "bf16"  # the run's plan, on any CPU
    assert generation_compute_dtype(None, "none", run) == "fp32"  # loaded otherwise than it trained: the rule
    assert generation_compute_dtype("fp32", "nf4", run) == "fp32"
