"""`python -m alpaca_qlora.teacher`: the door to teacher/job.py (a teacher writes QA pairs to train a student).

A module door, like the rating page's and the study's: the three top-level scripts are the toolkit's original
jobs; later jobs live in the package and are started with `python -m`, so nothing new is added at the top."""

from ..cli import run_cli
from .job import main

if __name__ == "__main__":
    run_cli(main)
