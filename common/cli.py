"""What every command line shares: its exit codes, and bad input as one line, never a traceback.

Exit codes: 0 success; 1 the work ran but produced nothing usable (every trial failed or
diverged); 2 bad input (one `error: ...` line, before anything expensive starts); 130
interrupted (Ctrl-C; what was written stays, and a search continues with --resume)."""
from __future__ import annotations

import argparse
import functools
import pickle
import sys
from typing import Callable

WIDTH = 120  # a console line is never longer

# What user input raises: a bad value or name, a missing or refused file.
OK, NOTHING_USABLE, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, pickle.UnpicklingError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (an unknown flag, a value of the wrong type) are user errors like
    any other: one `error: ...` line and exit 2 through `guard`, without the usage block."""

    def error(self, message: str):
        raise ValueError(f"{message} (see --help)")


def guard(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI's `main(argv) -> exit code`: a user error prints `error: ...` and returns 2, Ctrl-C 130."""

    @functools.wraps(main)
    def guarded(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return INTERRUPTED

    return guarded


def check_gpus(requested: float | None, available: float, flag: str = "--gpus-per-trial") -> float:
    """GPUs per trial: the explicit request must be in (0, available]; otherwise 0 without GPUs."""
    if requested is None:
        return 0.0
    if requested <= 0:
        raise ValueError(f"{flag}={requested} must be > 0")
    if requested > available:
        raise ValueError(f"{flag}={requested} is more than there are ({available:g} GPUs): nothing could start")
    return requested


def check_cpus(requested: float, available: float, where: str, name: str = "cpus_per_trial") -> None:
    """A trial or task asking for more CPUs than there are would wait forever."""
    if requested <= 0:
        raise ValueError(f"{name}={requested:g} must be > 0")
    if requested > available:
        raise ValueError(f"{name}={requested:g} is more than the {available:g} CPUs of {where}: nothing could start")


def clip(line: str, width: int = WIDTH) -> str:
    """A console line cut to `width` columns, marked where it was cut."""
    return line if len(line) <= width else line[:width - 3] + "..."


def short(value) -> str:
    """A config value in a few characters: floats to 3 significant digits, lists without spaces."""
    return f"{value:.3g}" if isinstance(value, float) else str(value).replace(" ", "")
