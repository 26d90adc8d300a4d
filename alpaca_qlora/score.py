"""`python -m alpaca_qlora.score` (console script `alpaca-score`): evaluate_metrics.py's job, scoring.

The same job as the top-level script, runnable from an installed copy (`pip install .`) in any folder.
"""

from .cli import run_cli
from .scoring.job import main as job_main


def main() -> None:
    run_cli(job_main)


if __name__ == "__main__":
    main()
