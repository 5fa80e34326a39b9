"""Adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs").

Classes are ranked by training-set frequency; the `cutoffs[0]` most frequent form the head
together with one token per tail cluster, and tail cluster i projects the features down by
div_value**(i+1) before its own softmax. A target in the head costs d*(cutoffs[0]+n_clusters);
a tail target pays its cluster's projection too. The math is PyTorch's
`nn.AdaptiveLogSoftmaxWithLoss`, wrapped, so the two agree exactly.

On a balanced dataset such as CIFAR-100 every class is equally frequent and frequency ranks
nothing. Ties then fall superclass by superclass when the dataset has a hierarchy
(`ties="hierarchy"`, the default), so each cluster is a run of related classes and the one
linear logit that scores a whole tail cluster in the head has a coherent set to score; with
`ties="id"` (or no hierarchy) they fall in class-id order, and a cluster is an arbitrary set
(CIFAR-100's ids are alphabetical). On CIFAR-100 (cnn_bn4, the study's adaptive config, 5
epochs, 3 seeds) superclass ties gave 41.9% test accuracy against 41.3% for id ties (README).
Which classes get the full-rank head cluster stays arbitrary either way, and the saving comes
only from the low-rank tails, at some cost in accuracy.
The head runs in fp32 even under bf16/fp16 autocast (PyTorch issue 44724: its
index_copy_ fails on mixed dtypes).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from heads._registry import register_head
from heads.base import F32, Head, madds, update_bytes
from heads.hierarchical import resolve_groups

TIES = ("hierarchy", "id")  # how classes of equal frequency are ordered


def default_cutoffs(num_classes: int) -> list[int]:
    return sorted({c for c in (round(num_classes * 0.2), round(num_classes * 0.6)) if 0 < c < num_classes})


def cutoffs_from_shares(num_classes: int, head_share: float, clusters: int) -> list[int]:
    """Cutoffs with `head_share` of the classes in the head and tail clusters doubling in size."""
    c0 = min(max(1, round(num_classes * head_share)), num_classes - 1)
    tail, parts = num_classes - c0, 2 ** clusters - 1
    cuts = [c0] + [c0 + round(tail * (2 ** i - 1) / parts) for i in range(1, clusters)]
    return sorted({c for c in cuts if 0 < c < num_classes})


def check_cutoffs(cutoffs: Sequence[int], num_classes: int) -> list[int]:
    cut = [int(c) for c in cutoffs]
    if not cut or cut != sorted(set(cut)) or any(c != float(o) for c, o in zip(cut, cutoffs)):
        raise ValueError(f"cutoffs={list(cutoffs)} must be a non-empty list of strictly increasing integers")
    if cut[0] <= 0 or cut[-1] >= num_classes:
        raise ValueError(f"cutoffs={cut} must satisfy 0 < c < num_classes={num_classes}")
    return cut


def frequency_order(class_counts: Sequence[int] | None, num_classes: int, hierarchy=None) -> np.ndarray:
    """Class ids from most to least frequent; ties in the order of the hierarchy's groups (when
    given: class -> group ids or a list of groups, as the hierarchical head takes it), then in
    class-id order."""
    counts = np.zeros(num_classes) if class_counts is None else np.asarray(class_counts)
    if counts.shape != (num_classes,):
        raise ValueError(f"class_counts has {counts.size} entries, num_classes={num_classes}")
    group = np.zeros(num_classes, dtype=np.int64)
    if hierarchy is not None:
        for g, members in enumerate(resolve_groups(num_classes, hierarchy, tree="dataset")):
            group[members] = g
    return np.lexsort((np.arange(num_classes), group, -counts))


@register_head(name="adaptive")
class AdaptiveHead(Head):
    supports_label_smoothing = False
    cost_note = ("a full-rank head for frequent classes plus low-rank tail clusters: the head always, a tail "
                 "only for its targets; about O(d*(c0 + n) + sum_i share_i * (d*h_i + h_i*|C_i|)).")
    # Why it trails softmax on a small balanced set (the study report quotes it).
    trails_because = ("with equal class counts (CIFAR-100) frequency ranks nothing, so each tail cluster is a run "
                      "of superclasses (ties=hierarchy, the default) or an arbitrary set of classes (ties=id), "
                      "scored by one linear logit in the head, and its classes go through a low-rank projection "
                      "(d/div wide); with fixed random features (tools.learnability, C = 1000) it reached 0.27 "
                      "against softmax's 0.79 even with full-rank tails")

    @classmethod
    def baseline(cls, num_classes):
        return {"search_adaptive_head_share": 0.2, "search_adaptive_clusters": 2, "head_div_value": 4.0}  # defaults

    @classmethod
    def suggest(cls, trial, num_classes, has_hierarchy=False):
        share = trial.suggest_float("search_adaptive_head_share", 0.1, 0.6)
        clusters = trial.suggest_int("search_adaptive_clusters", 1, 3)
        trial.suggest_float("head_div_value", 1.5, 8.0, log=True)
        return {"head_cutoffs": cutoffs_from_shares(num_classes, share, clusters)}

    def __init__(self, in_features: int, num_classes: int, cutoffs: Sequence[int] | None = None,
                 div_value: float = 4.0, head_bias: bool = False, class_counts: Sequence[int] | None = None,
                 hierarchy=None, ties: str = "hierarchy", label_smoothing: float = 0.0):
        super().__init__(in_features, num_classes, label_smoothing)
        if div_value <= 0:
            raise ValueError(f"div_value={div_value} must be > 0")
        if ties not in TIES:
            raise ValueError(f"ties={ties!r} is not one of {TIES}")
        self.cutoffs = check_cutoffs(default_cutoffs(num_classes) if cutoffs is None else cutoffs, num_classes)
        self.div_value = float(div_value)
        self.ties = ties
        order = torch.as_tensor(frequency_order(class_counts, num_classes, hierarchy if ties == "hierarchy" else None))
        self.register_buffer("order", order)  # internal rank -> class id
        self.register_buffer("rank", torch.argsort(order))  # class id -> internal rank
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(in_features, num_classes, self.cutoffs, self.div_value, head_bias)

    def hparams(self):
        return {"cutoffs": self.cutoffs, "div_value": self.div_value, "ties": self.ties}

    def _fp32(self, features):
        return torch.autocast(features.device.type, enabled=False), features.float()

    def loss(self, features, target):
        ctx, x = self._fp32(features)
        with ctx:
            return self.asm(x, self.rank[target]).loss

    def log_prob(self, features):
        ctx, x = self._fp32(features)
        with ctx:
            return self.asm.log_prob(x)[:, self.rank]

    def predict(self, features):
        ctx, x = self._fp32(features)
        with ctx:
            return self.order[self.asm.predict(x)]

    @classmethod
    def complexity(cls, in_features, num_classes, cutoffs=None, div_value=4.0, batch=256, states=1, **hp):
        d = in_features
        cut = check_cutoffs(default_cutoffs(num_classes) if cutoffs is None else cutoffs, num_classes) + [num_classes]
        head = d * (cut[0] + len(cut) - 1)
        tails = []  # (share of classes, cost of the cluster's projection + logits)
        for i in range(len(cut) - 1):
            hidden, size = int(d // div_value ** (i + 1)), cut[i + 1] - cut[i]
            tails.append((size / num_classes, d * hidden + hidden * size))
        expected = head + sum(share * cost for share, cost in tails)
        full = head + sum(cost for _, cost in tails)  # = the number of weights: every one is updated each step
        act = batch * (cut[0] + len(cut) - 1 + sum(share * (cut[i + 1] - cut[i]) for i, (share, _) in
                                                   enumerate(tails))) * F32
        return madds(expected, full, expected,
                     f"head d*(c0+n)={head}, tail i d*h_i + h_i*|C_i| with h_i=d/div^(i+1); "
                     "training and predict: expected over uniform targets",
                     train_bytes=3 * full * F32 + 4 * act + update_bytes(full, states),
                     log_prob_bytes=(full + 2 * batch * num_classes) * F32, predict_bytes=expected * F32 + act)
