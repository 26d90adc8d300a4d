"""Interactive mode, for human evaluation: ask, watch the answer stream, change settings, rate answers.

Every rating is appended and flushed to the ratings file the moment it is given, so leaving the
session in any way (Ctrl-D, Ctrl-C, /quit, a closed terminal) loses none of them.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import TextStreamer

from ..cli import UserError
from ..jsonl import append_synced, drop_torn_tail, read_appendable
from ..scoring.inputs import RATING_RANGE
from ..vision import text_tokenizer
from .generate import generate_answers, prompt_for, seed_everything
from .settings import GenerationSettings, parse_setting_value, resolve_settings, settings_label
from .source import ModelSource
from .stop_strings import StreamedUntilStop, check_stop_strings, cut_at_stop

RATINGS_FILE = "ratings.jsonl"
LINE_START = '{"id": '  # how every ratings line begins (rating_row's first key): a half-written one too
TRIPLE_QUOTE = '"""'

HELP = f"""\
Type an instruction and press Enter: the answer streams below it.
  {TRIPLE_QUOTE}                 start a multi-line message; a line ending in {TRIPLE_QUOTE} ends it
  /input TEXT         input (context) for the next instruction; /input alone clears it
  /set NAME=VALUE ... change decoding settings, e.g. /set top_k=10 temperature=0.7
                      (auto puts top_k, top_p, temperature or do_sample back to its default)
                      stop= takes the rest of the line: /set stop=### Instruction:  (end answers before it);
                      several, or a newline, as JSON: /set stop=["\\n\\n", "###"]; /set stop=none: no stop strings
  /settings           show the decoding settings
  /rate N [comment]   rate the last answer from 1 (bad) to 5 (good); saved at once
  /help               this text
  /quit or Ctrl-D     leave (Ctrl-C too; Ctrl-C while an answer streams stops only that answer)"""


def default_ratings_path(source: ModelSource) -> Path:
    """Beside the generations: in the adapter's run folder, else in the current folder."""
    return Path(source.adapter) / RATINGS_FILE if source.adapter else Path(RATINGS_FILE)


class CollectingStreamer(TextStreamer):
    """Prints the answer as it is generated, up to its first stop string, and keeps it: an answer stopped with Ctrl-C
    can still be rated."""

    def __init__(self, tokenizer, stop_strings=()):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.until_stop = StreamedUntilStop(stop_strings)

    @property
    def text(self) -> str:
        """The answer so far, before its first stop string."""
        return cut_at_stop(self.until_stop.text, self.until_stop.stop_strings)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        super().on_finalized_text(self.until_stop.add(text, stream_end), stream_end)


class RatingsFile:
    """Append-only ratings JSONL; answers are numbered on from the highest index already in it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"--ratings_file {path} is a folder")
        self.existing = read_appendable(self.path)
        for number, row in self.existing.rows:
            if not is_rating_line(row):
                raise UserError(f"--ratings_file {self.path}:{number}: not a rating (no rating/prediction); "
                                "choose another --ratings_file")
        if not self.existing.tail_is_ours(LINE_START, is_rating_line):  # a user's one-line file is not cut
            raise UserError(f"--ratings_file {self.path}: its last line (with no newline at its end) is not a "
                            "rating; choose another --ratings_file")
        indices = [row.get("id") for _, row in self.existing.rows if isinstance(row.get("id"), int)]
        self.next_index = max(indices, default=0) + 1
        self.saved = 0

    def take_index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.saved == 0:
            drop_torn_tail(self.existing)
        append_synced(self.path, row)
        self.saved += 1


@dataclass
class AnsweredQuestion:
    index: int
    instruction: str
    input: str
    prediction: str
    settings: dict
    stopped: bool = False  # Ctrl-C stopped the answer: what was written so far is what gets rated


def is_rating_line(row: dict) -> bool:
    return {"rating", "prediction"} <= set(row)


def rating_row(answered: AnsweredQuestion, score: int, comment: str, source: ModelSource) -> dict:
    """One line of the ratings file (the terminal's /rate and the page's chat write the same)."""
    return {
        "id": answered.index, "instruction": answered.instruction, "input": answered.input,
        "prediction": answered.prediction, "rating": score, "comment": comment, "settings": answered.settings,
        "base_model": source.base_model, "adapter": source.adapter, "precision": source.precision(),
        **({"stopped": True} if answered.stopped else {}),
    }


def read_message(prompt: str) -> str:
    """One message: a line, or several between triple quotes. Raises EOFError at the end of the input."""
    lines = [input(prompt)]
    while "\n".join(lines).count(TRIPLE_QUOTE) % 2 == 1:
        lines.append(input("... "))
    return "\n".join(lines).replace(TRIPLE_QUOTE, "").strip()


STOP_ITEM = re.compile(r"(?:^|\s)stop=")


def parse_set_command(argument: str) -> dict:
    """'/set top_k=10 stop=### Instruction:' -> {'top_k': 10, 'stop': ['### Instruction:']}: each NAME=VALUE parsed as
    flags are; stop= takes the rest of the line, as a stop string may hold spaces (settings.parse_stop_text)."""
    if not argument:
        raise UserError("/set NAME=VALUE ..., e.g. /set top_k=10 temperature=0.7")
    stop = STOP_ITEM.search(argument)
    items = argument[: stop.start()].split() if stop else argument.split()
    changes = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"/set {item}: expected NAME=VALUE")
        changes[name] = parse_setting_value(name, value)
    if stop:
        changes["stop"] = parse_setting_value("stop", argument[stop.end() :])
    return changes


def parse_rating_command(text: str) -> tuple[int, str]:
    """'4 clear but short' -> (4, 'clear but short')."""
    low, high = RATING_RANGE
    score, _, comment = text.strip().partition(" ")
    if score not in {str(n) for n in range(low, high + 1)}:
        raise UserError(f"a rating is a whole number from {low} to {high} followed by an optional comment, got '{text.strip()}'")
    return int(score), comment.strip()


class Session:
    def __init__(self, model, tokenizer, source: ModelSource, settings: GenerationSettings, ratings: RatingsFile, rate_each: bool):
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.settings = settings
        self.resolved = resolve_settings(settings)
        self.ratings = ratings
        self.rate_each = rate_each
        self.pending_input = ""
        self.last: AnsweredQuestion | None = None

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        adapter = self.source.adapter or "none (untuned base)"
        print(f"model {self.source.base_model}, adapter {adapter}, template {self.source.prompt_template}")
        print(f"ratings go to {self.ratings.path}. /help for commands, Ctrl-D to leave.")
        seed_everything(self.resolved["seed"])
        try:
            self.loop()
        except (EOFError, KeyboardInterrupt):
            print()
        print(f"bye: {self.ratings.saved} rating(s) saved to {self.ratings.path}")

    def loop(self) -> None:
        while True:
            message = read_message(">>> ")
            if not message:
                continue
            if message.startswith("/"):
                if not self.command(message):
                    return
                continue
            if self.answer(message) and self.rate_each:
                self.ask_rating()

    # -- commands ------------------------------------------------------------------------------
    def command(self, message: str) -> bool:
        """Run one /command; False means leave."""
        name, _, argument = message.partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit", "/bye"):
            return False
        handlers = {"/help": lambda: print(HELP), "/settings": self.show_settings, "/set": lambda: self.set(argument),
                    "/input": lambda: self.set_input(argument), "/rate": lambda: self.rate(argument)}
        if name not in handlers:
            print(f"error: unknown command {name}; /help lists them")
            return True
        try:
            handlers[name]()
        except UserError as error:
            print(f"error: {error}")
        return True

    def show_settings(self) -> None:
        print(settings_label(self.resolved))

    def set(self, argument: str) -> None:
        changes = parse_set_command(argument)
        settings = replace(self.settings, **changes)
        resolved = resolve_settings(settings)  # a bad combination keeps the old settings
        check_stop_strings(resolved.get("stop"), text_tokenizer(self.tokenizer))
        self.settings, self.resolved = settings, resolved
        if "seed" in changes:
            seed_everything(resolved["seed"])
        self.show_settings()

    def set_input(self, argument: str) -> None:
        self.pending_input = argument
        print("input set for the next instruction" if argument else "input cleared")

    def rate(self, argument: str) -> None:
        if self.last is None:
            raise UserError("nothing to rate yet: ask a question first")
        score, comment = parse_rating_command(argument)
        self.save_rating(score, comment)

    def ask_rating(self) -> None:
        while True:
            text = input("rate 1-5 [comment], Enter to skip> ").strip()
            if not text:
                return
            try:
                self.save_rating(*parse_rating_command(text))
                return
            except UserError as error:
                print(f"error: {error}")

    def save_rating(self, score: int, comment: str) -> None:
        self.ratings.append(rating_row(self.last, score, comment, self.source))
        print(f"rated [{self.last.index}] {score}/5")

    # -- answering -----------------------------------------------------------------------------
    def answer(self, instruction: str) -> bool:
        """Stream the answer (beams print it at the end); False if Ctrl-C stopped it (the part written stays rateable)."""
        record = {"instruction": instruction, "input": self.pending_input, "output": ""}
        prompt = prompt_for(record, self.source.prompt_template, self.tokenizer)
        streamer = (CollectingStreamer(self.tokenizer, self.resolved.get("stop") or ())
                    if self.resolved["num_beams"] == 1 else None)
        started = time.perf_counter()
        try:
            [answer] = generate_answers(self.model, self.tokenizer, [prompt], self.resolved, streamer=streamer)
        except KeyboardInterrupt:
            partial = streamer.text.strip() if streamer is not None else ""
            index = self.ratings.take_index()
            self.last = AnsweredQuestion(index, instruction, self.pending_input, partial, dict(self.resolved), stopped=True)
            self.pending_input = ""
            print(f"\n[{index}] stopped; /rate 1-5 [comment] rates the part written")
            return False
        if streamer is None:
            print(answer.text)
        index = self.ratings.take_index()
        self.last = AnsweredQuestion(index, instruction, self.pending_input, answer.text, dict(self.resolved))
        self.pending_input = ""
        empty = " (an empty answer: the model ended at once)" if not answer.text else ""
        print(f"[{index}] {answer.new_tokens} tokens in {time.perf_counter() - started:.1f}s{empty}; /rate 1-5 [comment]")
        return True


def run_interactive(model, tokenizer, source: ModelSource, settings: GenerationSettings, ratings: RatingsFile, rate_each: bool) -> None:
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    Session(model, tokenizer, source, settings, ratings, rate_each).run()
