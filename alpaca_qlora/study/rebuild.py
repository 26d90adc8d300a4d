"""Rebuild a study's report from its committed files and check that it is exactly the committed one.

    python -m alpaca_qlora.study.rebuild --config experiments/smollm2.yaml

Reads only results_dir (generations, per-record scores, the runs' small files, timings; see committed.py):
BLEU and ROUGE-L are recomputed from the texts and checked against the per-record values on file, every interval,
p-value and table is recomputed, and report.md and metrics.json are compared with the committed ones. Exit 0 when
they are identical, 1 with the first differing lines otherwise, 2 for a missing or malformed file.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from ..cli import fail, run_cli
from ..scoring.metrics import load_scorers
from .committed import load_study_data
from .config import load_study_config
from .report import render_report, render_summary
from .scores import metric_config


def differences(committed: Path, rebuilt: str) -> list[str]:
    if not committed.is_file():
        fail(f"{committed}: missing; nothing to check against")
    return list(difflib.unified_diff(committed.read_text(encoding="utf-8").splitlines(), rebuilt.splitlines(),
                                     str(committed), "rebuilt", lineterm="", n=0))


def rebuild(config_path: str) -> list[str]:
    config = load_study_config(config_path, {})
    data = load_study_data(config, load_scorers(metric_config(config), with_bertscore=False))
    results_dir = Path(config.results_dir)
    return differences(results_dir / "report.md", render_report(data)) + \
        differences(results_dir / "metrics.json", render_summary(data))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: fail(message)  # type: ignore[method-assign]
    parser.add_argument("--config", required=True, help="the study's YAML/JSON config (its results_dir is checked)")
    args = parser.parse_args(argv)
    found = rebuild(args.config)
    if found:
        print("\n".join(found[:60]))
        print(f"{args.config}: the committed report differs from its rebuild ({len(found)} diff lines)", file=sys.stderr)
        sys.exit(1)
    print(f"{args.config}: report.md and metrics.json rebuilt from the committed files, identical")


if __name__ == "__main__":
    run_cli(main)
