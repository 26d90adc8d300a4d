"""python -m alpaca_qlora.rating: the door of the rating page (see command.py)."""

from alpaca_qlora.cli import run_cli
from alpaca_qlora.rating.command import main

run_cli(main)
