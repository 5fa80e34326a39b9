"""The optimizers a trial config may name: one table that builds them, knows their search ranges and
their lazy rule, and that validation reads.

Each entry takes the parameter groups and the hyperparameters (lr, momentum, nesterov) and builds
the dense optimizer with its multi-tensor kernel (`fused`, or `foreach` where no fused one
exists): the default per-tensor loop allocates temporaries the size of every weight each step,
which dominates the step of a large output layer (README). Each entry declares at registration:
- `lr_range`: (low, high) of the peak lr at batch 128 (a search scales it with the batch size);
- `weight_decay_range`: (low, high); L2 (sgd, adam, rmsprop) and decoupled decay (adamw) differ ~100x;
- `lazy_rule`: the `heads.speed.sparse.LazyRows` rule that updates a head's row-sparse parameters.
`build` composes them: weight decay per group (none on biases and norm scales), the dense
optimizer for the dense parameters, chained with the lazy rule for the row-sparse ones.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from common.registry import Registry
from heads.speed.sparse import Chained, LazyRows, decay_groups, split_parameters

OPTIMIZERS = Registry("optimizer", reserved={"groups": "the model", "hp": "the trial config"},
                      requires=("lr_range", "weight_decay_range", "lazy_rule"))


@OPTIMIZERS.register(lr_range=(1e-3, 0.3), weight_decay_range=(1e-5, 1e-3), lazy_rule="sgd")
def sgd(groups, hp) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0,
                           fused=True)


@OPTIMIZERS.register(lr_range=(1e-4, 1e-2), weight_decay_range=(1e-6, 1e-3), lazy_rule="adam")
def adam(groups, hp) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=hp.lr, betas=(hp.momentum, 0.999), fused=True)  # L2 weight decay


@OPTIMIZERS.register(lr_range=(1e-4, 1e-2), weight_decay_range=(1e-5, 0.1), lazy_rule="adamw")
def adamw(groups, hp) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=hp.lr, betas=(hp.momentum, 0.999), fused=True)  # decoupled weight decay


@OPTIMIZERS.register(lr_range=(1e-5, 3e-3), weight_decay_range=(1e-6, 1e-3), lazy_rule="rmsprop")
def rmsprop(groups, hp) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=hp.lr, momentum=hp.momentum, foreach=True)  # no fused kernel


def build(model: nn.Module, name: str, lr: float, momentum: float = 0.9, nesterov: bool = True,
          weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Optimizer `name` for `model`; a head's row-sparse parameters get its lazy rule, chained."""
    hp = SimpleNamespace(lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    dense, sparse = split_parameters(model)
    dense_opt = OPTIMIZERS.get(name)(decay_groups(dense, weight_decay), hp) if dense else None
    if not sparse:
        return dense_opt
    lazy = LazyRows(decay_groups(sparse, weight_decay), rule=OPTIMIZERS.meta(name)["lazy_rule"], lr=lr,
                    momentum=momentum, nesterov=hp.nesterov)
    return Chained(dense_opt, lazy)


def make_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The config's optimizer for `model`."""
    return build(model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)
