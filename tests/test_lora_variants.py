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
