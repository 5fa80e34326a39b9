from __future__ import annotations

import inspect
from typing import Sequence

from tuning.registry import Registry, check_kwargs

_HEADS = Registry("head")
register_head = _HEADS.register
list_heads = _HEADS.list
head_class = _HEADS.get

# Data-derived arguments: handed to the heads that declare them, ignored by the others.
_DATA_ARGS = ("hierarchy", "class_counts")


def create_head(name: str, in_features: int, num_classes: int, hierarchy: Sequence | None = None,
                class_counts: Sequence[int] | None = None, **hp):
    """Build head `name`; `hp` are its own hyperparameters, refused by name if unknown."""
    cls = _HEADS.get(name)
    check_kwargs(cls.__init__, hp, f"head {name!r}")
    params = inspect.signature(cls.__init__).parameters
    data = {k: v for k, v in zip(_DATA_ARGS, (hierarchy, class_counts)) if k in params}
    return cls(in_features, num_classes, **data, **hp)


def head_complexity(name: str, in_features: int, num_classes: int, hierarchy: Sequence | None = None,
                    **hp) -> dict:
    """Multiply-adds per example of head `name` without building it (see Head.complexity)."""
    cls = _HEADS.get(name)
    check_kwargs(cls.__init__, hp, f"head {name!r}")
    if "hierarchy" in inspect.signature(cls.__init__).parameters:
        hp["hierarchy"] = hierarchy
    return cls.complexity(in_features, num_classes, **hp)
