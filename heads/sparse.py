"""Row-sparse parameters: gradients for the class rows a step touches, and a lazy optimizer for them.

A head with C classes keeps a (C, d) weight, but sampled and hierarchical softmax use a few
rows per step. A dense step still writes a C x d gradient and updates all C x d weights
(momentum, moments, weight decay); at large C that memory traffic, not the multiply-adds,
is the cost. Here:

- `rows(index, weight, ...)` returns `weight[index]` whose gradient is a sparse COO tensor
  holding only those rows (what `nn.Embedding(sparse=True)` does, for any tensor, 1-D bias
  included);
- `LazyRows` applies an optimizer rule to the touched rows only. Its definition:
  *a row's state advances only on the steps whose gradient touches it; on such a step the
  row takes exactly the dense rule's update (the step's lr, weight decay, momentum, Adam
  moments with the row's own step count for bias correction); on the other steps the row
  and its state stay as they are.* A dense optimizer instead keeps moving an untouched row
  with its stale momentum and decays it every step. The two agree exactly when every row is
  touched every step, and for one step from a fresh state. This is the rule of PyTorch's
  `SparseAdam` and TensorFlow Addons' `LazyAdam`, extended to SGD (momentum, Nesterov,
  coupled weight decay), AdamW and RMSprop. PyTorch's stock SGD refuses sparse gradients
  with weight decay or Nesterov, hence this class;
- `Chained` steps a dense and a lazy optimizer as one, so a scheduler, `zero_grad` and a
  checkpoint see a single optimizer.
"""
from __future__ import annotations

import torch
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.rmsprop import rmsprop
from torch.optim.sgd import sgd

from heads.base import Head

RULES = ("sgd", "adam", "adamw", "rmsprop")
FUSED_DEVICES = ("cpu", "cuda")  # where PyTorch has fused SGD and Adam(W) kernels


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, index, *tensors):
        ctx.save_for_backward(index)
        ctx.shapes = [t.shape for t in tensors]
        return tuple(t.index_select(0, index) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        (index,) = ctx.saved_tensors
        # Repeated ids summed here (coalesce: a sort, faster than index_add_ on CPU), so the
        # optimizer receives sorted unique rows.
        return (None, *(sparse_grad(index, g, shape).coalesce() for g, shape in zip(grads, ctx.shapes)))


def rows(index: torch.Tensor, *tensors: torch.Tensor):
    """t[index] for each tensor (any number of dims, same first dim); the gradients reaching the
    tensors are row-sparse. One tensor gives one result, several a tuple."""
    out = _Rows.apply(index, *tensors)
    return out[0] if len(tensors) == 1 else out


def sparse_grad(index: torch.Tensor, values: torch.Tensor, shape, coalesced: bool = False) -> torch.Tensor:
    """A row-sparse gradient of a tensor of `shape`: rows `index` (sorted and unique if `coalesced`)."""
    return torch.sparse_coo_tensor(index[None], values, shape, is_coalesced=coalesced, check_invariants=False)


class LazyRows(torch.optim.Optimizer):
    """An optimizer rule (`RULES`) applied lazily to the rows of row-sparse gradients (module docstring).

    The arithmetic is PyTorch's own (the functional `torch.optim.sgd.sgd`, `adam`, `adamw`,
    `rmsprop`; fused kernels where PyTorch has them), so a row moves exactly as the stock
    optimizer would move it. Long runs of consecutive rows (a hierarchical head's groups) are
    updated in place as views; scattered rows (sampled) are gathered into copies, updated and
    scattered back. Adam's bias correction counts each row's own steps (runs are split where
    counts differ). A row moves only on the steps that touch it, so under Adam a rarely touched
    row learns slower than a dense row at the same lr (README, "sampled").
    Hyperparameters mirror the stock optimizers: sgd(momentum, nesterov), adam/adamw(betas=
    (momentum, beta2), eps), rmsprop(alpha, eps, momentum); `weight_decay` is L2 added to the
    gradient, except for adamw (decoupled). Dense gradients are accepted too (every row touched).
    """

    def __init__(self, params, rule: str, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, beta2: float = 0.999, alpha: float = 0.99, eps: float = 1e-8):
        if rule not in RULES:
            raise ValueError(f"rule={rule!r} is not one of {RULES}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      beta2=beta2, alpha=alpha, eps=eps))
        self.rule = rule

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _fresh_state(self, p) -> dict:
        zeros = lambda: torch.zeros_like(p, memory_format=torch.contiguous_format)  # noqa: E731
        if self.rule == "sgd":
            return {"momentum_buffer": zeros()} if self.defaults["momentum"] else {}
        if self.rule == "rmsprop":
            return {"square_avg": zeros(), "momentum_buffer": zeros()}
        # Per-row step count (float: Optimizer.load_state_dict casts state to the parameter's dtype).
        return {"exp_avg": zeros(), "exp_avg_sq": zeros(),
                "row_steps": torch.zeros(p.shape[:1], dtype=p.dtype, device=p.device)}

    def _update(self, p: torch.Tensor, group: dict) -> None:
        index, values = _touched_rows(p)
        state = self.state[p]
        if not state:
            state.update(self._fresh_state(p))
        tensors = {k: v for k, v in state.items() if k != "row_steps"}
        steps = state["row_steps"].index_select(0, index) if "row_steps" in state else None
        if _in_long_runs(index):  # a hierarchical head's groups: views, updated in place
            bounds, lengths, first = _runs(index, steps)
            views = lambda t: list(torch.tensor_split(t, bounds)[1::2])  # noqa: E731
            self._apply(group, views(p), list(torch.split(values, lengths)), {k: views(v) for k, v in tensors.items()},
                        None if steps is None else steps.index_select(0, first))
        else:  # scattered rows (sampled): gather copies, update them, scatter them back
            if steps is not None:  # rows with equal step counts side by side: one tensor per count
                order = torch.argsort(steps, stable=True)
                index, values, steps = index[order], values[order], steps[order]
                run_steps, counts = torch.unique_consecutive(steps, return_counts=True)
                sizes = counts.tolist()
            else:
                run_steps, sizes = None, [len(index)]
            copies = {"param": p.index_select(0, index), **{k: v.index_select(0, index) for k, v in tensors.items()}}
            parts = {k: list(torch.split(v, sizes)) for k, v in copies.items()}
            self._apply(group, parts.pop("param"), list(torch.split(values, sizes)), parts, run_steps)
            for k, v in copies.items():
                (p if k == "param" else tensors[k]).index_copy_(0, index, v)
        if steps is not None:
            state["row_steps"].index_add_(0, index, torch.ones_like(steps))

    def _apply(self, group: dict, params: list, grads: list, state: dict, steps: torch.Tensor | None) -> None:
        """The stock rule on lists of row blocks; `steps`: each block's step count (adam, adamw).
        SGD and Adam(W) run PyTorch's fused kernels (one pass over each block, weight decay
        included); RMSprop, which has none, runs multi-tensor with L2 folded into the gradient."""
        wd, fused = group["weight_decay"], params[0].device.type in FUSED_DEVICES
        hp = dict(lr=group["lr"], maximize=False)
        if self.rule == "sgd":
            bufs = state["momentum_buffer"] if group["momentum"] else [None] * len(params)
            sgd(params, grads, bufs, foreach=not fused, fused=fused, momentum=group["momentum"], dampening=0.0,
                nesterov=group["nesterov"], weight_decay=wd, **hp)
        elif self.rule == "rmsprop":
            if wd:  # in place: the functional rule would copy every gradient block to add it
                torch._foreach_add_(grads, params, alpha=wd)
            rmsprop(params, grads, state["square_avg"], [], state["momentum_buffer"],
                    [params[0].new_zeros(()) for _ in params], foreach=True, alpha=group["alpha"], eps=group["eps"],
                    momentum=group["momentum"], centered=False, weight_decay=0.0, **hp)
        else:  # the step tensors are copies: the functional rule advances them, row_steps is advanced per row
            (adam if self.rule == "adam" else adamw)(
                params, grads, state["exp_avg"], state["exp_avg_sq"], [], list(steps.clone().unbind()),
                foreach=not fused, fused=fused, amsgrad=False, beta1=group["momentum"], beta2=group["beta2"],
                eps=group["eps"], weight_decay=wd, **hp)


def _touched_rows(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique row ids and their gradient rows; duplicates (a class both target and sample) summed."""
    grad = p.grad
    if not grad.is_sparse:
        return torch.arange(p.shape[0], device=p.device), grad
    index = grad._indices()[0]
    if len(index) > 1 and not bool((index[1:] > index[:-1]).all()):  # autograd drops the coalesced flag
        grad = grad.coalesce()
        index = grad._indices()[0]
    return index, grad._values()


def _in_long_runs(index: torch.Tensor, min_length: int = 16) -> bool:
    """Whether sorted `index` is mostly runs of consecutive rows (`min_length` rows a run on average)."""
    breaks = int((index[1:] != index[:-1] + 1).sum()) if len(index) > 1 else 0
    return (breaks + 1) * min_length <= len(index)


def _runs(index: torch.Tensor, steps: torch.Tensor | None):
    """Maximal runs of consecutive rows in sorted `index` (and equal `steps`, when given):
    row bounds [start0, end0, start1, end1, ...], run lengths, and each run's first position."""
    cut = torch.ones_like(index, dtype=torch.bool)
    cut[1:] = index[1:] != index[:-1] + 1
    if steps is not None:
        cut[1:] |= steps[1:] != steps[:-1]
    first = cut.nonzero().squeeze(1)
    lengths = torch.diff(first, append=first.new_tensor([len(index)]))
    start = index[first]
    bounds = torch.stack([start, start + lengths], 1).flatten()
    host = torch.cat([bounds, lengths]).tolist()  # one host sync
    n = len(host) // 3
    return host[:2 * n], host[2 * n:], first


class Chained(torch.optim.Optimizer):
    """Several optimizers stepped as one. The param_groups are the children's own dicts, so an
    lr scheduler that sets group["lr"] sets it for the child that steps with it."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = [o for o in optimizers if o is not None]
        super().__init__([g for o in self.optimizers for g in o.param_groups], {})
        # The children's defaults, for schedulers that read them (OneCycleLR looks for momentum).
        self.defaults = {k: v for o in self.optimizers for k, v in o.defaults.items()}

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict):
        for o, s in zip(self.optimizers, state_dict["optimizers"], strict=True):
            o.load_state_dict(s)
        # Optimizer.load_state_dict replaces a child's group dicts: share the new ones again.
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]


def split_parameters(module: torch.nn.Module) -> tuple[list, list]:
    """(dense, row-sparse) parameters of `module`: the sparse ones are those its heads declare."""
    sparse = {id(p) for m in module.modules() if isinstance(m, Head) for p in m.sparse_parameters()}
    params = list(module.parameters())
    return [p for p in params if id(p) not in sparse], [p for p in params if id(p) in sparse]


def decay_groups(params: list, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: none on biases and norm scales (1-D tensors), as is usual."""
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(module: torch.nn.Module, make_dense, rule: str, lr: float, momentum: float, nesterov: bool,
                    weight_decay: float) -> torch.optim.Optimizer:
    """`make_dense(groups)` for the dense parameters; with row-sparse ones, chained with LazyRows(rule)."""
    dense, sparse = split_parameters(module)
    dense_opt = make_dense(decay_groups(dense, weight_decay)) if dense else None
    if not sparse:
        return dense_opt
    lazy = LazyRows(decay_groups(sparse, weight_decay), rule=rule, lr=lr, momentum=momentum, nesterov=nesterov)
    return Chained(dense_opt, lazy)
