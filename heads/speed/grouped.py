"""Grouped execution of a hierarchical head's class logits: each example's logits over its group's
classes, with row-sparse weight gradients, computed per group present in the batch.

One entry point, `class_logits`; two implementations giving the same results (tested against
each other and a per-example reference):
- fp32 on the CPU: the compiled kernels (heads.speed.kernels). They sort the batch by group and
  stream each present group's rows once, forward and backward, without padding or gathering;
- elsewhere (CUDA, bf16, a CPU without a compiler): consecutive groups of equal size form one
  (groups, size, d) block (one for CIFAR-100's tree, two for a balanced one); the batch is padded
  by group and each block's present groups, gathered once, take one batched matmul. Greedy
  predict does the same for predicted groups, or, when most groups are predicted, multiplies
  every group's block in place (no gather). One small host sync per step reads the largest count.
The measured times of both are `tools.heads_bench`'s (hierarchical against hierarchical[matmuls])
and the README's.
"""
from __future__ import annotations

import torch

from heads.speed import kernels
from heads.speed.sparse import sparse_grad


def segments_of(sizes: torch.Tensor) -> list[tuple[int, int, int, int]]:
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
    1.5-2x as long (measured: README)."""
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
    """`_GroupedLogits` by the CPU kernels of heads/speed/kernels.cpp (fp32 on the CPU): the same logits
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


BF16_ON_KERNELS = True  # bf16 features on the CPU take the fp32 kernels (cast), not the bf16 batched matmuls
EVERY_GROUP_SHARE = 0.4  # the share of groups present above which predict reads every group (measured: README)


def _logits_every_group(x, weight, bias, group, segments, segment_first, width_out):
    """Greedy predict's within-group logits (B, M) without gradients. When most groups hold an
    example, one batched matmul per segment over *all* its groups, the batch padded to every
    group, reads each weight row once where gathering the present groups' blocks first reads and
    writes them and reads them again. With few groups present the gather wins, so below
    `EVERY_GROUP_SHARE` this is `_GroupedLogits` (both measured: README)."""
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


def class_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, group: torch.Tensor, *,
                 offset: torch.Tensor, size: torch.Tensor, segments, segment_first: torch.Tensor, width: int,
                 dense: bool = False, predict: bool = False, cpu_kernels: bool = True) -> torch.Tensor:
    """Each row's logits over its group's classes (B, width; zeros past the group's size). The class
    rows are stored group by group: group g's are rows offset[g] .. offset[g] + size[g]; `segments`
    (`segments_of(size)`) and `segment_first` describe the runs of equal-size groups. The weight and
    bias gradients are row-sparse, or dense C x d tensors with `dense`. `predict`: no gradients are
    needed, so every group's block may be read in place. `cpu_kernels=False` takes the batched
    matmuls on the CPU too (the same results; for comparison)."""
    if cpu_kernels and BF16_ON_KERNELS and x.dtype == torch.bfloat16 and _on_kernels(x.float(), weight):
        x = x.float()  # bf16 autocast on the CPU: the fp32 kernels beat bf16 batched matmuls (README)
    if cpu_kernels and _on_kernels(x, weight):
        return _KernelLogits.apply(x, weight, bias, group, offset, size, width, dense)
    if predict:
        return _logits_every_group(x, weight, bias, group, segments, segment_first, width)
    return _GroupedLogits.apply(x, weight, bias, group, segments, segment_first, width, dense)
