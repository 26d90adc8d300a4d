"""LoRA variants through peft (--use_dora, --use_rslora, --init_lora_weights gaussian) on the NF4 tiny model: each
trains, is recorded in the adapter and the model card, and its adapter loads and generates with inference.py."""

from __future__ import annotations

import json

import pytest

from conftest import run_script, training_args

VARIANTS = {"default": [], "dora": ["--use_dora", "true"], "rslora": ["--use_rslora", "true"],
            "gaussian": ["--init_lora_weights", "gaussian"]}


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    losses = {}
    for name, flags in VARIANTS.items():
        run = folder / name
        result = run_script(*training_args(tiny_model, tiny_data, run, "--max_steps", "3", "--val_set_size", "16",
                                           *flags), env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        losses[name] = json.loads((run / "eval_results.json").read_text())["after_training"]["eval_loss"]
    return folder, losses


def test_each_variant_is_recorded_and_trains_differently(trained):
    folder, losses = trained
    configs = {name: json.loads((folder / name / "adapter_config.json").read_text()) for name in VARIANTS}
    assert configs["dora"]["use_dora"] and not configs["default"]["use_dora"]
    assert configs["rslora"]["use_rslora"] and not configs["default"]["use_rslora"]
    assert configs["gaussian"]["init_lora_weights"] == "gaussian" and configs["default"]["init_lora_weights"] is True
    assert "DoRA, scaling alpha / r, default initialisation" in (folder / "dora" / "README.md").read_text()
    assert "rsLoRA scaling (alpha / sqrt(r))" in (folder / "rslora" / "README.md").read_text()
    # rsLoRA scales the update by alpha / sqrt(r) = 8 instead of alpha / r = 2: the same steps move the loss further
    assert abs(losses["rslora"] - losses["default"]) > 1e-4
    assert len({round(loss, 6) for loss in losses.values()}) == len(losses)


@pytest.mark.parametrize("name", ["dora", "rslora", "gaussian"])
def test_each_variant_loads_and_generates(trained, name):
    folder, _ = trained
    result = run_script("inference.py", "--adapter", str(folder / name), "--instruction", "Name a colour.",
                        "--max_new_tokens", "4", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"adapter {folder / name}" in result.stderr


# ---------------------------------------------------------------------------------------------
# PiSSA and LoftQ: initialisations that modify the base (training/lora_init.py)
# ---------------------------------------------------------------------------------------------
EXACT = ["--quantization", "none", "--compute_dtype", "fp32", "--lora_dropout", "0"]


def heldout_before(run) -> float:
    return json.loads((run / "eval_results.json").read_text())["before_training"]["eval_loss"]


@pytest.fixture(scope="module")
def pissa_runs(tiny_model, tiny_data, tmp_path_factory):
    """Three runs on the full-precision base: default and PiSSA trained 3 steps, PiSSA at learning rate 0."""
    folder = tmp_path_factory.mktemp("pissa")
    runs = {"default": [], "pissa": ["--init_lora_weights", "pissa"],
            "pissa_lr0": ["--init_lora_weights", "pissa", "--learning_rate", "0"]}
    for name, flags in runs.items():
        result = run_script(*training_args(tiny_model, tiny_data, folder / name, "--max_steps", "3", "--val_set_size",
                                           "16", *EXACT, *flags), env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_pissa_starts_from_the_base_itself(pissa_runs):
    # W_res + B0 A0 = W: before training a PiSSA model computes what the base computes (default LoRA: B0 = 0)
    assert heldout_before(pissa_runs / "pissa") == pytest.approx(heldout_before(pissa_runs / "default"), abs=1e-4)


def test_the_initialisation_peak_is_recorded_apart(pissa_runs):
    """The 16/32-bit moment of a base-modifying initialisation has its own peak in eval_results.json (on the CPU the
    resident set's peak so far); a run that does not modify its base records none."""
    pissa = json.loads((pissa_runs / "pissa" / "eval_results.json").read_text())
    default = json.loads((pissa_runs / "default" / "eval_results.json").read_text())
    assert 0 < pissa["initialisation_peak_memory_gib"] <= pissa["peak_memory_gib"]  # the CPU's peak is not reset
    assert "initialisation_peak_memory_gib" not in default


def test_pissa_adapter_is_converted_for_the_original_base(pissa_runs, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((pissa_runs / "pissa" / "adapter_config.json").read_text())
    assert config["r"] == 32 and config["lora_alpha"] == 64 and config["init_lora_weights"] is True  # r 16 -> 2r
    assert "PiSSA initialisation (saved converted to a plain LoRA of rank 2r" in (pissa_runs / "pissa" / "README.md").read_text()
    ids = torch.tensor([[1, 17, 42, 99, 250, 7, 300, 11]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(ids).logits
        untrained = PeftModel.from_pretrained(base, str(pissa_runs / "pissa_lr0")).eval()
        # nothing learned: the converted adapter is dW = B A - B0 A0 = 0 on the original base
        assert (untrained(ids).logits - plain).abs().max().item() < 1e-4
        trained = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval(), str(pissa_runs / "pissa")).eval()
        assert (trained(ids).logits - plain).abs().max().item() > 1e-3  # three steps at 3e-3 moved it


def test_pissa_on_nf4_trains_loads_and_generates(tiny_model, tiny_data, tmp_path):
    run = tmp_path / "pissa-nf4"
    result = run_script(*training_args(tiny_model, tiny_data, run, "--max_steps", "2", "--val_set_size", "16",
                                       "--init_lora_weights", "pissa"), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "adapter_config.json").read_text())["r"] == 32
    assert "close to, not exactly, the trained model" in (run / "README.md").read_text()
    assert not any(p.name.startswith("alpaca-qlora-init-") for p in run.iterdir())
    result = run_script("inference.py", "--adapter", str(run), "--instruction", "Name a colour.",
                        "--max_new_tokens", "4", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("flags, message", [
    (["--init_lora_weights", "loftq", "--double_quant", "false"],
     "--init_lora_weights loftq: peft computes LoftQ on CUDA (or XPU) only"),
    (["--init_lora_weights", "pissa", "--use_dora", "true"], "--init_lora_weights pissa with --use_dora"),
    (["--loftq_iter", "3"], "--loftq_iter 3: only --init_lora_weights loftq iterates"),
])
def test_refused_lora_inits(tiny_model, tiny_data, tmp_path, flags, message):
    run = tmp_path / "refused"
    result = run_script(*training_args(tiny_model, tiny_data, run, "--max_steps", "1", *flags))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not run.exists()


# LoftQ's adapter applies to NF4(W) without double quantization, which peft's base is with one iteration only
# (lora_init.py); each other combination is refused before the CPU refusal, so every machine names it.
@pytest.mark.parametrize("quantization, double_quant, iterations, message", [
    ("none", False, 1, "--init_lora_weights loftq needs --quantization nf4, not none: its adapter applies to the NF4 "
                       "quantization of the base"),
    ("int8", False, 1, "--init_lora_weights loftq needs --quantization nf4, not int8"),
    ("nf4", True, 1, "--init_lora_weights loftq needs --double_quant false: peft quantizes LoftQ's base without double "
                     "quantization (compress_statistics=False)"),
    ("nf4", False, 5, "--loftq_iter 5: LoftQ runs one iteration here (with more, peft's modified base is the NF4 "
                      "quantization of W - AB, not of W"),
])
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_loftq_is_refused_where_its_adapter_would_not_apply_to_the_loaded_base(quantization, double_quant, iterations,
                                                                                message, device):
    from alpaca_qlora.cli import UserError
    from alpaca_qlora.training.config import LoraArguments
    from alpaca_qlora.training.lora_init import check_lora_init

    lora = LoraArguments(init_lora_weights="loftq", loftq_iter=iterations)
    with pytest.raises(UserError) as refused:
        check_lora_init(lora, quantization, double_quant, device, "single", 1)
    assert str(refused.value).startswith(message), str(refused.value)


def test_loftq_iterations_are_refused_without_loftq_and_loftq_runs_as_documented():
    from alpaca_qlora.cli import UserError
    from alpaca_qlora.training.config import LoraArguments
    from alpaca_qlora.training.lora_init import check_lora_init

    for init in ("pissa", "default", "gaussian"):  # PiSSA modifies the base too, but takes no iterations
        with pytest.raises(UserError) as refused:
            check_lora_init(LoraArguments(init_lora_weights=init, loftq_iter=5), "nf4", True, "cpu", "single", 1)
        assert str(refused.value) == "--loftq_iter 5: only --init_lora_weights loftq iterates"
    assert check_lora_init(LoraArguments(init_lora_weights="loftq"), "nf4", False, "cuda", "single", 1) is None
    with pytest.raises(UserError, match="peft computes LoftQ on CUDA"):  # the one combination left, on the CPU
        check_lora_init(LoraArguments(init_lora_weights="loftq"), "nf4", False, "cpu", "single", 1)
