"""`python -m alpaca_qlora.train` (console script `alpaca-train`): training_script.py's job, QLoRA fine-tuning.

The same job as the top-level script, runnable from an installed copy (`pip install .`) in any folder.
"""

from .cli import run_cli
from .training.train import main as job_main


def main() -> None:
    run_cli(job_main)


if __name__ == "__main__":
    main()
