"""A name -> factory registry filled by a decorator, as timm's `register_model`.

One instance per kind (models, heads, spaces, datasets); this module holds only
the mechanics, so each kind's registry behaves the same: duplicate names are an
error, unknown names list the valid ones, `list()` filters with wildcards.
"""
from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Callable, Iterable


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, fn: Callable[..., Any] | None = None, *, name: str | None = None):
        """Decorator: `@reg.register` or `@reg.register(name="x")`."""

        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            key = name or f.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = f
            return f

        return add(fn) if fn is not None else add

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.list())}"
            )
        return self._entries[name]

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def check_kwargs(fn: Callable[..., Any], kwargs: Iterable[str], what: str) -> None:
    """Refuse keyword arguments `fn` does not accept, naming them and the allowed ones."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {what}; allowed: {allowed}")
