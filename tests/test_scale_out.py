"""Beyond one process: DDP, FSDP2 and DeepSpeed ZeRO-2/3 through `accelerate launch` with the shipped configs,
as real processes on the CPU (gloo), and the engine mistakes a user can make.

Every engine run here is 2 processes on stories260K with real Alpaca records, killed with SIGKILL after its first
checkpoint and resumed under the same engine. The reference is one process with the same global batch
(1 x 4 against 2 x 2), trained straight through. What must hold:
- the logged losses (steps 1-4, before and after the kill) equal the single process's. Tolerance 1e-4 relative:
  the only difference is the order of float32 additions (the gradient is summed across 2 processes, and the
  loss of each half-batch is added before dividing by the global token count), which moves the 7th significant
  digit (measured: below 1e-6 relative); a wrong batch split, a loss averaged per process instead of per token,
  or a lost update would move the 2nd-3rd digit. LoRA dropout is 0: its masks are random per process.
- the adapter, gathered from the shards and written once by the main process, equals the single process's
  within 1e-4 (absolute, on LoRA weights up to ~0.13) and loads with inference.py. Why not closer: AdamW's step
  m/sqrt(v) does not scale with the gradient, so where a gradient entry is near zero a 1e-7 rounding difference
  can change that entry's step by up to the learning rate (3e-3); measured after 4 steps: at most 4.3e-5 (ZeRO-3,
  LoRA on the fp32 base). A lost, doubled or mis-gathered update would differ by ~1e-3 (one step) or more.
- run_info.json names the engine and the world size; eval_results.json holds the held-out loss summed over
  both processes' shares (equal to the single process's).
Learning rate constant: the killed run is asked for more steps than the resumed one, so that it cannot finish
before it is killed; with a constant rate that changes nothing of the first 4 steps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alpaca_qlora.cli import run_cli
from alpaca_qlora.training.train import main as train_main
from conftest import REPO_ROOT, run_script, training_args

CONFIGS = REPO_ROOT / "configs" / "accelerate"
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
STEPS = 4
COMMON = ("--max_steps", str(STEPS), "--logging_steps", "1", "--lora_dropout", "0", "--lr_scheduler_type", "constant",
          "--val_set_size", "16", "--max_seq_length", "128", "--seed", "5", "--lora_r", "8",
          "--compute_dtype", "fp32",  # auto is bf16 4-bit layers for one process on a bf16 CPU, fp32 under FSDP/DeepSpeed
          "--loss", "full_logits")  # the loss FSDP and ZeRO must use, for the reference too: the comparison is of engines
# only (the default loss rounds the 7th digit of the loss differently, which AdamW can turn into 1e-4 on a weight
# whose gradient is near zero: seen once, ZeRO-3 against the one-process default)
LOSS_RTOL = 1e-4
ADAPTER_ATOL = 1e-4
# (test id, accelerate config, quantization, engine and ZeRO stage expected in run_info.json)
ENGINES = [
    ("ddp", "ddp_cpu.yaml", "nf4", ("ddp", None)),
    ("fsdp-qlora", "fsdp_cpu.yaml", "nf4", ("fsdp", None)),
    ("zero2-qlora", "deepspeed_zero2_cpu.yaml", "nf4", ("deepspeed", 2)),
    ("zero3-qlora", "deepspeed_zero3_cpu.yaml", "nf4", ("deepspeed", 3)),
    ("zero3-lora-fp32", "deepspeed_zero3_cpu.yaml", "none", ("deepspeed", 3)),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env(**extra) -> dict:
    return {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            **extra}


def launch(config: str, args: list[str], port: int | None = None, launcher: tuple[str, ...] = (),
           module: str = "accelerate.commands.launch") -> subprocess.Popen:
    """accelerate launch (or alpaca_qlora.launch: the same, its config checked first) with a shipped config."""
    command = [sys.executable, "-m", module, "--config_file", str(CONFIGS / config),
               "--main_process_port", str(port or free_port()), *launcher, *args]
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would stall a process nobody reads yet
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    process.log = log
    LAUNCHED.append(process)
    return process


def output_of(process: subprocess.Popen) -> str:
    process.log.seek(0)
    return process.log.read()


LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_process_left():
    """Every launcher a test started is ended with all its processes, whatever the test's outcome."""
    yield
    while LAUNCHED:
        process = LAUNCHED.pop()
        if process.poll() is None:
            kill_all(process)



def finish(process: subprocess.Popen, timeout: int = 300) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(process)
        pytest.fail(f"timed out:\n{output_of(process)[-3000:]}")
    return output_of(process)


def kill_all(process: subprocess.Popen) -> None:
    """SIGKILL to the launcher and every process it started (torchrun starts each worker in a session of its own,
    so the launcher's process group does not reach them)."""
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    psutil.wait_procs(children, timeout=30)
    process.wait()


def logged_losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows if "loss" in row]


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory, model_dir, small_data):
    """One process, global batch 4, straight through: the reference, per quantization (started on demand)."""
    root = tmp_path_factory.mktemp("single")
    done = {}

    def run(quantization: str) -> Path:
        if quantization not in done:
            output = root / quantization
            result = run_script(*training_args(model_dir, small_data, output, *COMMON, "--quantization", quantization,
                                               "--per_device_train_batch_size", "4"), env=ENV)
            assert result.returncode == 0, result.stderr[-3000:]
            done[quantization] = output
        return done[quantization]

    return run


@pytest.mark.parametrize("name,config,quantization,expected", ENGINES, ids=[engine[0] for engine in ENGINES])
def test_engine_two_processes_kill_resume_equal_single(name, config, quantization, expected, single_runs, model_dir,
                                                       small_data, tmp_path, capsys):
    reference = single_runs(quantization)
    run = tmp_path / name
    args = training_args(model_dir, small_data, run, *COMMON, "--quantization", quantization,
                         "--per_device_train_batch_size", "2", "--save_strategy", "steps", "--save_steps", "2")
    # Killed (SIGKILL to every process) as soon as its first checkpoint is whole (trainer_state.json is written last,
    # after every process's shards); asked for 2000 steps so that it cannot finish first. DDP goes through
    # python -m alpaca_qlora.launch (accelerate's launch_command after checking the config), the others through
    # accelerate launch itself.
    module = "alpaca_qlora.launch" if name == "ddp" else "accelerate.commands.launch"
    process = launch(config, [*args, "--max_steps", "2000"], module=module)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoint-2" / "trainer_state.json").exists():
            assert process.poll() is None, f"ended before its first checkpoint:\n{output_of(process)[-3000:]}"
            assert time.time() < deadline, "no checkpoint in 240 s"
            time.sleep(0.02)
    finally:
        kill_all(process)
    assert not (run / "adapter_model.safetensors").exists(), "killed too late: the run had finished"

    output = finish(launch(config, [*args, "--resume_from_checkpoint", "true"], module=module))
    assert (run / "adapter_model.safetensors").is_file(), output[-4000:]

    # the same losses as one process with the same global batch, before and after the kill
    expected_losses, losses = logged_losses(reference), logged_losses(run)
    assert [step for step, _ in losses] == [step for step, _ in expected_losses] == list(range(1, STEPS + 1))
    for (step, want), (_, got) in zip(expected_losses, losses):
        assert got == pytest.approx(want, rel=LOSS_RTOL), (step, want, got)

    # one standard PEFT adapter, gathered, equal to the single process's after a kill and resume
    expected_weights, weights = adapter(reference), adapter(run)
    assert weights.keys() == expected_weights.keys()
    assert max(float(value.abs().max()) for key, value in weights.items() if "lora_B" in key) > 1e-3  # it trained
    for key in weights:
        assert torch.allclose(weights[key].float(), expected_weights[key].float(), atol=ADAPTER_ATOL, rtol=0), key
    assert len(list(run.glob("adapter_model.safetensors"))) == 1
    assert not list(run.glob("adapter_model.safetensors.*")) and not list(run.glob(".adapter-*"))

    info = json.loads((run / "run_info.json").read_text())
    assert (info["engine"]["engine"], info["engine"]["zero_stage"]) == expected
    assert info["engine"]["world_size"] == 2 and info["plan"]["world_size"] == 2
    results = json.loads((run / "eval_results.json").read_text())
    single = json.loads((reference / "eval_results.json").read_text())
    for moment in ("before_training", "after_training"):  # every process's share of the held-out set, summed
        assert results[moment]["eval_tokens"] == single[moment]["eval_tokens"]
        assert results[moment]["eval_loss"] == pytest.approx(single[moment]["eval_loss"], rel=LOSS_RTOL)
    assert len(results["peak_memory_gib_per_process"]) == 2
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    answer = run_script("inference.py", "--adapter", str(run), "--instruction", "Name a colour.", "--max_new_tokens", "8",
                        env=ENV)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert f"+ adapter {run}" in answer.stderr

    # its checkpoints resume under the same engine and number of processes only: one process is refused
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train_main([*args[1:], "--resume_from_checkpoint", "true"]))
    assert exit_info.value.code == 2
    assert "; resume with the same engine and number of processes (now: one process)" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def test_two_nodes_on_one_machine(model_dir, small_data, tmp_path):
    """Two launches of one process each, as two machines would: --nnodes 2, --node_rank 0/1, rendezvous on 127.0.0.1
    (accelerate's --num_machines 2 --machine_rank R --main_process_ip; it runs torchrun with those flags)."""
    run = tmp_path / "two-nodes"
    port = free_port()
    args = training_args(model_dir, small_data, run, *COMMON, "--quantization", "nf4", "--per_device_train_batch_size", "2")
    nodes = [launch("fsdp_cpu.yaml", args, port, ("--num_processes", "2", "--num_machines", "2", "--machine_rank", str(rank),
                                                  "--main_process_ip", "127.0.0.1"))
             for rank in (0, 1)]
    try:
        outputs = [finish(node) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_all(node)
    assert all(node.returncode == 0 for node in nodes), outputs[0][-3000:] + outputs[1][-3000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["engine"] == {**info["engine"], "engine": "fsdp", "world_size": 2, "nodes": 2}
    assert "plan: fsdp x2 (2 nodes)" in outputs[0]
    assert (run / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# Mistakes: one line naming the file and field, exit 2, nothing written, on every process
# ---------------------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def deepspeed_json(tmp_path: Path, **changes) -> Path:
    values = json.loads((REPO_ROOT / "configs" / "deepspeed" / "zero3_cpu.json").read_text())
    for key, value in changes.items():
        if key == "stage":
            values["zero_optimization"]["stage"] = value
        else:
            values[key] = value
    return write(tmp_path / "ds.json", json.dumps(values))


BAD = [
    # (id, environment as accelerate launch would set it, extra flags, words of the one line)
    ("ds-missing", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "{tmp}/nowhere.json"}, [],
     "accelerate config deepspeed_config.deepspeed_config_file {tmp}/nowhere.json: no such file"),
    ("ds-malformed", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "{tmp}/broken.json"}, [],
     "{tmp}/broken.json: not valid JSON (Expecting"),
    ("ds-stage-5", {}, ["--deepspeed", "{stage5}"], "{stage5}: zero_optimization.stage 5 does not exist"),
    ("accelerate-stage-7", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "7"}, [],
     "accelerate config deepspeed_config.zero_stage 7 does not exist"),
    ("ds-batch", {"WORLD_SIZE": "2"}, ["--deepspeed", "{batch5}", "--per_device_train_batch_size", "2"],
     "{batch5}: train_batch_size 5 is not divisible by the world size 2"),
    ("fsdp-version-1", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, [],
     "accelerate config fsdp_config: fsdp_version 1: this toolkit runs FSDP2"),
    ("fsdp-state-dict", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_STATE_DICT_TYPE": "LOCAL_STATE_DICT"}, [],
     "accelerate config fsdp_config.fsdp_state_dict_type LOCAL_STATE_DICT"),
    ("fsdp-wrap-class", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
                         "FSDP_TRANSFORMER_CLS_TO_WRAP": "GPTBlock"}, ["--val_set_size", "0", "--quantization", "none"],
     "accelerate config fsdp_config.fsdp_transformer_layer_cls_to_wrap GPTBlock: no such module in this model"),
    ("fsdp-uint8", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, ["--bnb_4bit_quant_storage", "uint8"],
     "--bnb_4bit_quant_storage uint8 under FSDP2: 4-bit weights stored as uint8 cannot be sharded"),
    ("zero3-int8", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, ["--quantization", "int8"],
     "--quantization int8 under DeepSpeed ZeRO-3: bitsandbytes' 8-bit weights cannot be sharded; what runs:"),
    ("zero3-bf16-cpu", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, ["--compute_dtype", "bf16"],
     "bf16 under DeepSpeed ZeRO-3 on the CPU: transformers runs 16-bit mixed precision on the CPU only with use_cpu"),
]


@pytest.mark.parametrize("case,variables,flags,words", BAD, ids=[case[0] for case in BAD])
def test_engine_mistakes_are_one_line(case, variables, flags, words, tiny_model, tiny_data, tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available() and case == "zero3-bf16-cpu":
        pytest.skip("a CPU-only refusal")
    write(tmp_path / "broken.json", '{"zero_optimization": {"stage": 3,}}')
    names = {"tmp": tmp_path, "stage5": deepspeed_json(tmp_path, stage=5)}
    names["batch5"] = write(tmp_path / "batch5.json", json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": 5}))
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in variables.items():
        monkeypatch.setenv(key, value.format(**names))
    output_dir = tmp_path / "run"
    argv = training_args(tiny_model, tiny_data, output_dir, *[flag.format(**names) for flag in flags])[1:]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train_main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words.format(**names) in lines[0], err
    assert not output_dir.exists()


def test_a_mistake_stops_every_process_without_a_hang(tiny_model, tiny_data, tmp_path):
    """Through the launcher: both processes say the same one line and exit 2 before any collective (a process that
    reached one would wait for the other until the timeout), and nothing is written."""
    stage5 = deepspeed_json(tmp_path, stage=5)
    config = write(tmp_path / "zero3.yaml", (CONFIGS / "deepspeed_zero3_cpu.yaml").read_text()
                   .replace("configs/deepspeed/zero3_cpu.json", str(stage5)))
    output_dir = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
               str(free_port()), *training_args(tiny_model, tiny_data, output_dir)]
    started = time.time()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env(), capture_output=True, text=True, timeout=180)
    assert result.returncode != 0 and time.time() - started < 150
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {stage5}: zero_optimization.stage 5 does not exist; DeepSpeed's ZeRO stages are 0, 1, 2 and 3"] * 2
    assert "exitcode  : 2" in result.stderr  # the launcher's summary: the processes exited 2 (no traceback from them)
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr
    assert not output_dir.exists()


LAUNCH_BAD = [
    # (id, config file text or None for a missing file, extra launcher flags, the one line's words)
    ("missing", None, [], "--config_file {config}: no such file"),
    ("malformed", "distributed_type: FSDP\nnum_processes: [\n", [], "--config_file {config}: cannot parse it as YAML"),
    ("type", "distributed_type: MULTI_TPU_POD\n", [], "--config_file {config}: distributed_type 'MULTI_TPU_POD' does not exist"),
    ("machines", "distributed_type: MULTI_GPU\nnum_processes: 3\nnum_machines: 2\n", [],
     "--config_file {config}: num_processes 3 is not divisible by num_machines 2"),
    ("flag-machines", "distributed_type: MULTI_GPU\nnum_processes: 4\n", ["--num_machines", "3"],
     "--config_file {config}: num_processes 4 is not divisible by num_machines 3"),
    ("fsdp1", "distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 1\n", [],
     "--config_file {config}: fsdp_config.fsdp_version 1: this toolkit runs FSDP2"),
    ("fsdp-state", "distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n  fsdp_state_dict_type: LOCAL_STATE_DICT\n", [],
     "--config_file {config}: fsdp_config.fsdp_state_dict_type LOCAL_STATE_DICT: FSDP2 saves"),
    ("ds-json", "distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: {tmp}/none.json\n", [],
     "--config_file {config}: deepspeed_config.deepspeed_config_file {tmp}/none.json: no such file"),
    ("ds-stage-in-json", "distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: {tmp}/ds.json\n", [],
     "{tmp}/ds.json: zero_optimization.stage 5 does not exist"),
    ("ds-stage", "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 9\n", [],
     "--config_file {config}: deepspeed_config.zero_stage 9 does not exist"),
]


@pytest.mark.parametrize("case,text,flags,words", LAUNCH_BAD, ids=[case[0] for case in LAUNCH_BAD])
def test_launcher_config_mistakes_are_one_line(case, text, flags, words, tmp_path, capsys):
    from alpaca_qlora.launch import main as launch_main

    deepspeed_json(tmp_path, stage=5)
    config = tmp_path / "accelerate.yaml"
    if text is not None:
        config.write_text(text.format(tmp=tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: launch_main(["--config_file", str(config), *flags, "training_script.py", "--output_dir",
                                     str(tmp_path / "run")]))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(lines) == 1
    assert words.format(config=config, tmp=tmp_path) in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("processes_in,flags", [("config", []), ("flag", ["--num_processes", "2"])])
def test_launcher_refuses_a_deepspeed_batch_the_processes_cannot_divide(processes_in, flags, tmp_path):
    """3 sequences a step over 2 processes: refused by the launcher itself, before any process starts (each process
    would refuse it, and the launcher would end in torch elastic's traceback)."""
    batch_of_3 = deepspeed_json(tmp_path, stage=2, train_batch_size=3)
    text = (CONFIGS / "deepspeed_zero2_cpu.yaml").read_text().replace("configs/deepspeed/zero2_cpu.json", str(batch_of_3))
    config = write(tmp_path / "zero2.yaml", text if processes_in == "config" else text.replace("num_processes: 2", "num_processes: 1"))
    command = [sys.executable, "-m", "alpaca_qlora.launch", "--config_file", str(config), *flags,
               "training_script.py", "--output_dir", str(tmp_path / "run")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1:] == [
        f"error: --config_file {config}: deepspeed_config.deepspeed_config_file {batch_of_3}: train_batch_size 3 is not "
        "divisible by the world size 2"]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:") or "Traceback" in line] == \
        result.stderr.splitlines()[-1:]
    assert not (tmp_path / "run").exists()
