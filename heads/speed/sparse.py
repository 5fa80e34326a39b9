"""Row-sparse parameters: gradients for the class rows a step touches, and a lazy optimizer for them.

A head with C classes keeps a (C, d) weight, but sampled and hierarchical softmax use a few
rows per step. A dense step still writes a C x d gradient and updates all C x d weights
(momentum, moments, weight decay); at large C that memory traffic, not the multiply-adds,
is the cost. Here:

- `rows(index, weight, ...)` returns `weight[index]` whose gradient is a sparse COO tensor
  holding only those rows (what `nn.Embedding(sparse=True)` does, for any tensor, 1-D bias
  included);
- `LazyRows` applies an optimizer rule to the touched rows only. SGD and RMSprop: *a row's
  state advances only on the steps whose gradient touches it; on such a step the row takes
  exactly the dense rule's update (the step's lr, weight decay, momentum); on the other steps
  the row and its state stay as they are* (the rule of TensorFlow Addons' `LazyAdam`,
  extended to SGD's momentum, Nesterov and coupled weight decay). A dense optimizer instead
  keeps moving an untouched row with its stale momentum and decays it every step. Adam and
  AdamW *catch up*: when a row is touched again after s untouched steps, it first takes in
  closed form what dense Adam would have done over those steps with a zero gradient (moments
  decayed by beta^s, the weight moved by the decaying bias-corrected momentum, AdamW's decay
  (1 - lr*wd)^s), then this step's update with the optimizer's step count. So a row lands
  where dense Adam(W) puts it on every step that touches it (exact up to eps against
  sqrt(v), tested), with two approximations: the gap's steps use the current lr, and Adam's
  coupled L2 decay (which would feed wd*w through the moments) is left out of the gap. Without
  the catch-up a row touched once moves lr*1 where dense Adam moves it ~lr*30 (bias
  correction ~3x, momentum tail ~10x): sampled softmax learned far worse at the same lr.
  The two rules agree with the dense one when every row is touched every step. PyTorch's
  stock SGD refuses sparse gradients with weight decay or Nesterov, hence this class;
- `Chained` steps a dense and a lazy optimizer as one, so a scheduler, `zero_grad` and a
  checkpoint see a single optimizer;
- `one_thread` and `on_one_thread` run a few hundred rows' worth of work on the calling CPU
  thread: a step over so few rows is a few dozen ops of a few hundred KB each, and waking the
  other OpenMP threads for every op costs more than they save; from about 1e6 elements two
  threads win, hence `SMALL` (the measured steps: README);
- many runs of rows (a hierarchical head's groups) are updated in one parallel region, the runs
  shared between the threads by size and each run's kernel on its thread (`_each_run`, the CPU
  kernels' `over_runs`): one kernel per run woke the other threads once per run (README).
The optimizer table (training/optim.py) splits a model's parameters (`split_parameters`) and
chains its dense optimizer with `LazyRows` for the row-sparse ones (`Chained`).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.rmsprop import rmsprop
from torch.optim.sgd import sgd

from heads.speed import kernels
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


SMALL = 2 ** 19  # elements (2 MB of fp32) up to which work runs on one thread (module docstring)
# Without the CPU kernels' shared update (`_each_run`), the lazy update of runs of rows runs one
# fused kernel per run, and on two threads each kernel wakes the other thread: 55k rows in runs of
# 55 rows took 119 ms on two threads against 30 on one; runs of 275 rows tie (31 ms); runs of 550
# rows are faster on two (23 against 30). So there runs of up to SMALL_RUN elements (256 rows of
# 512) are updated on one thread.
SMALL_RUN = 2 ** 17


@contextlib.contextmanager
def one_thread(device: torch.device, numel: int, limit: int = SMALL):
    """The block's ops on the calling thread when `device` is the CPU and each op's work (`numel`:
    the elements of its largest tensor, or of one of many like kernels) is at most `limit`; the
    thread count is restored after it, also when it raises. (A change of thread count costs
    nothing measurable.)"""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or numel > limit:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _OnOneThread(torch.autograd.Function):
    """fn(*inputs) with its forward and its backward inside `one_thread`. The inner graph is recorded
    in forward and differentiated by torch.autograd.grad in backward (as torch.utils.checkpoint
    does, without recomputing), so row-sparse gradients pass through unchanged."""

    @staticmethod
    def forward(ctx, fn, numel, *inputs):
        inner = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
        with torch.enable_grad(), one_thread(inputs[0].device, numel):
            out = fn(*inner)
        ctx.graph, ctx.numel = (out, inner), numel
        return out.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        out, inner = ctx.graph  # autograd.grad frees the inner graph's buffers, as a backward does
        wanted = [t for t in inner if t.requires_grad]
        with one_thread(grad.device, ctx.numel):
            grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        return (None, None, *(next(grads) if t.requires_grad else None for t in inner))


def on_one_thread(fn, numel: int, *inputs: torch.Tensor) -> torch.Tensor:
    """fn(*inputs), a tensor, computed and differentiated on one CPU thread when its largest
    intermediate has at most `SMALL` elements (`numel`; `one_thread`)."""
    return _OnOneThread.apply(fn, numel, *inputs)


class LazyRows(torch.optim.Optimizer):
    """An optimizer rule (`RULES`) applied lazily to the rows of row-sparse gradients (module docstring).

    The arithmetic is PyTorch's own (the functional `torch.optim.sgd.sgd`, `adam`, `adamw`,
    `rmsprop`; fused kernels where PyTorch has them), so a row moves exactly as the stock
    optimizer would move it. Long runs of consecutive rows (a hierarchical head's groups) are
    updated in place as views, shared between the threads (`_each_run`); scattered rows
    (sampled) are gathered into copies, updated and scattered back. Adam(W) first catches up the
    steps a row missed (`_catch_up`).
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
        # The steps taken, and the step of each row's last update (0: never). Float: Optimizer.
        # load_state_dict casts state to the parameter's dtype (exact below 2**24 steps).
        return {"exp_avg": zeros(), "exp_avg_sq": zeros(), "step": torch.zeros((), dtype=torch.float32, device=p.device),
                "row_last": torch.zeros(p.shape[:1], dtype=p.dtype, device=p.device)}

    def _update(self, p: torch.Tensor, group: dict) -> None:
        index, values = _touched_rows(p)
        state = self.state[p]
        if not state:
            state.update(self._fresh_state(p))
        tensors = {k: v for k, v in state.items() if k not in ("step", "row_last")}
        last = state["row_last"].index_select(0, index) if "row_last" in state else None
        if last is not None:
            state["step"] += 1
        if _in_long_runs(index):  # a hierarchical head's groups: views, updated in place
            bounds, lengths, first = _runs(index, last)
            views = lambda t: list(torch.tensor_split(t, bounds)[1::2])  # noqa: E731
            params, grads = views(p), list(torch.split(values, lengths))
            states = {k: views(v) for k, v in tensors.items()}
            lasts = None if last is None else last.index_select(0, first)
            _each_run(lambda lo, hi: self._apply(group, params[lo:hi], grads[lo:hi],
                                                 {k: v[lo:hi] for k, v in states.items()},
                                                 None if lasts is None else lasts[lo:hi], state.get("step")),
                      lengths, p.device, values.numel())
        else:  # scattered rows (sampled): gather copies, update them, scatter them back, on one thread
            with one_thread(p.device, values.numel()):
                copies = {"param": p.index_select(0, index), **{k: v.index_select(0, index) for k, v in tensors.items()}}
                self._apply(group, [copies["param"]], [values], {k: [v] for k, v in copies.items() if k != "param"},
                            last, state.get("step"))
                for k, v in copies.items():
                    (p if k == "param" else tensors[k]).index_copy_(0, index, v)
        if last is not None:
            state["row_last"].index_fill_(0, index, state["step"].item())

    def _apply(self, group: dict, params: list, grads: list, state: dict, last: torch.Tensor | None,
               step: torch.Tensor | None) -> None:
        """The stock rule on lists of row blocks. Adam(W): `last`, the step of each block's (one
        row per block when there is one block) last update, `step` this one's (`_catch_up` first).
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
        else:
            _catch_up(params, state["exp_avg"], state["exp_avg_sq"], last, int(step.item()), group,
                      decoupled=self.rule == "adamw")
            (adam if self.rule == "adam" else adamw)(  # every row at the optimizer's step, as dense
                params, grads, state["exp_avg"], state["exp_avg_sq"], [], [step - 1 for _ in params],  # (it adds 1)
                foreach=not fused, fused=fused, amsgrad=False, beta1=group["momentum"], beta2=group["beta2"],
                eps=group["eps"], weight_decay=wd, **hp)


def _each_run(update, lengths: list[int], device: torch.device, numel: int) -> None:
    """update(lo, hi): the lazy rule on runs [lo, hi) of rows (`lengths` rows each, `numel` values
    in all). With the CPU kernels and more than `SMALL` values, the runs are shared between the
    threads by size, each share's kernels on its thread, in one parallel region (`heads.speed.kernels`
    `over_runs`); otherwise one kernel per run, on one thread when the runs are short (`SMALL_RUN`)."""
    threads, compiled = torch.get_num_threads(), kernels.compiled() if device.type == "cpu" else None
    if compiled is None or threads == 1 or len(lengths) == 1 or numel <= SMALL:
        with one_thread(device, numel // len(lengths), SMALL_RUN):
            return update(0, len(lengths))
    compiled.over_runs(update, _shares(lengths, threads))


def _shares(lengths: list[int], parts: int) -> list[int]:
    """Bounds [0, ..., len(lengths)] cutting the runs into at most `parts` contiguous shares of
    about equal rows (no share empty)."""
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, parts) / parts) + 1  # after the run crossing each cut
    return sorted({0, len(lengths), *[int(c) for c in cuts if 0 < c < len(lengths)]})


def _gap(last: torch.Tensor, step: int, beta1: float, beta2: float, shrink: float):
    """What dense Adam does to rows last updated at step `last` (0: never) over the s = step-1-last
    steps since, in which their gradient was zero: m and v decay by beta1^s and beta2^s, the
    weight shrinks by shrink^s (AdamW's decoupled decay, 1 - lr*wd) and drifts by
    -lr * drift * m/(sqrt(v) + eps), drift = sum_j shrink^(s-j) c_j with
    c_j = beta1^j sqrt(1 - beta2^(last+j)) / ((1 - beta1^(last+j)) beta2^(j/2)): the bias-corrected
    update of gap step j. (Adam's eps is kept outside the sum: exact up to eps/sqrt(v).) The terms
    fall as (beta1/sqrt(beta2))^j, so the sum stops where they are below 1e-12. Per distinct
    `last` in float64; returns per-row (float32) factors (shrink^s, drift, beta1^s, beta2^s)."""
    distinct, inverse = torch.unique(last.double(), return_inverse=True)
    gap = (step - 1) - distinct
    ratio = beta1 / math.sqrt(beta2)
    terms = min(int(gap.max()), math.ceil(math.log(1e-12) / math.log(ratio)))
    j = torch.arange(1, terms + 1, dtype=torch.float64, device=last.device)
    t = distinct[:, None] + j
    c = beta1 ** j * torch.sqrt(1 - beta2 ** t) / ((1 - beta1 ** t) * beta2 ** (j / 2))
    weight = torch.where(j <= gap[:, None], shrink ** (gap[:, None] - j), 0.0)
    factors = torch.stack([shrink ** gap, (c * weight).sum(1), beta1 ** gap, beta2 ** gap], 1)
    return factors.float()[inverse].unbind(1)


def _catch_up(params: list, exp_avg: list, exp_avg_sq: list, last: torch.Tensor, step: int, group: dict,
              decoupled: bool) -> None:
    """Give the row blocks (`last`: one value per block, or per row of a single block) the dense
    rule's updates of the steps they missed (`_gap`), before this step's update."""
    missed = last < step - 1
    if not bool(missed.any()):
        return
    shrink = 1 - group["lr"] * group["weight_decay"] if decoupled else 1.0  # Adam's L2 left out: README
    a, drift, m_decay, v_decay = _gap(last, step, group["momentum"], group["beta2"], shrink)
    if len(params) == 1 and len(last) > 1:  # one block of scattered rows: per-row factors
        p, m, v = params[0], exp_avg[0], exp_avg_sq[0]
        rows = lambda x: x.view(-1, *[1] * (p.ndim - 1))  # noqa: E731  (a factor per row)
        move = m / (v.sqrt() + group["eps"])
        p.mul_(rows(a)).sub_(move * rows(group["lr"] * drift))
        m.mul_(rows(m_decay)), v.mul_(rows(v_decay))
        return
    a, drift, m_decay, v_decay = (x.tolist() for x in (a, drift, m_decay, v_decay))
    moves = torch._foreach_div(exp_avg, torch._foreach_add(torch._foreach_sqrt(exp_avg_sq), group["eps"]))
    torch._foreach_mul_(moves, [-group["lr"] * x for x in drift])
    torch._foreach_mul_(params, a)
    torch._foreach_add_(params, moves)
    torch._foreach_mul_(exp_avg, m_decay)
    torch._foreach_mul_(exp_avg_sq, v_decay)


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
