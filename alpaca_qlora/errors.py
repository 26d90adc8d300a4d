"""User-facing errors: one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

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
