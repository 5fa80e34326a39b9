"""Two-level hierarchical softmax (Morin & Bengio 2005; Goodman 2001): group, then class in group.

p(c | x) = p(g(c) | x) * p(c | g(c), x). Training touches only the K group logits and the
target group's class logits: loss = -log p(group) - log p(class | group), cost d*(K + C/K)
for balanced groups (minimal at K = sqrt(C)). The tree comes from the dataset (CIFAR-100's
20 superclasses), from a user mapping, or is built balanced: about sqrt(C) contiguous groups.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heads._registry import register_head
from heads.base import Head, madds, smoothed_nll

TREES = ("auto", "dataset", "balanced")
PREDICT_MODES = ("greedy", "exact")


def _groups_from_mapping(class_to_group: Sequence[int], num_classes: int) -> list[list[int]]:
    mapping = np.asarray(class_to_group)
    if mapping.shape != (num_classes,):
        raise ValueError(f"hierarchy maps {mapping.size} classes; num_classes={num_classes} needs one group per class")
    ids = sorted(set(mapping.tolist()))
    return [np.flatnonzero(mapping == g).tolist() for g in ids]


def _check_groups(groups: list[list[int]], num_classes: int) -> list[list[int]]:
    seen = [c for g in groups for c in g]
    missing = sorted(set(range(num_classes)) - set(seen))
    repeated = sorted({c for c in seen if seen.count(c) > 1}) if len(seen) != len(set(seen)) else []
    outside = sorted(c for c in set(seen) if not 0 <= c < num_classes)
    if missing or repeated or outside or any(len(g) == 0 for g in groups):
        raise ValueError(f"hierarchy must put each of the {num_classes} classes in exactly one non-empty group: "
                         f"missing {missing}, repeated {repeated}, out of range {outside}")
    return groups


def resolve_groups(num_classes: int, hierarchy=None, tree: str = "auto", num_groups: int | None = None):
    """Groups as lists of class ids. `hierarchy` is class->group ids or a list of groups."""
    if tree not in TREES:
        raise ValueError(f"tree={tree!r} is not one of {TREES}")
    if tree == "dataset" and hierarchy is None:
        raise ValueError("tree='dataset' needs a hierarchy, and this dataset has none; use tree='balanced'")
    if tree == "balanced" or hierarchy is None:
        k = num_groups or max(1, round(math.sqrt(num_classes)))
        if not 1 <= k <= num_classes:
            raise ValueError(f"num_groups={k} must be in [1, num_classes={num_classes}]")
        return [g.tolist() for g in np.array_split(np.arange(num_classes), k)]
    first = next(iter(hierarchy))
    if isinstance(first, (list, tuple, np.ndarray)):
        groups = [[int(c) for c in g] for g in hierarchy]
    else:
        groups = _groups_from_mapping(hierarchy, num_classes)
    return _check_groups(groups, num_classes)


@register_head(name="hierarchical")
class HierarchicalHead(Head):
    cost_note = ("K groups then the classes of one group: O(d*(K + C/K)) to train and for greedy predict, "
                 "minimal at K = sqrt(C); the full distribution still needs O(d*(K + C)).")

    @classmethod
    def suggest(cls, trial, num_classes, has_hierarchy=False):
        if has_hierarchy:  # without one, "auto" is the balanced tree
            trial.suggest_categorical("head_tree", ["dataset", "balanced"])
        return {}

    @classmethod
    def baseline(cls, num_classes):
        return {"head_tree": "dataset"}

    def __init__(self, in_features: int, num_classes: int, hierarchy=None, tree: str = "auto",
                 num_groups: int | None = None, predict_mode: str = "greedy", label_smoothing: float = 0.0):
        super().__init__(in_features, num_classes, label_smoothing)
        if predict_mode not in PREDICT_MODES:
            raise ValueError(f"predict_mode={predict_mode!r} is not one of {PREDICT_MODES}")
        groups = resolve_groups(num_classes, hierarchy, tree, num_groups)
        self.tree, self.predict_mode, self.groups = tree, predict_mode, groups
        k, m = len(groups), max(len(g) for g in groups)
        members = torch.zeros(k, m, dtype=torch.long)  # padded member table: group -> its classes
        mask = torch.zeros(k, m, dtype=torch.bool)
        group_of, pos_in_group = torch.empty(num_classes, dtype=torch.long), torch.empty(num_classes, dtype=torch.long)
        for gi, g in enumerate(groups):
            members[gi, :len(g)], mask[gi, :len(g)] = torch.tensor(g), True
            group_of[g], pos_in_group[g] = gi, torch.arange(len(g))
        for name, t in (("members", members), ("mask", mask), ("group_of", group_of), ("pos_in_group", pos_in_group)):
            self.register_buffer(name, t, persistent=False)
        self.group_fc = nn.Linear(in_features, k)
        ref = nn.Linear(in_features, num_classes)  # same init as a softmax layer
        self.class_weight, self.class_bias = nn.Parameter(ref.weight.detach()), nn.Parameter(ref.bias.detach())

    def hparams(self):
        return {"hierarchy": self.groups}

    def _within_group(self, features: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """Log p(class | group) over each row's group members (B, M); padding is -inf."""
        idx = self.members[group]
        # F.embedding, not class_weight[idx]: its backward is a sorted segment-sum, ~2x faster than index_put.
        weight = F.embedding(idx, self.class_weight)
        bias = F.embedding(idx, self.class_bias[:, None]).squeeze(2)
        logits = torch.einsum("bmd,bd->bm", weight.to(features.dtype), features) + bias
        return F.log_softmax(logits.float().masked_fill(~self.mask[group], float("-inf")), dim=1)

    def loss(self, features, target):
        group = self.group_of[target]
        eps = self.label_smoothing
        lp_group = F.log_softmax(self.group_fc(features).float(), dim=1)
        lp_class = self._within_group(features, group)
        nll_group = smoothed_nll(lp_group, group, eps)
        # -inf padding times weight 0 would be NaN: zero it before the smoothing mean.
        nll_class = smoothed_nll(lp_class.masked_fill(~self.mask[group], 0.0), self.pos_in_group[target], eps,
                                 valid=self.mask[group])
        return (nll_group + nll_class).mean()

    def log_prob(self, features):
        lp_group = F.log_softmax(self.group_fc(features).float(), dim=1)
        logits = (features @ self.class_weight.t() + self.class_bias).float()  # (B, C)
        padded = logits[:, self.members].masked_fill(~self.mask, float("-inf"))  # (B, K, M)
        log_norm = torch.logsumexp(padded, dim=2)  # (B, K)
        return logits - log_norm[:, self.group_of] + lp_group[:, self.group_of]

    def predict(self, features, exact: bool | None = None):
        """Greedy: best group, then best class in it (d*(K + C/K)); exact: argmax of log_prob."""
        if exact if exact is not None else self.predict_mode == "exact":
            return self.log_prob(features).argmax(dim=1)
        group = self.group_fc(features).argmax(dim=1)
        pos = self._within_group(features, group).argmax(dim=1)
        return self.members[group, pos]

    @classmethod
    def complexity(cls, in_features, num_classes, hierarchy=None, tree="auto", num_groups=None, **hp):
        sizes = np.array([len(g) for g in resolve_groups(num_classes, hierarchy, tree, num_groups)])
        d, k = in_features, len(sizes)
        expected_group = float((sizes ** 2).sum() / num_classes)  # size of the target's group, uniform targets
        return madds(d * (k + expected_group), d * (k + num_classes), d * (k + sizes.mean()),
                     f"K={k} groups: d*(K + C/K) for training and greedy predict, d*(K + C) for log_prob")
