"""JSON Lines, read and written one way by every job.

- Lines are split on "\\n" only, never with str.splitlines(): U+2028 and other Unicode line separators may
  sit inside a JSON string.
- Bytes must be UTF-8 (a BOM is allowed); a bad byte, a line that is not JSON or not an object is one
  error naming the file and the line (`path:line: ...`).
- A file that is appended to line by line (generations, ratings) may end in a half-written line when its
  writer was killed. `read_appendable` reports that line without touching the file; `drop_torn_tail`
  removes it, once the caller has recognised the file as its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .cli import fail
from .files import atomic_write_text


def decode_utf8(path: str | os.PathLike, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        fail(f"{path}:{line}: not valid UTF-8 ({error.reason} at byte {error.start})")


def read_bytes(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        fail(f"{path}: is a folder, expected a file")
    except OSError as error:
        fail(f"{path}: cannot read it ({error.strerror or error})")


def parse_lines(path: str | os.PathLike, text: str) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line."""
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            fail(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})")
        if not isinstance(row, dict):
            fail(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSONL file."""
    return parse_lines(path, decode_utf8(path, read_bytes(path)))


def read_objects(path: str | os.PathLike) -> list[dict]:
    return [row for _, row in read_jsonl(path)]


@dataclass
class AppendableFile:
    """A JSONL file that is appended to: its complete lines, and whether a half-written line follows them."""

    path: Path
    rows: list[tuple[int, dict]]
    complete_bytes: int  # the length of the file up to and including its last newline
    tail: bytes  # what follows the last newline: a half-written line when not empty

    @property
    def torn_tail(self) -> bool:
        return bool(self.tail)

    def tail_starts_with(self, prefix: str) -> bool:
        """Whether the half-written line begins as this file's lines do (else it is not a line we wrote)."""
        start = prefix.encode("utf-8")
        return self.tail.startswith(start) or start.startswith(self.tail)

    def tail_is_ours(self, line_start: str, is_our_line: Callable[[dict], bool]) -> bool:
        """Whether `drop_torn_tail` may cut what follows the last newline: nothing, or a line of ours cut short.
        That text must begin as our lines do, and if it is whole JSON (a user's one-line file without a final
        newline, say), `is_our_line` must accept it: a file is recognised as ours before anything touches it."""
        if not self.tail:
            return True
        if not self.tail_starts_with(line_start):
            return False
        try:
            row = json.loads(self.tail.decode("utf-8"))
        except ValueError:  # cut short, as a line is when its writer was killed (UnicodeDecodeError included)
            return True
        return isinstance(row, dict) and is_our_line(row)


def read_appendable(path: str | os.PathLike) -> AppendableFile:
    """The complete lines of a file we append to (none when it does not exist); the file is not changed."""
    path = Path(path)
    if not path.exists():
        return AppendableFile(path, [], 0, b"")
    data = read_bytes(path)
    complete = data[: data.rfind(b"\n") + 1]
    rows = parse_lines(path, decode_utf8(path, complete))
    return AppendableFile(path, rows, len(complete), data[len(complete):])


def drop_torn_tail(appendable: AppendableFile) -> None:
    """Cut a half-written last line (a killed writer) off the file, so appending goes on after a whole line."""
    if appendable.torn_tail:
        with appendable.path.open("r+b") as handle:
            handle.truncate(appendable.complete_bytes)
        print(f"note: {appendable.path}: removed a half-written last line (an interrupted run)")


def dumps(row: Any) -> str:
    """One line: compact, UTF-8 kept as is; non-JSON values (paths) as text."""
    return json.dumps(row, ensure_ascii=False, default=str)


def append_line(handle, row: Any) -> None:
    """Append one line and flush it, so a killed process loses no line that was reported written."""
    handle.write(dumps(row) + "\n")
    handle.flush()


def append_synced(path: str | os.PathLike, row: Any) -> None:
    """Append one line and fsync it: a rating or an answer reported saved survives a killed process or machine."""
    with Path(path).open("a", encoding="utf-8") as handle:
        append_line(handle, row)
        os.fsync(handle.fileno())


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """The whole file at once, atomically."""
    atomic_write_text(path, "".join(dumps(row) + "\n" for row in rows))
