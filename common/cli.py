"""What every command line shares: its exit codes, and bad input as one line, never a traceback.

Exit codes: 0 success; 1 the work ran but produced nothing usable (every trial failed or
diverged); 2 bad input (one `error: ...` line, before anything expensive starts); 130
interrupted (Ctrl-C; what was written stays, and a search continues with --resume)."""
from __future__ import annotations

import argparse
import functools
import os
import pickle
import re
import socket
import sys
from pathlib import Path
from typing import Callable

WIDTH = 120  # a console line is never longer

# What user input raises: a bad value or name, a missing or refused file.
OK, NOTHING_USABLE, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               pickle.UnpicklingError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (an unknown flag, a value of the wrong type) are user errors like
    any other: one `error: ...` line and exit 2 through `guard`, without the usage block."""

    def error(self, message: str):
        raise ValueError(f"{message} (see --help)")

    def add_argument(self, *args, **kwargs):
        """Every default in --help: appended to an option's help unless the help already names it."""
        default, text = kwargs.get("default"), kwargs.get("help")
        if text != argparse.SUPPRESS and default not in (None, False, argparse.SUPPRESS) and \
                "default" not in (text or ""):  # (a help with %(default)s names it too)
            shown = str(default).replace("%", "%%")  # argparse %-formats the help
            kwargs["help"] = f"{text} (default: {shown})" if text else f"default: {shown}"
        return super().add_argument(*args, **kwargs)


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


def is_space_file(name: str) -> bool:
    """Whether --space names a user's space in a file, `path/to/file.py:function` (else a registered name).
    Here, not in search_spaces/, so that the search's command line tells them apart without torch."""
    return ":" in name and name.rsplit(":", 1)[0].endswith(".py")


# ----------------------------------------------------------------------------- paths and addresses, checked up front
def check_out_dir(path: str | Path, flag: str) -> Path:
    """A folder the command will write into (made if missing): not a file, and writable where it is or
    where it would be made. Checked before any work, so that nothing computed is lost at the end."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {path}: is a file; it must be a folder (made if missing)")
    _check_writable_above(p if p.exists() else p.parent, path, flag)
    return p


def check_out_file(path: str | Path, flag: str) -> Path:
    """A file the command will write at the end: not a folder, in a folder it can write."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; it must be a file name")
    _check_writable_above(p.parent, path, flag)
    return p


def _check_writable_above(folder: Path, path, flag: str) -> None:
    """`folder`, or the nearest folder above it that exists (where the missing ones would be made), is a
    writable folder."""
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, so nothing can be made in it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {folder} is not writable")


def check_in_file(path: str | Path, flag: str) -> Path:
    """A file the command reads: there, a file, readable."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{flag} {path}: no such file")
    if not p.is_file():
        raise ValueError(f"{flag} {path}: is a folder; it must be a file")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{flag} {path}: not readable")
    return p


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str, flag: str) -> str:
    """A name that becomes one folder: no path separators or `..` (it could not write outside its
    root) and ASCII only (storage URIs and Ray's paths)."""
    if not NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{flag}={name!r}: use letters, digits, '.', '_' and '-' (not first), no '..' or '/': "
                         "it is one folder's name")
    return name


def check_reachable(address: str, flag: str, timeout: float = 5.0) -> None:
    """HOST:PORT (or ray://HOST:PORT) answers a TCP connection within `timeout` s; `auto` and other forms
    are left to Ray. Before Ray starts: an address nobody listens at would otherwise hang the command."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address)
    if not m:
        return
    host, port = m.group(1), int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"{flag} {address}: port {port} is not in 1..65535")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(f"{flag} {address}: nothing answers there ({exc.strerror or exc}); is the Ray cluster "
                         "up, and is this its address?") from None


def check_host(host: str, flag: str) -> None:
    """A host name this machine can resolve (a server would bind to it)."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)  # getaddrinfo has no timeout of its own (a minute offline)
    try:
        pool.submit(socket.getaddrinfo, host, None).result(timeout=5)
    except (OSError, concurrent.futures.TimeoutError):
        raise ValueError(f"{flag} {host}: the name does not resolve on this machine; give an address such "
                         "as 127.0.0.1 or 0.0.0.0") from None
    finally:
        pool.shutdown(wait=False)


def clip(line: str, width: int = WIDTH) -> str:
    """A console line cut to `width` columns, marked where it was cut."""
    return line if len(line) <= width else line[:width - 3] + "..."


def short(value) -> str:
    """A config value in a few characters: floats to 3 significant digits, lists without spaces."""
    return f"{value:.3g}" if isinstance(value, float) else str(value).replace(" ", "")
