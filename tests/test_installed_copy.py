"""An installed copy (`pip install .`, not editable) runs the study from any folder: its steps start the jobs from
the installed package (`python -m alpaca_qlora.train` / `.generate`), never a checkout's scripts by path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import REPO_ROOT
from test_experiment import write_config


def test_installed_copy_runs_the_study_from_another_folder(tiny_model, tiny_data, tmp_path):
    source = tmp_path / "source"  # the package and its build file only: the install cannot reach the checkout
    shutil.copytree(REPO_ROOT / "alpaca_qlora", source / "alpaca_qlora", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    venv = tmp_path / "venv"
    # --without-pip: the venv's python uses this environment's pip and setuptools (ensurepip would put an old setuptools,
    # without bdist_wheel, in front of them); the install goes into the venv all the same
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    where = subprocess.run([python, "-c", "import alpaca_qlora; print(alpaca_qlora.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # the installed copy, not the checkout

    config = write_config(tmp_path / "study", tiny_model, tiny_data, budgets=[2], seeds=[1], seeded_budgets=None,
                          quantizations=[], sweep="top_k=1", sweep_records=4)
    study = subprocess.run([str(venv / "bin" / "alpaca-study"), "--config", str(config)], cwd=elsewhere,
                           capture_output=True, text=True, env=env, timeout=900)
    assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]
    assert "-m alpaca_qlora.train" in study.stdout and "-m alpaca_qlora.generate" in study.stdout
    assert str(REPO_ROOT) not in study.stdout
    assert (tmp_path / "study" / "results" / "report.md").is_file()
    assert not any(elsewhere.iterdir())
