"""The committed study and moderation reports are exactly what their committed input files give: each is rebuilt
by the project's own check (no model, no data download, no ../shared needed) and must match, line for line."""

from __future__ import annotations

import pytest

from conftest import REPO_ROOT, run_script

STUDIES = ["experiments/stories260k.yaml", "experiments/smollm2.yaml"]


@pytest.mark.parametrize("config", STUDIES, ids=[path.split("/")[-1] for path in STUDIES])
def test_committed_study_report_rebuilds_exactly(config):
    import yaml

    results = (REPO_ROOT / config).parent / yaml.safe_load((REPO_ROOT / config).read_text())["results_dir"]
    if not (results / "generations").is_dir():
        pytest.skip(f"{results} holds results from before generations were committed (the study that replaces them "
                    "has not finished)")
    result = run_script("-m", "alpaca_qlora.study.rebuild", "--config", config, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "identical" in result.stdout


def test_committed_moderation_report_rebuilds_exactly():
    result = run_script("-m", "alpaca_qlora.teacher.moderation", "--config", "experiments/moderation/moderation.yaml",
                        "--check", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "identical" in result.stdout
