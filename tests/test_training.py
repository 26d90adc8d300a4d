"""The training script end to end on the tiny random Llama and synthetic records (tests/conftest.py):
QLoRA NF4 on the CPU, run folder, config files, resume, merge and 2-process DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alpaca_qlora.cli import run_cli
from alpaca_qlora.modeling import load_base_model
from alpaca_qlora.training.train import main as train_main
from conftest import REPO_ROOT, run_script, training_args


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model, tiny_data) -> Path:
    """A 30-step QLoRA NF4 run; some options come from a YAML config, one flag overrides it.

    It also asks for Liger's kernels, which need a GPU: on the CPU the run must fall back and say so."""
    root = tmp_path_factory.mktemp("train")
    config = root / "run.yaml"
    config.write_text("val_set_size: 40\nlora_r: 8\nmax_steps: 10\neval_steps: 15\nsplit_seed: 7\n")
    output_dir = root / "run"
    result = run_script(*training_args(tiny_model, tiny_data, output_dir, "--config", str(config), "--max_steps", "30",
                                       "--eval_strategy", "steps", "--use_liger_kernel", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "stdout.txt").write_text(result.stdout)
    return output_dir


def test_run_folder_holds_everything(trained_run):
    for name in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "run_config.json", "run_info.json",
                 "train_log.jsonl", "eval_results.json", "loss_curve.png", "val.jsonl", "train_ids.json"]:
        assert (trained_run / name).is_file(), name
    assert (trained_run / "loss_curve.png").stat().st_size > 10_000
    config = json.loads((trained_run / "run_config.json").read_text())
    assert config["lora"]["lora_r"] == 8 and config["data"]["split_seed"] == 7  # from the YAML file
    assert config["train"]["max_steps"] == 30  # the flag beats the file
    assert config["model"]["quantization"] == "nf4"
    info = json.loads((trained_run / "run_info.json").read_text())
    assert info["versions"]["bitsandbytes"] and info["data"]["train_records"] == 360
    assert config["plan"] == info["plan"] and config["plan"]["attention"] in ("packed_sdpa", "sdpa", "packed_varlen")
    if not torch.cuda.is_available():  # --use_liger_kernel falls back, and the plan says why
        assert info["plan"]["fused_kernels"] == "none" and config["train"]["use_liger_kernel"] is True  # as given
        assert "--use_liger_kernel: Liger's Triton kernels need a CUDA GPU" in (trained_run.parent / "stdout.txt").read_text()
    val_ids = [json.loads(line)["id"] for line in (trained_run / "val.jsonl").read_text().splitlines()]
    train_ids = json.loads((trained_run / "train_ids.json").read_text())
    assert len(val_ids) == 40 and not set(val_ids) & set(train_ids)


def test_heldout_loss_falls_and_log_has_throughput(trained_run):
    results = json.loads((trained_run / "eval_results.json").read_text())
    before, after = results["before_training"]["eval_loss"], results["after_training"]["eval_loss"]
    assert after < before - 0.3, (before, after)
    assert results["after_training"]["eval_perplexity"] == pytest.approx(2.718281828 ** after, rel=1e-6)
    log = [json.loads(line) for line in (trained_run / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "loss" in row]
    assert steps[0]["step"] == 1 and steps[-1]["step"] == 30
    assert all(row["tokens_per_second"] > 0 and 0 <= row["padding_share"] < 0.5 for row in steps)
    assert [row["step"] for row in log if "eval_loss" in row] == [15, 30]


def test_adapter_reloads_and_changes_outputs(trained_run, tiny_model):
    adapter_config = json.loads((trained_run / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model.resolve())
    assert {name.split(".")[-1] for name in adapter_config["target_modules"]} >= {"q_proj", "v_proj", "down_proj"}
    weights = load_file(trained_run / "adapter_model.safetensors")
    assert weights and any(float(w.abs().sum()) > 0 for name, w in weights.items() if "lora_B" in name)

    ids = torch.tensor([[1, 365, 1022 % 512, 300, 400, 20]])
    base = load_base_model(str(tiny_model), "nf4", torch.float32).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(trained_run)).eval()
        tuned_logits = tuned(input_ids=ids).logits
    assert (tuned_logits - base_logits).abs().max() > 0.1


def test_merged_model_matches_base_plus_adapter(trained_run, tiny_model, tmp_path):
    result = run_script("-m", "alpaca_qlora.merge", "--adapter", str(trained_run), "--output_dir", str(tmp_path / "merged"), "--dtype", "fp32")
    assert result.returncode == 0, result.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    reference = PeftModel.from_pretrained(base, str(trained_run)).eval()
    ids = torch.tensor([[1, 365, 22, 300, 400, 20, 87, 9]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-4)
    assert not list((tmp_path / "merged").glob("*.bin"))  # safetensors only


def test_existing_run_folder_is_refused(trained_run, tiny_data, capsys):
    before = sorted(p.name for p in trained_run.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train_main(["--data_path", str(tiny_data), "--output_dir", str(trained_run)]))
    assert exit_info.value.code == 2
    assert "is not empty; pass --overwrite_output_dir" in capsys.readouterr().err
    assert sorted(p.name for p in trained_run.iterdir()) == before


def test_val_data_path_is_the_heldout_set_and_a_bad_file_is_one_line(tiny_model, tiny_data, tiny_records, tmp_path, capsys):
    """--val_data_path: the held-out loss is measured on that file's records, all of --data_path trains."""
    from transformers import AutoTokenizer

    from alpaca_qlora.data.synthetic import synthetic_records
    from alpaca_qlora.data.tokenization import tokenize_records

    heldout = [{**record, "id": f"held-{i}"} for i, record in enumerate(synthetic_records(12, seed=5))]
    val_file = tmp_path / "heldout.jsonl"
    val_file.write_text("".join(json.dumps(record) + "\n" for record in heldout))
    output_dir = tmp_path / "run"
    result = run_script(*training_args(tiny_model, tiny_data, output_dir, "--max_steps", "2", "--val_data_path", str(val_file)))
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((output_dir / "run_info.json").read_text())["data"]
    assert (info["train_records"], info["val_records"]) == (400, 12)  # nothing split off --data_path (default 2000 unused)
    assert json.loads((output_dir / "run_config.json").read_text())["data"]["val_data_path"] == str(val_file)
    assert [json.loads(line)["id"] for line in (output_dir / "val.jsonl").read_text().splitlines()] == [r["id"] for r in heldout]
    assert sorted(json.loads((output_dir / "train_ids.json").read_text())) == sorted(r.get("id", i) for i, r in enumerate(tiny_records))
    examples, _ = tokenize_records(heldout, AutoTokenizer.from_pretrained(tiny_model), "alpaca", 256, False)
    answer_tokens = sum(label != -100 for example in examples for label in example["labels"])
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["before_training"]["eval_tokens"] == results["after_training"]["eval_tokens"] == answer_tokens

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(heldout[0]) + "\n" + json.dumps({"instruction": "Add 2 and 3."}) + "\n")
    cases = [(["--val_data_path", str(broken)], f"{broken}: record 1: missing field 'output'"),
             (["--val_data_path", str(tmp_path / "none.jsonl")], f"--val_data_path {tmp_path / 'none.jsonl'}: no such file"),
             (["--val_data_path", str(val_file), "--val_set_size", "0.1"], "both choose the held-out records")]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: train_main(training_args(tiny_model, tiny_data, tmp_path / "bad", *extra)[1:]))
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error and len(error.strip().splitlines()) == 1, error
        assert not (tmp_path / "bad").exists()


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def test_killed_and_resumed_run_equals_uninterrupted_run(tiny_model, tiny_data, tmp_path):
    common = ["--max_steps", "12", "--save_strategy", "steps", "--save_steps", "4", "--val_set_size", "20", "--seed", "3"]
    straight = tmp_path / "straight"
    result = run_script(*training_args(tiny_model, tiny_data, straight, *common))
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = tmp_path / "resumed"
    process = subprocess.Popen([sys.executable, *training_args(tiny_model, tiny_data, resumed, *common)], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (resumed / "checkpoint-4" / "trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (resumed / "adapter_model.safetensors").exists(), "killed too late: the run had finished"
    # As if the kill had also come mid-save and mid-write: a checkpoint without its state, a torn log line.
    (resumed / "checkpoint-8").mkdir(exist_ok=True)
    (resumed / "checkpoint-8" / "adapter_model.safetensors").write_bytes(b"half")
    with (resumed / "train_log.jsonl").open("a") as log:
        log.write('{"loss": 1.2, "step": 9')

    result = run_script(*training_args(tiny_model, tiny_data, resumed, *common, "--resume_from_checkpoint", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    expected, actual = _adapter(straight), _adapter(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-6, rtol=0), name
    # the log has each step once (lines written after the checkpoint were dropped) with the same losses
    def losses(run: Path) -> list[tuple[int, float]]:
        rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        return [(row["step"], round(row["loss"], 5)) for row in rows if "loss" in row]

    assert losses(resumed) == losses(straight)
    # the held-out loss before training survives the interruption, and the after-training one matches
    results = [json.loads((run / "eval_results.json").read_text()) for run in (straight, resumed)]
    assert results[0]["before_training"] == results[1]["before_training"]
    assert results[0]["after_training"]["eval_loss"] == pytest.approx(results[1]["after_training"]["eval_loss"], abs=1e-6)

    # Resuming the finished run changes nothing and says so.
    before = {p.name: p.read_bytes() for p in resumed.iterdir() if p.is_file()}
    again = run_script(*training_args(tiny_model, tiny_data, resumed, *common, "--resume_from_checkpoint", "true"))
    assert again.returncode == 0 and "finished at step 12; nothing to do" in again.stdout
    assert {p.name: p.read_bytes() for p in resumed.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]

    # Stopped during its final evaluation (after checkpoint-12, before the adapter): resumed, it trains no step more.
    (resumed / "adapter_model.safetensors").unlink()
    last = run_script(*training_args(tiny_model, tiny_data, resumed, *common, "--resume_from_checkpoint", "true"))
    assert last.returncode == 0, last.stderr[-3000:]
    assert json.loads((resumed / "eval_results.json").read_text())["finished_at_step"] == 12
    assert losses(resumed) == losses(straight)
    finished = _adapter(resumed)
    assert finished.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(expected[name], finished[name], atol=1e-6, rtol=0), name


def test_two_process_ddp_on_cpu(tiny_model, tiny_data, tmp_path):
    output_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               *training_args(tiny_model, tiny_data, output_dir, "--max_steps", "4", "--val_set_size", "20",
                              "--use_cpu", "--ddp_backend", "gloo", "--per_device_train_batch_size", "4")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = json.loads((output_dir / "eval_results.json").read_text())["adapter_checksum_per_process"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert len(list(output_dir.rglob("adapter_model.safetensors"))) == 1


def test_restart_arguments_resume_a_checkpoint_and_restart_a_run_killed_before_one(tmp_path):
    """What the study and the teacher's student step pass to training_script.py for a folder they find."""
    from alpaca_qlora.run_folder import CHECKPOINT_PREFIX, RUN_CONFIG, TRAINER_STATE, RunFolder

    folder = RunFolder(tmp_path / "run")
    assert folder.restart_arguments() == []  # a new run
    folder.path.mkdir()
    (folder.path / "notes.txt").write_text("the user's")
    assert folder.restart_arguments() == []  # not a run folder: training_script.py refuses it, nothing is overwritten
    folder.file(RUN_CONFIG).write_text("{}")
    assert folder.restart_arguments() == ["--overwrite_output_dir", "true"]  # killed before its first checkpoint
    checkpoint = folder.path / f"{CHECKPOINT_PREFIX}5"
    checkpoint.mkdir()
    assert folder.restart_arguments() == ["--overwrite_output_dir", "true"]  # cut short: no trainer state yet
    (checkpoint / TRAINER_STATE).write_text("{}")
    assert folder.restart_arguments() == ["--resume_from_checkpoint", "true"]


def test_pcg64_dropout_keeps_1_minus_p_scaled_and_its_gradient_is_the_mask():
    """LoRA's CPU dropout: each element kept with probability 1 - p and scaled by 1 / (1 - p), the same mask for the
    same torch seed, and the gradient is the mask times the scale."""
    from alpaca_qlora.training.lora_dropout import PCG64Dropout

    dropout = PCG64Dropout(0.1).train()
    x = torch.rand(1000, 1000) + 1.0  # no zeros: a zero in the output is a dropped element
    x.requires_grad_(True)
    torch.manual_seed(5)
    out = dropout(x)
    kept = out != 0
    share = float(kept.float().mean())
    assert abs(share - (1 - round(0.1 * 65536) / 65536)) < 5 * (0.1 * 0.9 / 1e6) ** 0.5  # 5 standard errors
    assert torch.allclose(out[kept], x[kept] * dropout.scale)
    out.sum().backward()
    assert torch.equal(x.grad, kept.float() * dropout.scale)
    torch.manual_seed(5)
    assert torch.equal(dropout(x) != 0, kept)
    # the columns and rows are not correlated: every row and every column keeps about 90%
    assert kept.float().mean(0).min() > 0.85 and kept.float().mean(1).min() > 0.85
    assert torch.equal(dropout.eval()(x), x)
