from __future__ import annotations

from typing import Sequence

from common.registry import Registry

HEADS = Registry("head", reserved={
    "in_features": "the backbone (its num_features)", "num_classes": "the dataset",
    "hierarchy": "the dataset (its class hierarchy)", "class_counts": "the dataset (its training labels)",
    "label_smoothing": "the training config (key label_smoothing)"})
register_head = HEADS.register
list_heads = HEADS.list
head_class = HEADS.get


def create_head(name: str, in_features: int, num_classes: int, hierarchy: Sequence | None = None,
                class_counts: Sequence[int] | None = None, label_smoothing: float = 0.0, **options):
    """Build head `name`; `options` are its own, checked by name and type. The data arguments
    go to the heads that declare them (hierarchy to hierarchical and adaptive, class_counts to adaptive)."""
    data = dict(in_features=in_features, num_classes=num_classes, hierarchy=hierarchy, class_counts=class_counts,
                label_smoothing=label_smoothing)
    return HEADS.create(name, data, options)


def head_complexity(name: str, in_features: int, num_classes: int, hierarchy: Sequence | None = None,
                    batch: int = 256, states: int = 1, **options) -> dict:
    """Multiply-adds per example and bytes per batch of head `name` without building it (Head.complexity)."""
    HEADS.check(name, options)
    return HEADS.get(name).complexity(in_features, num_classes, hierarchy=hierarchy, batch=batch, states=states,
                                      **options)
