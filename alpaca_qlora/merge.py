"""`python -m alpaca_qlora.merge`: the door to training/merge.py (merge an adapter into its base)."""

from .cli import run_cli
from .training.merge import main

if __name__ == "__main__":
    run_cli(main)
