"""`python -m alpaca_qlora.experiment` (console script `alpaca-study`): the door to study/experiment.py (the study)."""

from .cli import run_cli
from .study.experiment import main


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
