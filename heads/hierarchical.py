"""Two-level hierarchical softmax (Morin & Bengio 2005; Goodman 2001): group, then class in group.

p(c | x) = p(g(c) | x) * p(c | g(c), x). Training touches only the K group logits and the
target group's class logits: loss = -log p(group) - log p(class | group), cost d*(K + C/K)
for balanced groups (minimal at K = sqrt(C)). The tree comes from the dataset (CIFAR-100's
20 superclasses), from a user mapping, or is built balanced: about sqrt(C) contiguous groups
(`num_groups` sets another count; `fastest_num_groups` is the one fastest for a batch's step).

Grouped, row-sparse computation (heads.speed.grouped). The class rows are stored group by group,
so each group's rows are one contiguous run. The within-group logits and their gradients are
computed per group present in the batch (no per-example (B, M, d) gather); the weight gradient
holds only the rows of those groups, and the engine's lazy optimizer updates only them
(heads.speed.sparse: untouched rows keep their momentum and are not decayed that step): by the
compiled CPU kernels for fp32 on the CPU, by batched matmuls elsewhere (the same results).
`dense=True` computes the same rows but writes a dense C x d gradient, which the dense optimizer
then updates in full: the dense update.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heads._registry import register_head
from heads.base import F32, Head, madds, smoothed_nll, update_bytes
from heads.speed.grouped import class_logits, segments_of

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


def _balanced_size(num_classes: int, hierarchy, tree: str, num_groups: int | None) -> int | None:
    """The options checked; the balanced tree's group count, or None when the hierarchy gives the groups."""
    if tree not in TREES:
        raise ValueError(f"tree={tree!r} is not one of {TREES}")
    if num_groups is not None and not 1 <= num_groups <= num_classes:
        raise ValueError(f"num_groups={num_groups} must be in [1, num_classes={num_classes}]")
    if num_groups is not None and hierarchy is not None and tree != "balanced":
        raise ValueError(f"num_groups={num_groups} sets the balanced tree's size, but this head uses the dataset's "
                         "hierarchy: add tree='balanced' or drop num_groups")
    if tree == "dataset" and hierarchy is None:
        raise ValueError("tree='dataset' needs a hierarchy, and this dataset has none; use tree='balanced'")
    if tree == "balanced" or hierarchy is None:
        return max(1, round(math.sqrt(num_classes))) if num_groups is None else num_groups
    return None


def _balanced_sizes(num_classes: int, k: int) -> np.ndarray:
    """Group sizes of the balanced tree (as np.array_split cuts)."""
    sizes = np.full(k, num_classes // k)
    sizes[:num_classes % k] += 1
    return sizes


def _group_sizes(num_classes: int, hierarchy, tree: str, num_groups: int | None) -> np.ndarray:
    """Each group's size; a balanced tree's without building its lists of C class ids."""
    k = _balanced_size(num_classes, hierarchy, tree, num_groups)
    if k is not None:
        return _balanced_sizes(num_classes, k)
    return np.array([len(g) for g in resolve_groups(num_classes, hierarchy, tree, num_groups)])


def resolve_groups(num_classes: int, hierarchy=None, tree: str = "auto", num_groups: int | None = None):
    """Groups as lists of class ids. `hierarchy` is class->group ids or a list of groups."""
    k = _balanced_size(num_classes, hierarchy, tree, num_groups)
    if k is not None:
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
    # Why it trails softmax on a small balanced set (the study report quotes it).
    trails_because = ("an error at the superclass step cannot be undone at the class step, and the superclasses "
                      "(CIFAR-100's coarse labels) group by meaning, not by what the backbone sees")
    _version = 2  # 2: class rows stored group by group (version 1: in class-id order)

    @classmethod
    def suggest(cls, trial, num_classes, has_hierarchy=False):
        if has_hierarchy:  # without one, "auto" is the balanced tree
            trial.suggest_categorical("head_tree", ["dataset", "balanced"])
        return {}

    @classmethod
    def baseline(cls, num_classes):
        return {"head_tree": "dataset"}

    def __init__(self, in_features: int, num_classes: int, hierarchy=None, tree: str = "auto",
                 num_groups: int | None = None, predict_mode: str = "greedy", dense: bool = False,
                 cpu_kernels: bool = True, label_smoothing: float = 0.0):
        """`cpu_kernels=False`: the batched matmuls on the CPU too (the same results; for comparison)."""
        super().__init__(in_features, num_classes, label_smoothing)
        if predict_mode not in PREDICT_MODES:
            raise ValueError(f"predict_mode={predict_mode!r} is not one of {PREDICT_MODES}")
        groups = resolve_groups(num_classes, hierarchy, tree, num_groups)
        self.tree, self.predict_mode, self.groups, self.dense = tree, predict_mode, groups, dense
        self.cpu_kernels = cpu_kernels
        order = torch.tensor([c for g in groups for c in g])  # internal row -> class id
        self.identity = bool((order == torch.arange(num_classes)).all())
        size = torch.tensor([len(g) for g in groups])
        offset = torch.cumsum(size, 0) - size  # each group's first row
        group_of_row = torch.repeat_interleave(torch.arange(len(groups)), size)
        # padded table of each group's rows, clamped into the group; `valid` masks the padding
        slot = torch.arange(int(size.max()))
        members = offset[:, None] + torch.minimum(slot[None, :], size[:, None] - 1)
        buffers = {"order": order, "rank": torch.argsort(order), "group_of_row": group_of_row,
                   "group_of": group_of_row[torch.argsort(order)], "offset": offset, "group_size": size,
                   "members": members, "valid": slot[None, :] < size[:, None]}
        self.segments = segments_of(size)
        buffers["segment_first"] = torch.tensor([first for first, *_ in self.segments])
        for name, t in buffers.items():
            self.register_buffer(name, t, persistent=False)
        self.group_fc = nn.Linear(in_features, len(groups))
        ref = nn.Linear(in_features, num_classes)  # same init as a softmax layer
        self.class_weight = nn.Parameter(ref.weight.detach()[order].clone())
        self.class_bias = nn.Parameter(ref.bias.detach()[order].clone())

    def hparams(self):
        return {"hierarchy": self.groups, "dense": self.dense}

    def sparse_parameters(self):
        return [] if self.dense else [self.class_weight, self.class_bias]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if local_metadata.get("version", 1) < 2:  # an older checkpoint: rows in class-id order
            for name in ("class_weight", "class_bias"):
                if prefix + name in state_dict:
                    state_dict[prefix + name] = state_dict[prefix + name][self.order]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def _class_logits(self, features: torch.Tensor, group: torch.Tensor, predict: bool = False) -> torch.Tensor:
        """Each row's logits over its group's classes (B, M; zeros past the group's size), by the speed layer."""
        return class_logits(features, self.class_weight, self.class_bias, group, offset=self.offset,
                            size=self.group_size, segments=self.segments, segment_first=self.segment_first,
                            width=self.valid.shape[1], dense=self.dense, predict=predict,
                            cpu_kernels=self.cpu_kernels)

    def _within_group(self, features: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """Log p(class | group) over each row's group slots (B, M); padding is -inf."""
        logits = self._class_logits(features, group)
        return F.log_softmax(logits.float().masked_fill(~self.valid[group], float("-inf")), dim=1)

    def loss(self, features, target):
        group = self.group_of[target]
        eps, valid = self.label_smoothing, self.valid[group]
        lp_group = F.log_softmax(self.group_fc(features).float(), dim=1)
        lp_class = self._within_group(features, group)
        nll_group = smoothed_nll(lp_group, group, eps)
        # -inf padding times weight 0 would be NaN: zero it before the smoothing mean.
        pos = self.rank[target] - self.offset[group]
        nll_class = smoothed_nll(lp_class.masked_fill(~valid, 0.0), pos, eps, valid=valid)
        return (nll_group + nll_class).mean()

    def log_prob(self, features):
        lp_group = F.log_softmax(self.group_fc(features).float(), dim=1)
        logits = (features @ self.class_weight.t() + self.class_bias).float()  # (B, C), rows' order
        padded = logits[:, self.members].masked_fill(~self.valid, float("-inf"))  # (B, K, M)
        log_norm = torch.logsumexp(padded, dim=2)  # (B, K)
        lp = logits - log_norm[:, self.group_of_row] + lp_group[:, self.group_of_row]
        return lp if self.identity else lp[:, self.rank]

    def predict(self, features, exact: bool | None = None):
        """Greedy: best group, then best class in it (d*(K + C/K)); exact: argmax of log_prob."""
        if exact if exact is not None else self.predict_mode == "exact":
            return self.log_prob(features).argmax(dim=1)
        group = self.group_fc(features).argmax(dim=1)
        logits = self._class_logits(features, group, predict=True)
        pos = logits.float().masked_fill(~self.valid[group], float("-inf")).argmax(dim=1)
        return self.order[self.offset[group] + pos]

    @classmethod
    def complexity(cls, in_features, num_classes, hierarchy=None, tree="auto", num_groups=None, dense=False,
                   batch=256, states=1, **hp):
        sizes = _group_sizes(num_classes, hierarchy, tree, num_groups)
        d, k, c = in_features, len(sizes), num_classes
        train_madds, train_bytes, rows = _train_cost(sizes, d, batch, states, dense)
        return madds(train_madds, d * (k + num_classes), d * (k + sizes.mean()),
                     f"K={k} groups: d*(K + C/K) for training and greedy predict, d*(K + C) for log_prob",
                     train_bytes=train_bytes, log_prob_bytes=(c * d + 6 * batch * c) * F32,
                     predict_bytes=(k * d + rows) * F32)


def _train_cost(sizes: np.ndarray, d: int, batch: int, states: int, dense: bool):
    """A training step's multiply-adds per example and bytes per batch (uniform targets), and the
    values of the class rows the batch touches."""
    k, c = len(sizes), int(sizes.sum())
    expected_group = float((sizes ** 2).sum() / c)  # size of the target's group, uniform targets
    # rows of the distinct groups a batch touches (uniform targets): K * (1 - (1 - 1/K)^B) groups
    rows = k * (1 - (1 - 1 / k) ** batch) * sizes.mean() * d
    group_layer = 3 * k * d * F32 + update_bytes(k * d, states)
    if dense:  # grouped matmuls, then a zero-filled C x d gradient and the update of every row
        train = 3 * rows * F32 + c * d * F32 + update_bytes(c * d, states)
    else:  # grouped matmuls reading contiguous blocks, row gradients, the update of those rows in place
        train = 3 * rows * F32 + update_bytes(rows, states)
    return d * (k + expected_group), train + group_layer, rows


def fastest_num_groups(num_classes: int, in_features: int, batch: int = 256, madds_per_byte: float = 6.0,
                       states: int = 1) -> int:
    """The balanced tree's group count K whose training step `complexity` predicts fastest for
    batches of `batch`. The default, sqrt(C), minimises one example's multiply-adds d*(K + C/K);
    but a batch's step is memory-bound, and its bytes are those of the rows it touches and
    updates: the K group rows plus the distinct target groups' rows, about K + B*C/K while
    K >> B, least near sqrt(B*C); the multiply-adds of the K-way group layer pull K back down.
    `madds_per_byte`: the machine's matmul rate over its memory bandwidth (about 6 on the 2-core
    dev machine). Not the default: on synthetic data at C = 1e4 it learned far worse than sqrt(C)
    at the same budget (the README has the measured steps and accuracies)."""
    candidates = np.unique(np.geomspace(1, num_classes, 200).round().astype(int))

    def cost(k):  # seconds times the bandwidth; training's backward doubles the forward's matmuls
        train_madds, train_bytes, _ = _train_cost(_balanced_sizes(num_classes, k), in_features, batch, states,
                                                  dense=False)
        return 3 * batch * train_madds / madds_per_byte + train_bytes
    return int(min(candidates, key=cost))
