"""The command-line contract every script shares: user errors as one line on stderr and exit code 2
(never a traceback), and YAML/JSON config files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, NoReturn

import yaml

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A mistake in the user's input (flags, files, records). Its message is the whole report."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(); a UserError becomes one line on stderr and exit code 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def read_config_file(path: str) -> dict:
    config_path = Path(path)
    if not config_path.is_file():
        fail(f"--config {path}: no such file")
    text = config_path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if config_path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        fail(f"--config {path}: cannot parse: {str(error).splitlines()[0]}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        fail(f"--config {path}: expected a mapping of option names to values")
    return values
