"""The blind pairs: generation files read and checked, every pair of files on every prompt, and each annotator's
own order and sides.

- Two or more files from inference.py (batch mode), one line per prompt, answering the same prompts (same ids,
  same instruction and input, and for a conversation the same earlier turns, its `history`). A sweep file (several
  settings per prompt) is refused: split it first.
- An item is (prompt, two files); with k files every prompt gives k(k-1)/2 items.
- Each annotator sees all items in an order, with sides, drawn from a generator seeded by (--seed, annotator
  name), never from the process: a reload, or a restart of the server, shows the same next pair. The next pair is
  the first one in that order the annotator has not rated yet, so leaving and coming back resumes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from ..cli import fail
from ..data.conversations import HISTORY
from ..jsonl import read_jsonl

REQUIRED_TEXT_FIELDS = ("instruction", "prediction")


@dataclass
class Answer:
    prompt_id: Any
    instruction: str
    input: str
    prediction: str
    line: int
    history: list = field(default_factory=list)  # a conversation's turns before the instruction ({"role", "content"})


@dataclass
class GenerationFile:
    given: str  # the path as given on the command line
    path: str  # absolute: what the ratings name
    answers: dict[str, Answer] = field(default_factory=dict)  # by id as text, in file order


@dataclass(frozen=True)
class Item:
    index: int
    prompt_key: str  # the prompt id as text
    first: int  # indices into BlindSet.files, first < second
    second: int


@dataclass(frozen=True)
class Shown:
    """An item as one annotator sees it: which file is A and which is B."""

    item: Item
    a: int
    b: int


def _text(row: dict, name: str, where: str, required: bool) -> str:
    value = row.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        what = "missing" if name not in row else f"{type(value).__name__}, not text"
        fail(f"{where}: not a generations file: field '{name}' is {what} (inference.py --prompts_file ... "
             "--output_file writes them)")
    return value


def _history(row: dict, where: str) -> list:
    """A conversation line's earlier turns (generation/batch.py writes them); none for an Alpaca prompt."""
    turns = row.get(HISTORY, [])
    if not isinstance(turns, list) or not all(isinstance(turn, dict) and isinstance(turn.get("role"), str)
                                              and isinstance(turn.get("content"), str) for turn in turns):
        fail(f"{where}: not a generations file: field '{HISTORY}' must be a list of {{\"role\", \"content\"}} turns")
    return turns


def load_generation_file(given: str) -> GenerationFile:
    path = Path(given)
    if not path.is_file():
        fail(f"{given}: no such file")
    generations = GenerationFile(given=given, path=str(path.resolve()))
    for number, row in read_jsonl(path):
        where = f"{given}:{number}"
        prompt_id = row.get("id")
        if prompt_id in (None, "") or isinstance(prompt_id, (dict, list, bool)):
            fail(f"{where}: not a generations file: field 'id' is {'missing' if 'id' not in row else repr(prompt_id)} "
                 "(inference.py --prompts_file ... --output_file writes it)")
        answer = Answer(prompt_id, *(_text(row, name, where, name in REQUIRED_TEXT_FIELDS)
                                     for name in ("instruction", "input", "prediction")), number, _history(row, where))
        key = str(prompt_id)
        if key in generations.answers:
            fail(f"{where}: id {prompt_id!r} again (first at line {generations.answers[key].line}); blind rating takes "
                 "one answer per prompt: a sweep file holds several settings, write each to a file of its own")
        generations.answers[key] = answer
    if not generations.answers:
        fail(f"{given}: no generations (empty file)")
    return generations


def check_same_prompts(files: list[GenerationFile]) -> None:
    first = files[0]
    for other in files[1:]:
        missing = [key for key in first.answers if key not in other.answers]
        if missing:
            fail(f"{other.given}: no answer for id {first.answers[missing[0]].prompt_id!r} ({len(missing)} id(s) of "
                 f"{first.given} are missing): the files must answer the same prompts")
        extra = [key for key in other.answers if key not in first.answers]
        if extra:
            fail(f"{other.given}:{other.answers[extra[0]].line}: id {other.answers[extra[0]].prompt_id!r} is not in "
                 f"{first.given} ({len(extra)} such id(s)): the files must answer the same prompts")
        for key, answer in first.answers.items():
            theirs = other.answers[key]
            for name in ("instruction", "input", "history"):
                if getattr(theirs, name) != getattr(answer, name):
                    fail(f"{other.given}:{theirs.line}: field '{name}' of id {answer.prompt_id!r} differs from "
                         f"{first.given}:{answer.line}: the files must answer the same prompts")


def annotator_seed(seed: int, annotator: str) -> int:
    """A seed from --seed and the annotator's name, the same in every process (Python's hash() is not)."""
    digest = hashlib.sha256(f"{seed}\0{annotator}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


class BlindSet:
    """The generation files of one blind study and the items to rate."""

    def __init__(self, paths: list[str], seed: int = 0):
        if len(paths) < 2:
            fail(f"blind rating needs two or more generation files, got {len(paths)}")
        resolved = [str(Path(p).resolve()) for p in paths]
        for index, path in enumerate(resolved):
            if path in resolved[:index]:
                fail(f"{paths[index]} is given twice: compare different generation files")
        self.files = [load_generation_file(p) for p in paths]
        check_same_prompts(self.files)
        self.seed = seed
        self.items: list[Item] = []
        for key in self.files[0].answers:
            for first, second in combinations(range(len(self.files)), 2):
                self.items.append(Item(len(self.items), key, first, second))

    @property
    def n_prompts(self) -> int:
        return len(self.files[0].answers)

    def pair_files(self, item: Item) -> tuple[str, str]:
        return self.files[item.first].path, self.files[item.second].path

    def pair_key(self, item: Item) -> tuple[str, frozenset[str]]:
        return item.prompt_key, frozenset(self.pair_files(item))

    def order(self, annotator: str) -> list[Shown]:
        """Every item, in this annotator's order, with this annotator's sides."""
        rng = random.Random(annotator_seed(self.seed, annotator))
        shuffled = rng.sample(self.items, len(self.items))
        shown = []
        for item in shuffled:
            swap = rng.random() < 0.5
            shown.append(Shown(item, item.second if swap else item.first, item.first if swap else item.second))
        return shown

    def shown(self, annotator: str, index: int) -> Shown:
        return next(s for s in self.order(annotator) if s.item.index == index)

    def progress(self, annotator: str, rated: set) -> tuple[int, int]:
        """(items this annotator has rated, items in all)."""
        return sum(self.pair_key(item) in rated for item in self.items), len(self.items)

    def next_item(self, annotator: str, rated: set) -> Shown | None:
        return next((s for s in self.order(annotator) if self.pair_key(s.item) not in rated), None)

    def answer(self, file_index: int, item: Item) -> Answer:
        return self.files[file_index].answers[item.prompt_key]
