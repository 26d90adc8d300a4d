"""`python -m alpaca_qlora.experiment`: the door to study/experiment.py (the whole study)."""

from .cli import run_cli
from .study.experiment import main

if __name__ == "__main__":
    run_cli(main)
