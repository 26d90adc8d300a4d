"""What the server refuses, and the checks of what a browser sends (shared by both pages)."""

from __future__ import annotations

import unicodedata
from typing import Any


class RequestError(Exception):
    """A request the server refuses: an HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, back: str = "/"):
        super().__init__(message)
        self.status = status
        self.back = back  # where the error page links to


def bad_request(message: str) -> RequestError:
    return RequestError(400, message)


def text_field(body: dict[str, Any], name: str, limit: int, required: bool = False) -> str:
    value = body.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise bad_request(f"field '{name}' must be text")
    if len(value) > limit:
        raise bad_request(f"field '{name}' is longer than {limit} characters")
    if required and not value.strip():
        raise bad_request(f"field '{name}' is empty")
    return value


def whole_number(text: str, limit: int) -> int | None:
    """The value of ASCII digits below `limit`, else None. (int() also reads other digits, e.g. '²' passes
    str.isdigit() and then fails, and refuses numbers of thousands of digits: a request must not reach it.)"""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > len(str(limit)) or int(text) >= limit:
        return None
    return int(text)


def shown_value(text: str, limit: int = 40) -> str:
    """A value for an error message, cut short: a request may send a megabyte of it."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def annotator_name(value: Any, limit: int) -> str:
    """A name as typed, trimmed: 1 to `limit` printable characters."""
    if not isinstance(value, str) or not value.strip():
        raise bad_request("an annotator name is needed")
    name = value.strip()
    if len(name) > limit:
        raise bad_request(f"the annotator name is longer than {limit} characters")
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise bad_request("the annotator name has control characters")
    return name
