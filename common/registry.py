"""A name -> entry registry filled by a decorator, as timm's `register_model`.

One instance per kind (models, heads, optimizers, datasets, spaces), so each behaves the
same: duplicate names are an error, unknown names list the valid ones, `list()` filters
with wildcards. An entry (a function or a class) declares its options as annotated keyword
parameters with defaults; `**kwargs` is refused at registration, so nothing passes
unchecked. Arguments the caller supplies from data (a head's `num_classes`, a backbone's
`in_chans`) are `reserved`: never options. `check()` validates options by name and type
before anything is built. An entry also owns its knowledge: what the registry `requires` of it
(a model's family `recipe`, an optimizer's search ranges and lazy rule) is given at registration,
`@reg.register(recipe=...)`, refused there when missing, and read with `reg.meta(name)`.
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import pkgutil
import typing
from typing import Any, Callable

from common.options import has_type, type_name


class Registry:
    def __init__(self, kind: str, reserved: dict[str, str] | None = None, requires: tuple[str, ...] = ()):
        self.kind = kind
        self.reserved = reserved or {}  # argument -> where its value comes from
        self.requires = requires  # what every entry declares at registration (its `meta`)
        self._entries: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, **meta):
        """Decorator: `@reg.register`, `@reg.register(name="x")`, `@reg.register(recipe={...})`."""

        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            key = name or f.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            missing = [k for k in self.requires if k not in meta]
            if missing:
                raise ValueError(f"{self.kind} {key!r} declares no {', '.join(missing)}: every {self.kind} owns its "
                                 f"{', '.join(self.requires)} (register it with them)")
            _declared_options(f, self.reserved, f"{self.kind} {key!r}")  # refuses **kwargs, missing types
            self._entries[key], self._meta[key] = f, meta
            return f

        return add(fn) if fn is not None else add

    def meta(self, name: str) -> dict[str, Any]:
        """What entry `name` declared at registration (`requires` and anything else it gave)."""
        self.get(name)
        return self._meta[name]

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.list())}")
        return self._entries[name]

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def options(self, name: str) -> dict[str, tuple[Any, Any]]:
        """Option name -> (annotation, default) of entry `name`."""
        return _declared_options(self.get(name), self.reserved, f"{self.kind} {name!r}")

    def check(self, name: str, options: dict[str, Any], what: str | None = None) -> None:
        """Refuse an unknown option, a reserved argument passed as one, or a value of the wrong type."""
        what = what or f"{self.kind} {name!r}"
        declared = self.options(name)
        for key in options:
            if key in self.reserved:
                raise ValueError(f"{key!r} is not an option of {what}: it comes from {self.reserved[key]}")
        unknown = [k for k in options if k not in declared]
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {what}; allowed: {list(declared)}")
        for key, value in options.items():
            annotation, _ = declared[key]
            if not has_type(value, annotation):
                raise ValueError(f"option {key!r}={value!r} for {what} has the wrong type: must be "
                                 f"{type_name(annotation)}")

    def create(self, name: str, data: dict[str, Any], options: dict[str, Any]):
        """Check `options`, then call the entry with them and the `data` arguments it declares."""
        self.check(name, options)
        entry = self.get(name)
        params = inspect.signature(entry).parameters
        return entry(**{k: v for k, v in data.items() if k in params}, **options)


def _declared_options(entry: Callable, reserved: dict, what: str) -> dict[str, tuple[Any, Any]]:
    params = inspect.signature(entry).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"{what} takes **kwargs: declare each option as a keyword parameter")
    hints = typing.get_type_hints(entry.__init__ if inspect.isclass(entry) else entry)
    options = {}
    for n, p in params.items():
        if n in reserved or p.default is p.empty or p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        if n not in hints:
            raise TypeError(f"{what}: option {n!r} has no type annotation")
        options[n] = (hints[n], p.default)
    return options


def import_submodules(package: str, skip: tuple[str, ...] = ()) -> None:
    """Import every module of `package` (except `skip` and private ones) so their entries register."""
    path = importlib.import_module(package).__path__
    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_") and info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")
