"""Values checked against the annotations that declare them (pydantic, strict mode).

Strict: "abc" is not a float, 1 is not a bool, 1.0 is not an int; an int is a float.
"""
from __future__ import annotations

import functools
import types
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError


@functools.lru_cache(maxsize=None)
def _adapter(annotation) -> TypeAdapter:
    return TypeAdapter(annotation)


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("True or False", "booleans"),
          str: ("a string", "strings"), dict: ("a dict", "dicts"), type(None): ("None", "None")}


def type_name(annotation, plural: bool = False) -> str:
    """'an integer', 'a number or a list of numbers', ... for an error message."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a, plural) for a in args)
    if origin is not None and origin is not dict and args:
        return f"a list of {type_name(args[0], plural=True)}"
    names = _NAMES.get(origin or annotation)
    return names[plural] if names else getattr(annotation, "__name__", str(annotation))


def has_type(value: Any, annotation) -> bool:
    try:
        _adapter(annotation).validate_python(value, strict=True)
    except ValidationError:
        return False
    return True
