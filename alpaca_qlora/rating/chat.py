"""Chat mode: one model answers on the page, the answer streams as it is generated, and a 1-5 rating of it is
appended to the same ratings file the terminal's /rate writes (evaluate_metrics.py --ratings reads both).

Every answer is seeded with the seed on the page, so an answer is reproduced by its saved settings. One answer is
generated at a time; a second request waits for the first. A client that goes away (a closed tab, a dropped
connection) stops its answer at the next token, so it holds up no one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from typing import Any, AsyncIterator

import torch
from transformers import AsyncTextIteratorStreamer, StoppingCriteria, StoppingCriteriaList

from ..cli import UserError
from ..generation.generate import generate_answers, prompt_for, seed_everything
from ..generation.interactive import AnsweredQuestion, RatingsFile, rating_row
from ..generation.settings import SETTING_NAMES, GenerationSettings, parse_setting_value, resolve_settings
from ..generation.source import ModelSource
from ..generation.stop_strings import StreamedUntilStop
from ..scoring.inputs import RATING_RANGE
from .pages import MAX_ANNOTATOR, MAX_COMMENT
from .checks import RequestError, annotator_name, bad_request, text_field
from .store import now

MAX_PROMPT_CHARS = 20_000


class UntilCancelled(StoppingCriteria):
    """Every sequence is done once `cancelled` is set."""

    def __init__(self, cancelled: threading.Event):
        self.cancelled = cancelled

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)


class AnswerStreamer(AsyncTextIteratorStreamer):
    """The answer's text as it is generated, up to its first stop string (none of a stop string is sent)."""

    def __init__(self, tokenizer, stop_strings=()):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.until_stop = StreamedUntilStop(stop_strings)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        super().on_finalized_text(self.until_stop.add(text, stream_end), stream_end)


class ChatSession:
    def __init__(self, model, tokenizer, source: ModelSource, defaults: GenerationSettings, ratings: RatingsFile):
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.defaults = defaults
        resolve_settings(defaults)  # the command line's settings were checked before the model loaded
        self.ratings = ratings
        self.answers: dict[int, AnsweredQuestion] = {}
        self.rated: set[int] = set()
        self.lock = threading.Lock()  # answer numbers, the answers kept, the ratings file
        self.generating = threading.Lock()  # one generate call at a time

    # -- requests ------------------------------------------------------------------------------
    def settings_from(self, given: Any) -> dict:
        """The resolved settings of a request: each value parsed as `/set NAME=VALUE` is (empty: auto for top_k,
        top_p, temperature and do_sample, no stop strings for stop, the command line's value for the others), then
        checked as flags are."""
        if not isinstance(given, dict):
            raise bad_request("field 'settings' must be an object of setting names to values")
        changes = {}
        for name, text in given.items():
            if name not in SETTING_NAMES:
                raise bad_request(f"unknown setting '{name}' (choose from {', '.join(SETTING_NAMES)})")
            if not isinstance(text, (str, int, float)) or isinstance(text, bool):
                raise bad_request(f"setting '{name}' must be given as text")
            text = str(text).strip()
            # empty: auto for the optional knobs (none for stop), else the command line's value (shown in the field)
            default = GenerationSettings.__dataclass_fields__[name].default
            default = getattr(self.defaults, name) if default is not None else None
            try:
                changes[name] = default if text == "" else parse_setting_value(name, text)
            except UserError as error:
                raise bad_request(str(error)) from None
        try:
            return resolve_settings(replace(self.defaults, **changes))
        except UserError as error:
            raise bad_request(str(error)) from None

    def stream(self, body: Any) -> tuple[int, AsyncIterator[dict]]:
        """Check a generate request (errors raise before anything streams); then (answer id, the events)."""
        if not isinstance(body, dict):
            raise bad_request("expected a JSON object with instruction, input and settings")
        instruction = text_field(body, "instruction", MAX_PROMPT_CHARS, required=True).strip()
        context = text_field(body, "input", MAX_PROMPT_CHARS).strip()
        resolved = self.settings_from(body.get("settings", {}))
        with self.lock:
            index = self.ratings.take_index()
        return index, self._events(index, instruction, context, resolved)

    async def _events(self, index: int, instruction: str, context: str, resolved: dict) -> AsyncIterator[dict]:
        """The answer's events. When the server stops iterating them (the client left, so Starlette cancels the
        stream), the `finally` sets `cancelled` and the generation ends at its next token."""
        record = {"instruction": instruction, "input": context, "output": ""}
        prompt = prompt_for(record, self.source.prompt_template, self.tokenizer)
        # beam search cannot stream (transformers refuses a streamer with beams): its answer comes at the end
        streamer = AnswerStreamer(self.tokenizer, resolved.get("stop") or ()) if resolved["num_beams"] == 1 else None
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        outcome: dict[str, Any] = {}

        def work() -> None:
            with self.generating:
                try:
                    seed_everything(resolved["seed"])
                    started = time.perf_counter()
                    [answer] = generate_answers(self.model, self.tokenizer, [prompt], resolved, streamer=streamer,
                                                stopping_criteria=StoppingCriteriaList([UntilCancelled(cancelled)]))
                    outcome["answer"], outcome["seconds"] = answer, time.perf_counter() - started
                except Exception as error:  # reported to the page; the server goes on
                    outcome["error"] = error
                    if streamer is not None:
                        streamer.end()
            try:
                loop.call_soon_threadsafe(finished.set)
            except RuntimeError:  # the server has stopped meanwhile: no one waits
                pass

        try:
            yield {"event": "start", "answer_id": index, "settings": resolved}
            threading.Thread(target=work, name=f"generate-{index}", daemon=True).start()
            if streamer is not None:
                async for text in streamer:
                    if text:
                        yield {"event": "text", "text": text}
            await finished.wait()
        finally:
            cancelled.set()  # the answer is over, or its reader has gone: stop generating
        if "error" in outcome:
            yield {"event": "error", "message": f"generation failed: {type(outcome['error']).__name__}: "
                                                f"{outcome['error']}"}
            return
        answer = outcome["answer"]
        with self.lock:
            self.answers[index] = AnsweredQuestion(index, instruction, context, answer.text, dict(resolved))
        yield {"event": "done", "answer_id": index, "text": answer.text, "new_tokens": answer.new_tokens,
               "seconds": round(outcome["seconds"], 3)}

    def rate(self, body: Any) -> dict:
        """Append the rating of a finished answer; the answer's text comes from the server, never the browser."""
        if not isinstance(body, dict):
            raise bad_request("expected a JSON object with answer_id, rating, comment and annotator")
        index, score = body.get("answer_id"), body.get("rating")
        if not isinstance(index, int) or isinstance(index, bool):
            raise bad_request("field 'answer_id' must be an integer")
        low, high = RATING_RANGE
        if not isinstance(score, int) or isinstance(score, bool) or not low <= score <= high:
            raise bad_request(f"field 'rating' must be a whole number from {low} to {high}")
        comment = text_field(body, "comment", MAX_COMMENT).strip()
        typed = text_field(body, "annotator", MAX_ANNOTATOR)
        annotator = annotator_name(typed, MAX_ANNOTATOR) if typed.strip() else None
        with self.lock:
            answered = self.answers.get(index)
            if answered is None:
                raise RequestError(404, f"no finished answer [{index}] to rate")
            if index in self.rated:
                raise RequestError(409, f"answer [{index}] is already rated")
            row = rating_row(answered, score, comment, self.source)
            row.update({"annotator": annotator, "time": now()})
            self.ratings.append(row)
            self.rated.add(index)
        return {"id": index, "rating": score}
