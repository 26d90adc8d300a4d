"""The command-line contract every script shares.

- A user's mistake (a flag, a file, a record) is one line on stderr, `error: ...`, and exit code 2:
  never a traceback, never a usage dump.
- Options come from typed dataclasses (HfArgumentParser), optionally from a YAML/JSON config file whose
  values go through the same parsing as flags (so `lr: [1, 2]` or a float batch size fail as a flag
  would); flags given on the command line override the file.
- An unknown flag names the closest valid one.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import yaml
from transformers import HfArgumentParser

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A mistake in the user's input (flags, files, records). Its message is the whole report."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(); a UserError becomes one line on stderr and exit code 2.

    So does an OSError that names a file (a read-only folder, a full disk, a path through a file): the
    user's environment, not a bug, and the file it names is the one thing to report."""
    try:
        main()
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except OSError as error:
        if error.filename is None:
            raise
        print(f"error: cannot use {error.filename}: {error.strerror or error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------------------------------------
# Parsing options
# ---------------------------------------------------------------------------------------------
class ArgumentParser(HfArgumentParser):
    """HfArgumentParser whose errors are one-line user errors naming the flag (argparse prints usage and exits)."""

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --lora_r/--lora-r: invalid int value: 'x'": name the flag once, as the user wrote it
        fail(re.sub(r"argument (--[\w]+)(?:/--[\w-]+)*:", r"\1:", message))


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings if option.startswith("--")]


def unknown_flag(parser: argparse.ArgumentParser, remaining: Sequence[str], where: str = "") -> NoReturn:
    flags = [item for item in remaining if item.startswith("-")]
    if not flags:
        fail(f"{where}unexpected value(s) {' '.join(remaining)} (each value follows its --flag)")
    name = flags[0].split("=")[0]
    close = difflib.get_close_matches(name, option_names(parser), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; see --help"
    fail(f"{where}unknown flag {name}{hint}")


def parse_dataclasses(parser: ArgumentParser, argv: Sequence[str]) -> tuple:
    """The dataclasses of `parser` from argv; unknown flags and invalid values are one-line user errors."""
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=list(argv), return_remaining_strings=True)
    except ValueError as error:  # a dataclass's own checks (__post_init__), e.g. TrainingArguments' combinations
        fail(one_line(str(error).strip().splitlines()[0]))
    if remaining:
        unknown_flag(parser, remaining)
    return tuple(parsed)


def read_config_file(path: str, flag: str = "--config") -> dict:
    config_path = Path(path)
    if not config_path.is_file():
        fail(f"{flag} {path}: no such file")
    try:
        text = config_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        fail(f"{flag} {path}: not valid UTF-8 ({error.reason} at byte {error.start})")
    try:
        values = json.loads(text) if config_path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        fail(f"{flag} {path}: cannot parse: {str(error).splitlines()[0]}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        fail(f"{flag} {path}: expected a mapping of option names to values")
    return values


def config_to_argv(parser: argparse.ArgumentParser, values: dict, path: str) -> list[str]:
    """A config file's values as the flags they stand for: every value is then parsed and checked as a flag is.

    A list becomes the flag's several values where the flag takes several, else one comma-separated value
    (lora_target_modules: [q_proj, v_proj] is --lora_target_modules q_proj,v_proj); null leaves the default."""
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    argv: list[str] = []
    for name, value in values.items():
        action = actions.get(str(name))
        if action is None:
            unknown_flag(parser, [f"--{name}"], where=f"--config {path}: ")
        if value is None:
            continue
        flag = f"--{name}"
        if isinstance(value, bool):
            argv += [flag, str(value).lower()]
        elif isinstance(value, list):
            items = [json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in value]
            argv += [flag, *items] if action.nargs in ("+", "*") else [flag, ",".join(items)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_with_config(parser: ArgumentParser, argv: Sequence[str] | None) -> tuple[tuple, dict]:
    """(dataclasses, the config file's values) from `--config FILE` plus flags; flags override the file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.error = lambda message: fail(message)  # type: ignore[method-assign]
    config_path = pre.parse_known_args(argv)[0].config
    file_values = read_config_file(config_path) if config_path else {}
    file_argv = config_to_argv(parser, file_values, config_path) if file_values else []
    if file_argv:
        try:  # values of the file alone first, so that a bad one is reported as the file's
            parser.parse_known_args(file_argv)
        except UserError as error:
            fail(f"--config {config_path}: {error}")
    return parse_dataclasses(parser, file_argv + argv), file_values


def given_flags(argv: Sequence[str]) -> set[str]:
    """The option names given on a command line (`--name value` or `--name=value`)."""
    return {item[2:].split("=")[0] for item in argv if item.startswith("--")}


def check_writable_folder(path: str | os.PathLike, flag: str) -> None:
    """Refuse, before anything is written, an output location that cannot be made or written."""
    path = Path(path)
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        fail(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"{flag} {path}: {existing} is not writable")
