"""The one check every bad-input test makes: exit 2 and a single `error: ...` line, no traceback."""
from __future__ import annotations

import re


def assert_one_line(code: int, err: str, expected: str, regex: bool = False) -> None:
    """`expected` (a substring, or a pattern with `regex`) in the one line a command printed for bad input."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert (re.search(expected, lines[0]) if regex else expected in lines[0]), lines[0]
