"""`python -m alpaca_qlora.judge`: the door to judge/job.py (a model judges pairs of answers in both orders).

A module door, like the rating page's, the teacher's and the study's."""

from ..cli import run_cli
from .job import main

if __name__ == "__main__":
    run_cli(main)
