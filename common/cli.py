"""What every command line shares: bad input becomes one line and exit code 2, never a traceback."""
from __future__ import annotations

import functools
import pickle
import sys
from typing import Callable

# What user input raises: a bad value or name, a missing or refused file.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, pickle.UnpicklingError)


def guard(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI's `main(argv) -> exit code`: a user error prints `error: ...` and returns 2."""

    @functools.wraps(main)
    def guarded(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return guarded
