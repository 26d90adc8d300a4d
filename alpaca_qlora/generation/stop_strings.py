"""Stop strings (--stop): an answer ends before the first stop string it holds.

An untuned base model asked in the Alpaca format writes an answer and then goes on with the next
"### Instruction:" of an example it makes up; `--stop "### Instruction:"` ends the answer there. One rule, one
owner (`stop_index`): a stop string is looked for in the answer's text (its tokens decoded as the answer is,
`decoded_answer`) after the text's leading whitespace, and the answer is the text before the earliest one found
(`cut_at_stop`). Generation watches for it (StopAtStrings, a stopping criterion: a row that has written one ends,
and in segments leaves the batch), the answer is cut at it (generate.extract_answer), and a streamed answer shows
up to it (StreamedUntilStop).

Written by hand rather than with transformers' StopStringCriteria (`generate(stop_strings=..., tokenizer=...)`):
that one matches the whole token sequence, prompt included, against the vocabulary's token strings. The Alpaca
prompt ends with "### Response:" and a base model's answer often begins with a newline, so `--stop "\\n"` would end
it before its first word; here a stop string counts only inside the answer, in the very text that is cut. It also
keeps the stop string in the output and does not tell segments.py which rows have ended.

Answers are decoded without special tokens, so a stop string that holds one of the tokenizer's special tokens would
never be found: check_stop_strings refuses it with one line once the tokenizer is known (generation ends at the
end-of-sequence token by itself).
"""

from __future__ import annotations

import json

import torch
from transformers import StoppingCriteria

from ..cli import fail

# Tokens read beyond a stop string's own bytes at the start of StopAtStrings' tail window: its first tokens may decode
# otherwise than inside the whole answer (a character cut in the middle, a dropped leading space, a space that the
# tokenizer's clean-up removes), and the stop string must lie after them.
TAIL_MARGIN = 8


def stop_index(text: str, stop_strings) -> int | None:
    """Where the earliest stop string in `text` begins, looking after the text's leading whitespace; None: none."""
    start = len(text) - len(text.lstrip())
    found = [index for index in (text.find(stop, start) for stop in stop_strings) if index >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stop_strings) -> str:
    """The text before its first stop string (all of it when it holds none)."""
    index = stop_index(text, stop_strings)
    return text if index is None else text[:index]


def decoded_answer(answer_ids: list[int], tokenizer) -> str:
    """The text of an answer's tokens (those before its end-of-sequence token), not yet stripped or cut."""
    return tokenizer.decode(answer_ids, skip_special_tokens=True)


def tokens_to_stop(answer_ids: list[int], tokenizer, stop_strings) -> int:
    """How many of the answer's tokens it took to write its first stop string (the token completing it included).
    Generation ends at that token, so this counts back from the end, usually one step."""
    count = len(answer_ids)
    while count > 1 and stop_index(decoded_answer(answer_ids[: count - 1], tokenizer), stop_strings) is not None:
        count -= 1
    return count


def skipped_tokens(tokenizer) -> tuple[set[str], set[int]]:
    """The texts and ids of the tokens that decoding with skip_special_tokens=True leaves out (decoded_answer): the
    tokenizer's special tokens (a Python tokenizer's rule) and its added tokens marked special (a fast tokenizer's)."""
    added = {index: token for index, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
             if getattr(token, "special", False)}
    texts = set(tokenizer.all_special_tokens) | {getattr(token, "content", str(token)) for token in added.values()}
    return {text for text in texts if text}, set(tokenizer.all_special_ids) | set(added)


def check_stop_strings(stop_strings, tokenizer, where: str = "--stop") -> None:
    """One line for a stop string that holds a special token of `tokenizer` (the text tokenizer): answers are decoded
    without special tokens, so it would never be found."""
    texts, _ = skipped_tokens(tokenizer)
    for stop in stop_strings or ():
        token = next((text for text in sorted(texts, key=len, reverse=True) if text in stop), None)
        if token is not None:
            what = "is a special token" if token == stop else f"holds {token}, a special token"
            fail(f"{where} {json.dumps(stop, ensure_ascii=False)} {what} of the tokenizer; answers are decoded without "
                 "special tokens, so it would never be found (generation already ends at the end-of-sequence token, "
                 f"{tokenizer.eos_token})")


def answer_end(new_ids: list[int], eos_ids) -> int:
    """Where an answer's tokens end: at its first end-of-sequence token, else after the last."""
    return min((new_ids.index(token) for token in eos_ids if token in new_ids), default=len(new_ids))


def tail_start(new_ids: list[int], end: int, skipped_ids: set[int], count: int) -> int:
    """The position from which new_ids[:end] holds `count` tokens that decoding keeps (0 when it holds fewer)."""
    kept = 0
    for position in range(end - 1, -1, -1):
        kept += new_ids[position] not in skipped_ids
        if kept == count:
            return position
    return 0


class StopAtStrings(StoppingCriteria):
    """A row is done once its answer so far holds a stop string. Its attribute is not named `eos_token_id`: `generate`
    takes a criterion with that attribute for an end-of-sequence criterion of its own.

    Asked at every step, it reads each row's last tokens only (ended_at_tail), not the whole answer: decoding every
    row's whole answer at every step costs the square of the answer's length."""

    def __init__(self, stop_strings, tokenizer, eos_ids: set[int], prompt_width: int):
        check_stop_strings(stop_strings, tokenizer)
        self.stop_strings = tuple(stop_strings)
        self.tokenizer = tokenizer  # the text tokenizer (a processor's own)
        self.eos_ids = eos_ids
        self.prompt_width = prompt_width  # the answer begins after this many columns of `input_ids`
        self.skipped_ids = skipped_tokens(tokenizer)[1]
        # Every token that decoding keeps gives at least one byte, so a stop string completed by the last token lies
        # within the last (its bytes) kept tokens; the margin keeps it clear of the window's first tokens.
        self.window = max(len(stop.encode("utf-8")) for stop in self.stop_strings) + TAIL_MARGIN

    def ended(self, new_ids: list[int]) -> bool:
        """Whether an answer's tokens so far (its end-of-sequence token and what follows it left out) hold a stop string."""
        end = answer_end(new_ids, self.eos_ids)
        return stop_index(decoded_answer(new_ids[:end], self.tokenizer), self.stop_strings) is not None

    def ended_at_tail(self, new_ids: list[int]) -> bool:
        """ended(new_ids), read from the answer's last `window` kept tokens, for an answer that held no stop string one
        token earlier (every row `generate` still runs: a row that held one has ended, and what is answered for it
        afterwards changes nothing). A stop string the last token completed lies in that window's text. A stop string
        found there with text before it is past the answer's leading whitespace; found with only whitespace (or a
        character cut at the window's start) before it, the whole answer decides, by stop_index's rule."""
        end = answer_end(new_ids, self.eos_ids)
        start = tail_start(new_ids, end, self.skipped_ids, self.window)
        if start == 0:  # the window is the whole answer
            return self.ended(new_ids)
        text = decoded_answer(new_ids[start:end], self.tokenizer)
        found = [index for index in (text.find(stop) for stop in self.stop_strings) if index >= 0]
        if not found:
            return False
        if text[: min(found)].replace("\ufffd", "").strip():
            return True
        return self.ended(new_ids)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = [self.ended_at_tail(row) for row in input_ids[:, self.prompt_width :].tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def held_back(text: str, stop_strings) -> int:
    """How many characters at the end of `text` could be the beginning of a stop string."""
    return max((length for stop in stop_strings for length in range(1, len(stop)) if text.endswith(stop[:length])),
               default=0)


class StreamedUntilStop:
    """A streamed answer shown up to its first stop string: text that could be the beginning of one is held back until
    it is not, so no part of a stop string is ever shown. Without stop strings every piece passes unchanged."""

    def __init__(self, stop_strings):
        self.stop_strings = tuple(stop_strings)
        self.text = ""  # everything streamed so far
        self.shown = 0  # how many characters of it have been shown

    def add(self, piece: str, end: bool = False) -> str:
        """The text to show now, given the next streamed piece (`end`: the stream is over, nothing is held back)."""
        self.text += piece
        visible = cut_at_stop(self.text, self.stop_strings)
        if not end and len(visible) == len(self.text):
            visible = visible[: len(visible) - held_back(visible, self.stop_strings)]
        new = visible[self.shown :]
        self.shown = max(self.shown, len(visible))
        return new
