"""Running the toolkit's jobs as subprocesses, as a user runs them, for the pipelines that chain them (the study,
the moderation experiment): one runner, one record of wall times.

Each job runs as `python -m alpaca_qlora.<job>` from the installed package (never a script by a checkout's path),
so an installed copy (`pip install .`) runs the pipelines from any folder.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .cli import USER_ERROR_EXIT_CODE, fail
from .files import atomic_write_json, read_json_object

TRAIN_JOB = "alpaca_qlora.train"  # training_script.py's job
GENERATE_JOB = "alpaca_qlora.generate"  # inference.py's job
SCORE_JOB = "alpaca_qlora.score"  # evaluate_metrics.py's job
TEACHER_JOB = "alpaca_qlora.teacher"
JUDGE_JOB = "alpaca_qlora.judge"


@dataclass
class Timings:
    """Wall seconds of every step, kept across restarts: each leg of a step (a run stopped and resumed) adds its
    time, whether it finished or failed; a skipped step keeps what it recorded. A process killed outright
    (SIGKILL, power) cannot record its last leg."""

    path: Path

    def read(self) -> dict[str, float]:
        return read_json_object(self.path, "the wall seconds of each step") if self.path.is_file() else {}

    def add(self, step: str, seconds: float) -> None:
        recorded = self.read()
        atomic_write_json(self.path, {**recorded, step: round(recorded.get(step, 0.0) + seconds, 1)})

    def record(self, step: str, seconds: float) -> None:
        """A step that is redone whole each time (scoring): its last time."""
        atomic_write_json(self.path, {**self.read(), step: round(seconds, 1)})


STEP_EXIT_SECONDS = 10  # a stopped step's process is asked to end (SIGTERM), then killed after this long


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def stopped_by_sigterm_too():
    """SIGTERM (`kill PID`) stops a step as Ctrl-C does. A pipeline started in the background from a script
    (`nohup python -m alpaca_qlora.experiment ... &`) ignores SIGINT, as the shell starts background commands, so
    `kill` is how it is stopped; by default that ended the process at once, leaving the step's process running and
    its time unrecorded (seen in the SmolLM2 study: legs of a training run missing from timings.json)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run_step(command: list[str]) -> int:
    """The step's exit code. Stopped (Ctrl-C, or SIGTERM under stopped_by_sigterm_too), the step's process is asked to
    end, killed after STEP_EXIT_SECONDS, and waited for before the interrupt goes on: none is left behind."""
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=STEP_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def run_job(title: str, module: str, arguments: list[str], timings: Timings) -> None:
    """`python -m module arguments` as a user runs it; a refusal (exit 2) is not told to resume, a failure is.
    Stopped (Ctrl-C or `kill`), the step's leg is recorded and the pipeline exits 130, to resume with the same
    command."""
    command = [sys.executable, "-m", module, *arguments]
    print(f"[run] {title}\n      {' '.join(command[1:])}", flush=True)
    started = time.time()
    try:
        with stopped_by_sigterm_too():
            returncode = run_step(command)
    finally:
        timings.add(title, time.time() - started)
    if returncode == USER_ERROR_EXIT_CODE:  # the script refused its input: running it again would refuse it again
        fail(f"{title} refused the command shown (exit code {returncode}, the error above): fix what it names "
             "(a flag --NAME is the study config's training.NAME or NAME) and run the study again")
    if returncode != 0:
        fail(f"{title} failed (exit code {returncode}); run the same command again to resume")
    print(f"[done] {title} in {time.time() - started:.0f} s", flush=True)
