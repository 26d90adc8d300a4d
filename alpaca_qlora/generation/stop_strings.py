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
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteria


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


class StopAtStrings(StoppingCriteria):
    """A row is done once its answer so far holds a stop string. Its attribute is not named `eos_token_id`: `generate`
    takes a criterion with that attribute for an end-of-sequence criterion of its own."""

    def __init__(self, stop_strings, tokenizer, eos_ids: set[int], prompt_width: int):
        self.stop_strings = tuple(stop_strings)
        self.tokenizer = tokenizer  # the text tokenizer (a processor's own)
        self.eos_ids = eos_ids
        self.prompt_width = prompt_width  # the answer begins after this many columns of `input_ids`

    def ended(self, new_ids: list[int]) -> bool:
        """Whether an answer's tokens so far (its end-of-sequence token and what follows it left out) hold a stop string."""
        end = next((i for i, token in enumerate(new_ids) if token in self.eos_ids), len(new_ids))
        return stop_index(decoded_answer(new_ids[:end], self.tokenizer), self.stop_strings) is not None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = [self.ended(row) for row in input_ids[:, self.prompt_width :].tolist()]
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
