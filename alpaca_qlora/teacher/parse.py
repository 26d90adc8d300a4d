"""Reading the teacher's raw output. Never raises: what cannot be read is counted and kept, with the reason.

Questions: the teacher is asked for one question per line (templates.py). A line counts as a question when,
after its numbering (`1.`, `2)`, `(3)`), bullet (`-`, `*`, `•`) or prefix (`Q:`, `Question 2:`) is removed, it
ends with a question mark; other lines (preambles, blank lines, answers the teacher added) are skipped. An output
that is a JSON list of strings is read as the list. An output with no question in it is unparsed.

Answers: the whole output, less a leading `Answer:` / `A:` label and surrounding quotes; empty answers are left
to the filters (filters.py), which count them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

QUESTION_PREFIX = re.compile(
    r"^\s*(?:\(?\d{1,3}[.)]\s*|[-*•]\s+)?(?:\*\*)?(?:q(?:uestion)?\s*\d{0,3}\s*[:.)-])?\s*(?:\*\*)?\s*", re.IGNORECASE)
ANSWER_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:a|answer)\s*[:.-]\s*(?:\*\*)?\s*", re.IGNORECASE)
EXPECTED_QUESTIONS = "one question per line (numbered, bulleted or 'Q:'), each ending with '?', or a JSON list of strings"


@dataclass
class ParsedQuestions:
    questions: list[str]
    skipped_lines: list[str] = field(default_factory=list)  # non-empty lines that were not questions
    error: str | None = None  # why nothing could be read (None when at least one question was found)


def clean_question(line: str) -> str:
    text = QUESTION_PREFIX.sub("", line, count=1).strip().strip('"').strip()
    return " ".join(text.split())


def from_json_list(raw: str) -> list[str] | None:
    text = raw.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [" ".join(item.split()) for item in value if item.strip()]
    return None


def parse_questions(raw: str, limit: int) -> ParsedQuestions:
    """At most `limit` distinct questions from the teacher's output, in order."""
    if not isinstance(raw, str) or not raw.strip():
        return ParsedQuestions([], error="empty output")
    listed = from_json_list(raw)
    candidates = listed if listed is not None else [clean_question(line) for line in raw.split("\n")]
    questions, skipped, seen = [], [], set()
    for candidate in candidates:
        if not candidate:
            continue
        if not candidate.endswith("?") or len(candidate) < 3:
            skipped.append(candidate)
            continue
        if candidate.lower() not in seen and len(questions) < limit:
            seen.add(candidate.lower())
            questions.append(candidate)
    if not questions:
        return ParsedQuestions([], skipped, error=f"no question found (expected {EXPECTED_QUESTIONS})")
    return ParsedQuestions(questions, skipped)


def clean_answer(raw: str) -> str:
    if not isinstance(raw, str):
        return ""
    text = ANSWER_PREFIX.sub("", raw.strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text
