"""Shared fixtures. Tests that need ../shared (real data, real tiny model) skip without it, except
under CI (CI=true), where its absence is a failure."""

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


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = f"{path} is missing (the read-only ../shared folder beside the checkout)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


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


def run_script(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a top-level script of the repo as a user would."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def training_args(model_dir: Path, data: Path, output_dir: Path, *extra: str) -> list[str]:
    """A short, fast QLoRA run on the real tiny model."""
    return [
        "training_script.py", "--base_model", str(model_dir), "--data_path", str(data),
        "--output_dir", str(output_dir), "--max_seq_length", "256", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3", "--warmup_steps", "0",
        "--logging_steps", "2", "--save_strategy", "no", "--eval_strategy", "no", "--dataloader_num_workers", "0",
        *extra,
    ]
