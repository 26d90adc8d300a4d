"""Atomic writes (a reader never sees a half-written file or folder), JSON files read with one line on any mistake,
a file's sha256, and what an --overwrite may delete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .cli import fail


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike) -> str:
    """A file's sha256, read a megabyte at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Reading JSON: the one owner (run folders, the study's files, the teacher's options, the moderation results)
# ---------------------------------------------------------------------------------------------
def read_json_file(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        fail(f"{path}: cannot read it as JSON ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    value = read_json_file(path)
    if not isinstance(value, dict):
        fail(f"{path}: expected a JSON object ({what}), found {type(value).__name__}")
    return value


def as_json(value: Any) -> Any:
    """A value as it reads back from a JSON file (tuples as lists, paths and other objects as text): how options
    given now are compared with the options a folder recorded (a resumed run, a resumed teacher job)."""
    return json.loads(json.dumps(value, default=str))


def first_changed_option(recorded: dict, given: dict, sections: Iterable[str], may_change: Iterable[str] = (),
                         only_recorded: bool = False) -> tuple[str, str, Any, Any] | None:
    """(section, name, recorded value, value now) of the first option given now that differs from the options a
    folder recorded, both as JSON reads them; None when they agree. Names in `may_change` are not compared; with
    `only_recorded`, neither are options the record lacks (a folder written before they existed). The one rule of
    "resume only the same job": a resumed training run, a resumed teacher job."""
    may_change = set(may_change)
    given = as_json(given)
    for section in sections:
        saved = recorded.get(section, {})
        for name, value in given[section].items():
            if name in may_change or (only_recorded and name not in saved):
                continue
            if as_json(saved.get(name)) != value:
                return section, name, saved.get(name), value
    return None


@contextmanager
def staging_folder(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A temporary folder inside `parent` (the destination's filesystem, so moving out of it is a rename).

    Whatever is written into it appears at its destination whole or not at all; it is removed whatever happens."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        os.chmod(path, 0o777 & ~_current_umask())  # mkdtemp makes 0700; give the usual folder mode
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# --overwrite: a command replaces what it wrote, never anything else
# ---------------------------------------------------------------------------------------------
def is_plain_name(name: object) -> bool:
    """A file or folder name inside a folder (no path: a recorded list of names never reaches outside it)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def remove_written(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Delete, in `folder`, the files and folders a command wrote there, named by that command: those only.

    Every --overwrite deletes through here (training, merge, scoring, the teacher): whatever else the folder holds
    (a user's notes, ratings, another tool's output) stays as it is, byte for byte."""
    folder = Path(folder)
    for name in names:
        if not is_plain_name(name):
            raise ValueError(f"not a name inside {folder}: {name!r}")
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def remove_stale_staging(parent: str | os.PathLike, prefix: str) -> None:
    """Delete the aside folders (staging_folder's) that a killed run of the same command left in `parent`."""
    for stale in Path(parent).glob(f"{prefix}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def move_in(staging: Path, folder: Path, last: str) -> list[str]:
    """Move everything in `staging` into `folder` (renames: one filesystem), each over the entry of its name, `last`
    (the file that marks the output complete) last; returns the names moved. Nothing else in `folder` is touched."""
    names = sorted(p.name for p in staging.iterdir() if p.name != last) + [last]
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = folder / name
        if target.is_dir() and not target.is_symlink():  # a rename replaces a file, not a folder that holds files
            shutil.rmtree(target)
        os.replace(staging / name, target)
    return names
