"""`python -m alpaca_qlora.generate` (console script `alpaca-generate`): inference.py's job, generation.

The same job as the top-level script, runnable from an installed copy (`pip install .`) in any folder.
"""

from .cli import run_cli
from .generation.job import main as job_main


def main() -> None:
    run_cli(job_main)


if __name__ == "__main__":
    main()
