"""The blind ratings file: one JSON line per pairwise choice, appended, flushed and fsynced the moment it is given.

A line (the schema evaluate_metrics.py --pairwise_ratings reads):

    {"kind": "pairwise", "prompt_id": 7,
     "files": ["/abs/base.jsonl", "/abs/tuned.jsonl"],          # the two generation files, in command-line order
     "sides": {"A": "/abs/tuned.jsonl", "B": "/abs/base.jsonl"},  # which file was shown on which side
     "choice": "A",                                             # "A", "B", "tie" or "both_bad"
     "winner_file": "/abs/tuned.jsonl",                         # the file chosen; null for tie and both_bad
     "comment": "", "annotator": "alice", "time": "2026-05-01T12:00:00+00:00"}

Files are named by their absolute path when rated. Nothing here imports the web server, so the scoring can read
the same file with the same checks.

A model as judge (python -m alpaca_qlora.judge) writes the same lines, two per pair (one in each order: each file
once on side A), with more fields: `judge` (the model, the template's name and sha256, the prompt format, the
precision and the generation files), `probabilities` (of "A", "B" and "tie", summing to 1), `logprobs` (each
label's log-probability after the prompt) and `answers_sha256` (A and B: the sha256 of what the judge read of each
answer, so a resume on answers written again is refused; lines written before it lack it); its `choice` is the
most probable label and its annotator `judge:MODEL#HASH`.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from ..cli import UserError, fail
from ..jsonl import append_synced, drop_torn_tail, read_appendable, read_jsonl

KIND = "pairwise"
LINE_START = '{"kind": "pairwise", '  # how every line begins (its first key): a half-written one too
CHOICES = ("A", "B", "tie", "both_bad")
DECISIVE = ("A", "B")
JUDGE_LABELS = ("A", "B", "tie")  # a judge's verdict is one of these (never "both_bad")
PROBABILITY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PairwiseRating:
    prompt_id: Any  # as the generation files have it (an integer stays an integer)
    files: tuple[str, str]
    sides: dict[str, str]
    choice: str
    annotator: str
    comment: str
    time: str
    line: int
    judge: Optional[dict[str, Any]] = None  # a model's verdict: who judged and how (None: a person's choice)
    probabilities: Optional[dict[str, float]] = None  # a model's: of A, B and tie
    answers_sha256: Optional[dict[str, str]] = None  # a model's: A and B -> what it read of each answer, hashed

    @property
    def is_judge(self) -> bool:
        return self.judge is not None

    @property
    def winner_file(self) -> Optional[str]:
        return self.sides[self.choice] if self.choice in DECISIVE else None

    @property
    def pair_key(self) -> tuple[str, frozenset[str]]:
        """What was compared, whoever rated it and whatever the sides: the prompt and the two files."""
        return str(self.prompt_id), frozenset(self.files)

    @property
    def line_key(self) -> tuple:
        """What one line stands for: a person's line the pair; a judge's line the pair in one order (the file on side
        A), since a judge rates every pair twice, once in each order."""
        return (*self.pair_key, self.sides["A"]) if self.is_judge else self.pair_key

    @property
    def outcome(self) -> str:
        """The choice in terms of files, comparable across annotators: the winner's path, 'tie' or 'both_bad'."""
        return self.winner_file or self.choice


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def rating_row(prompt_id: Any, files: tuple[str, str], sides: dict[str, str], choice: str, comment: str,
               annotator: str) -> dict[str, Any]:
    winner = sides[choice] if choice in DECISIVE else None
    return {"kind": KIND, "prompt_id": prompt_id, "files": list(files), "sides": {"A": sides["A"], "B": sides["B"]},
            "choice": choice, "winner_file": winner, "comment": comment, "annotator": annotator, "time": now()}


def parse_pairwise_rating(row: dict[str, Any], where: str, line: int = 0) -> PairwiseRating:
    """A checked line; one-line error naming `where` (file:line) and the field otherwise."""
    if row.get("kind") != KIND:
        fail(f"{where}: not a pairwise rating (field 'kind' is {row.get('kind')!r}, expected {KIND!r}); "
             "blind ratings come from python -m alpaca_qlora.rating blind, a judge's from python -m alpaca_qlora.judge")
    prompt_id = row.get("prompt_id")
    if prompt_id in (None, "") or isinstance(prompt_id, (dict, list, bool)):
        fail(f"{where}: field 'prompt_id' must be a text or a number, got {prompt_id!r}")
    files = row.get("files")
    if (not isinstance(files, list) or len(files) != 2 or not all(isinstance(f, str) and f for f in files)
            or files[0] == files[1]):
        fail(f"{where}: field 'files' must list two different file paths, got {files!r}")
    sides = row.get("sides")
    if not isinstance(sides, dict) or set(sides) != {"A", "B"} or {sides["A"], sides["B"]} != set(files):
        fail(f"{where}: field 'sides' must map A and B to the two 'files', got {sides!r}")
    choice = row.get("choice")
    if choice not in CHOICES:
        fail(f"{where}: field 'choice' must be one of {', '.join(CHOICES)}, got {choice!r}")
    expected_winner = sides[choice] if choice in DECISIVE else None
    if row.get("winner_file") != expected_winner:
        fail(f"{where}: field 'winner_file' is {row.get('winner_file')!r} but choice {choice} with these sides means "
             f"{expected_winner!r}")
    annotator = row.get("annotator")
    if not isinstance(annotator, str) or not annotator.strip():
        fail(f"{where}: field 'annotator' must be a non-empty text, got {annotator!r}")
    comment = row.get("comment", "")
    if not isinstance(comment, str):
        fail(f"{where}: field 'comment' must be text, got {type(comment).__name__}")
    judge, probabilities = (_judge_fields(row, where, choice) if "judge" in row else (None, None))
    answers = row.get("answers_sha256")
    if answers is not None and (not isinstance(answers, dict) or set(answers) != {"A", "B"}
                                or not all(isinstance(digest, str) for digest in answers.values())):
        fail(f"{where}: field 'answers_sha256' must map A and B to the sha256 of each answer, got {answers!r}")
    return PairwiseRating(prompt_id=prompt_id, files=(files[0], files[1]), sides={"A": sides["A"], "B": sides["B"]},
                          choice=choice, annotator=annotator, comment=comment, time=str(row.get("time", "")), line=line,
                          judge=judge, probabilities=probabilities, answers_sha256=answers)


def _judge_fields(row: dict[str, Any], where: str, choice: str) -> tuple[dict[str, Any], dict[str, float]]:
    """A judge's line: who judged, and the probabilities its choice is the most probable label of."""
    judge = row["judge"]
    if not isinstance(judge, dict) or not isinstance(judge.get("model"), str) or not judge["model"].strip():
        fail(f"{where}: field 'judge' must be an object naming the judge's 'model', got {judge!r}")
    probabilities = row.get("probabilities")
    if not isinstance(probabilities, dict) or set(probabilities) != set(JUDGE_LABELS) or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and 0 <= p <= 1
            for p in probabilities.values()):
        fail(f"{where}: field 'probabilities' of a judge's line must give A, B and tie each a probability in [0, 1], "
             f"got {probabilities!r}")
    if abs(sum(probabilities.values()) - 1) > PROBABILITY_TOLERANCE:
        fail(f"{where}: field 'probabilities' must sum to 1, they sum to {sum(probabilities.values())!r}")
    most_probable = max(JUDGE_LABELS, key=lambda label: probabilities[label])
    if choice != most_probable:
        fail(f"{where}: a judge's choice is its most probable label ({most_probable}), the line says {choice}")
    return judge, {label: float(probabilities[label]) for label in JUDGE_LABELS}


def is_rating_line(row: dict[str, Any]) -> bool:
    try:
        parse_pairwise_rating(row, "")
    except UserError:
        return False
    return True


def read_ratings(path: str | os.PathLike, flag: str) -> list[PairwiseRating]:
    """Every rating of a pairwise ratings file (read, not changed); errors name the flag, file and line."""
    if not Path(path).is_file():
        fail(f"{flag} {path}: no such file")
    return [parse_pairwise_rating(row, f"{flag} {path}:{number}", number) for number, row in read_jsonl(path)]


class RatingsStore:
    """The ratings file the page appends to, and which pairs each annotator has already rated.

    Opening it checks every line already there (a file of another kind is refused, before anything is written);
    a half-written last line left by a killed server is cut off before the first new line is appended, and only
    such a line: a last line without a newline that is not the start of a rating (a user's one-line file) is
    refused too."""

    def __init__(self, path: str | os.PathLike, flag: str = "--ratings_file"):
        self.path = Path(path)
        if self.path.is_dir():
            fail(f"{flag} {path} is a folder")
        self.existing = read_appendable(self.path)
        self.ratings = [parse_pairwise_rating(row, f"{flag} {self.path}:{number}", number) for number, row in self.existing.rows]
        if not self.existing.tail_is_ours(LINE_START, is_rating_line):
            fail(f"{flag} {self.path}: its last line (with no newline at its end) is not a pairwise rating; blind "
                 f"ratings come from python -m alpaca_qlora.rating blind: choose another {flag}")
        self.rated: dict[str, set[tuple]] = {}  # a person's pairs; a judge's pairs in each order (line_key)
        for rating in self.ratings:
            self.rated.setdefault(rating.annotator, set()).add(rating.line_key)
        self.lock = threading.Lock()
        self.saved = 0

    def has_rated(self, annotator: str, key: tuple) -> bool:
        return key in self.rated.get(annotator, set())

    def rated_by(self, annotator: str) -> set[tuple]:
        with self.lock:  # a copy: other requests may be appending
            return set(self.rated.get(annotator, set()))

    def annotators(self) -> list[str]:
        with self.lock:
            return sorted(self.rated)

    def append(self, row: dict[str, Any]) -> bool:
        """Write one rating, flushed and fsynced; False (nothing written) if the annotator already rated the pair (a
        judge: the pair in this order)."""
        rating = parse_pairwise_rating(row, str(self.path))  # never write a line the reader would refuse
        with self.lock:
            if self.has_rated(rating.annotator, rating.line_key):
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.saved == 0:
                drop_torn_tail(self.existing)
            append_synced(self.path, row)
            self.saved += 1
            self.ratings.append(rating)
            self.rated.setdefault(rating.annotator, set()).add(rating.line_key)
        return True
