"""Two-level hierarchical softmax (Morin & Bengio 2005; Goodman 2001): group, then class in group.

p(c | x) = p(g(c) | x) * p(c | g(c), x). Training touches only the K group logits and the
target group's class logits: loss = -log p(group) - log p(class | group), cost d*(K + C/K)
for balanced groups (minimal at K = sqrt(C)). The tree comes from the dataset (CIFAR-100's
20 superclasses), from a user mapping, or is built balanced: about sqrt(C) contiguous groups
(`num_groups` sets another count; `fastest_num_groups` is the one fastest for a batch's step).

Grouped, row-sparse computation. The class rows are stored group by group, so each group's
rows are one contiguous run. The within-group logits and their gradients are computed per
group present in the batch (no per-example (B, M, d) gather); the weight gradient holds only
the rows of those groups, and the engine's lazy optimizer updates only them (`heads.sparse`:
untouched rows keep their momentum and are not decayed that step). Two implementations give
the same results (tested against each other and a per-example reference):
- fp32 on the CPU: the kernels of heads/kernels.cpp (`heads.kernels`, built on first use). They
  sort the batch by group and stream each present group's rows once, forward and backward
  (3.6 and 7 ms at C = 1e5, d 512, batch 256, against 17 and 38 ms for the batched matmuls on
  the 2-core dev machine; the README has the whole step).
- elsewhere (CUDA, bf16, a CPU without a compiler): consecutive groups of equal size form one
  (groups, size, d) block (one for CIFAR-100's tree, two for a balanced one); the batch is
  padded by group and each block's present groups, gathered once, take one batched matmul.
  Greedy predict does the same for predicted groups, or, when most groups are predicted,
  multiplies every group's block in place (no gather). One small host sync per step reads the
  largest group count.
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

from heads import kernels
from heads._registry import register_head
from heads.base import F32, Head, madds, smoothed_nll, update_bytes
from heads.sparse import sparse_grad

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


def _segments(sizes: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Maximal runs of consecutive groups of equal size, as (first group, groups, size, first row):
    a run's rows are one (groups, size, d) block of the weight (one for CIFAR-100's tree, two for
    a balanced tree)."""
    out, row = [], 0
    for g, s in enumerate(sizes.tolist()):
        if out and out[-1][2] == s:
            first, count, _, row0 = out[-1]
            out[-1] = (first, count + 1, s, row0)
        else:
            out.append((g, 1, s, row))
        row += s
    return out


def _plan(group: torch.Tensor, segments, segment_first: torch.Tensor):
    """Pad the batch by group: each example's (slot, position) among the U groups present (slots in
    group order), the largest count, and where each segment's groups start among the slots."""
    present, slot, counts = torch.unique(group, return_inverse=True, return_counts=True)
    order = torch.argsort(slot, stable=True)
    first = torch.cumsum(counts, 0) - counts
    pos = torch.empty_like(slot)
    pos[order] = torch.arange(len(slot), device=slot.device) - first[slot[order]]
    cuts = torch.searchsorted(present, segment_first)
    host = torch.cat([counts.max()[None], cuts, cuts.new_tensor([len(present)])]).tolist()  # the step's host sync
    bounds = [(a, b, seg) for a, b, seg in zip(host[1:-1], host[2:], segments) if b > a]
    return present, slot, pos, host[0], bounds


def _padded(t: torch.Tensor, slot, pos, groups: int, width: int) -> torch.Tensor:
    """(B, ...) -> (U, width, ...): each example at its group's slot and position, zeros elsewhere."""
    out = t.new_zeros((groups, width) + t.shape[1:])
    out[slot, pos] = t
    return out


def _block_logits(xp: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(U, n, size) logits of U padded batches xp (U, n, d) against U weight blocks w (U, size, d)
    and biases b (U, size). xp @ w^T streams each weight block once, where w @ xp^T (MKL) takes
    1.5-2x as long (7.4 against 11.3 ms at C = 1e5, 23 against 50 ms at 1e6; README)."""
    return torch.baddbmm(b[:, None, :], xp, w.transpose(1, 2))


class _GroupedLogits(torch.autograd.Function):
    """Each example's logits over its group's classes (B, M; zeros past the group's size), by one
    batched matmul per segment of equal-size groups (`_segments`) over the groups present. The
    weight and bias gradients hold only those groups' rows, in ascending order (row-sparse), or
    are dense C x d tensors with zeros elsewhere (`dense`). The present groups' weight blocks are
    gathered once, as a strided view of each segment indexed by group. `plan`: `_plan`'s result
    when the caller already has it (predict), else None."""

    @staticmethod
    def forward(ctx, x, weight, bias, group, segments, segment_first, width_out, dense, plan=None):
        present, slot, pos, width, bounds = plan or _plan(group, segments, segment_first)
        xp = _padded(x, slot, pos, len(present), width)  # (U, n, d)
        logits = x.new_zeros(len(x), width_out)
        blocks, rows = [], []
        with torch.autocast(x.device.type, enabled=False):
            for a, b, (first, count, size, row0) in bounds:
                local = present[a:b] - first
                w = weight[row0:row0 + count * size].view(count, size, -1)[local].to(x.dtype)  # (U_s, size, d)
                bs = bias[row0:row0 + count * size].view(count, size)[local].to(x.dtype)
                out = _block_logits(xp[a:b], w, bs)
                mine = (slot >= a) & (slot < b)
                logits[mine, :size] = out[slot[mine] - a, pos[mine]]
                blocks.append(w)
                rows.append((row0 + local[:, None] * size + torch.arange(size, device=x.device)).flatten())
        ctx.save_for_backward(xp, slot, pos, torch.cat(rows), *blocks)
        ctx.bounds, ctx.dense, ctx.shapes = bounds, dense, (weight.shape, bias.shape)
        return logits

    @staticmethod
    def backward(ctx, grad):
        xp, slot, pos, index, *blocks = ctx.saved_tensors
        grad = grad.to(xp.dtype)
        grad_x = torch.empty((len(grad), xp.shape[-1]), dtype=xp.dtype, device=xp.device)
        gw = torch.empty((len(index), xp.shape[-1]), dtype=xp.dtype, device=xp.device)
        gb, row = torch.empty(len(index), dtype=xp.dtype, device=xp.device), 0
        for (a, b, (_, _, size, _)), w in zip(ctx.bounds, blocks):
            mine = (slot >= a) & (slot < b)
            gp = _padded(grad[mine, :size], slot[mine] - a, pos[mine], b - a, xp.shape[1])  # (U_s, n, size)
            grad_x[mine] = torch.bmm(gp, w)[slot[mine] - a, pos[mine]]
            n = (b - a) * size
            # gp^T made contiguous: bmm on the transposed view is 3x slower on CPU
            torch.bmm(gp.transpose(1, 2).contiguous(), xp[a:b], out=gw[row:row + n].view(b - a, size, -1))
            gb[row:row + n] = gp.sum(1).flatten()
            row += n
        return grad_x, *_row_gradients(index, gw, gb, ctx.shapes, ctx.dense), None, None, None, None, None, None


def _row_gradients(index: torch.Tensor, gw: torch.Tensor, gb: torch.Tensor, shapes, dense: bool):
    """The weight and bias gradients from the rows `index` (ascending, unique) and their values:
    row-sparse (fp32, the optimizer's dtype), or dense tensors of `shapes` with zeros elsewhere."""
    if dense:
        return tuple(torch.zeros(shape, dtype=g.dtype, device=g.device).index_copy_(0, index, g)
                     for g, shape in zip((gw, gb), shapes))
    return tuple(sparse_grad(index, g.float(), shape, coalesced=True) for g, shape in zip((gw, gb), shapes))


class _KernelLogits(torch.autograd.Function):
    """`_GroupedLogits` by the CPU kernels of heads/kernels.cpp (fp32 on the CPU): the same logits
    and gradients, each present group's rows read once in place (no padding, no gather, no
    batched matmuls), its examples found by a counting sort (`plan`, no host sync)."""

    @staticmethod
    def forward(ctx, x, weight, bias, group, offset, size, width_out, dense):
        k, x = kernels.compiled(), x.contiguous()
        plan = k.plan(group, len(offset))
        ctx.save_for_backward(x, weight, offset, size, *plan)
        ctx.dense, ctx.shapes = dense, (weight.shape, bias.shape)
        return k.logits(x, weight, bias, offset, size, *plan, width_out)

    @staticmethod
    def backward(ctx, grad):
        x, weight, offset, size, *plan = ctx.saved_tensors
        grad_x, gw, gb, index = kernels.compiled().backward(grad.contiguous(), x, weight, offset, size, *plan)
        return grad_x, *_row_gradients(index, gw, gb, ctx.shapes, ctx.dense), None, None, None, None, None


def _on_kernels(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the CPU kernels take this batch: fp32 on the CPU, and the kernels built."""
    return x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and kernels.compiled() is not None


EVERY_GROUP_SHARE = 0.4  # the share of groups present above which predict reads every group (measured below)


def _logits_every_group(x, weight, bias, group, segments, segment_first, width_out):
    """Greedy predict's within-group logits (B, M) without gradients. When most groups hold an
    example, one batched matmul per segment over *all* its groups, the batch padded to every
    group, reads each weight row once where gathering the present groups' blocks first reads and
    writes them and reads them again: 19.6 ms against 29.9 ms at C = 1e5 (d 512, batch 256, 54% of
    the groups present) on the 2-core dev machine. With fewer present (C = 1e6: 23%) the gather
    wins (107 ms against 121 ms), so below `EVERY_GROUP_SHARE` this is `_GroupedLogits`."""
    plan = _plan(group, segments, segment_first)  # one plan (and host sync) for either path
    present, _, pos, width, _ = plan
    if len(present) < EVERY_GROUP_SHARE * sum(count for _, count, _, _ in segments):
        return _GroupedLogits.apply(x, weight, bias, group, segments, segment_first, width_out, True, plan)
    logits = x.new_zeros(len(x), width_out)
    with torch.autocast(x.device.type, enabled=False):
        for first, count, size, row0 in segments:
            mine = (group >= first) & (group < first + count)
            local, w_rows = group[mine] - first, slice(row0, row0 + count * size)
            xf = _padded(x[mine], local, pos[mine], count, width)  # (count, n, d): every group of the segment
            out = _block_logits(xf, weight[w_rows].view(count, size, -1).to(x.dtype),
                                bias[w_rows].view(count, size).to(x.dtype))
            logits[mine, :size] = out[local, pos[mine]]
    return logits


@register_head(name="hierarchical")
class HierarchicalHead(Head):
    cost_note = ("K groups then the classes of one group: O(d*(K + C/K)) to train and for greedy predict, "
                 "minimal at K = sqrt(C); the full distribution still needs O(d*(K + C)).")
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
        self.segments = _segments(size)
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
        """Each row's logits over its group's classes (B, M; zeros past the group's size): the CPU
        kernels for fp32 on the CPU, else the batched matmuls (predict may read every group's block)."""
        width = self.valid.shape[1]
        if self.cpu_kernels and _on_kernels(features, self.class_weight):
            return _KernelLogits.apply(features, self.class_weight, self.class_bias, group, self.offset,
                                       self.group_size, width, self.dense)
        if predict:
            return _logits_every_group(features, self.class_weight, self.class_bias, group, self.segments,
                                       self.segment_first, width)
        return _GroupedLogits.apply(features, self.class_weight, self.class_bias, group, self.segments,
                                    self.segment_first, width, self.dense)

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
    dev machine: 146 G multiply-adds/s, 25 GB/s). At d 512, batch 256: K = 2000 at C = 1e5 and
    8000 at 1e6, where the step took 38 and 91 ms against 93 and 294 ms with sqrt(C). Not the
    default: on synthetic data at C = 1e4 (594 groups against 100) it learned far worse at the
    same budget, 0.25 against 0.56 accuracy (README)."""
    candidates = np.unique(np.geomspace(1, num_classes, 200).round().astype(int))

    def cost(k):  # seconds times the bandwidth; training's backward doubles the forward's matmuls
        train_madds, train_bytes, _ = _train_cost(_balanced_sizes(num_classes, k), in_features, batch, states,
                                                  dense=False)
        return 3 * batch * train_madds / madds_per_byte + train_bytes
    return int(min(candidates, key=cost))
