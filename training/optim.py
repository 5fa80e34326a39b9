"""The optimizers a trial config may name: one table that builds them and that validation reads.

Each entry takes the parameter groups and the TrainConfig (lr, momentum, nesterov) and builds
the dense optimizer with its multi-tensor kernel (`fused`, or `foreach` where no fused one
exists): the default per-tensor loop allocates temporaries the size of every weight each
step, which dominates the step of a large output layer (6.5 s -> 0.3 s per update at 1e6
classes on a 2-core CPU). Weight decay is set per group by `make_optimizer`: none on
biases and norm scales. Parameters a head declares row-sparse get the same rule applied
lazily to the rows a step touches (`heads.sparse.LazyRows`).
"""
from __future__ import annotations

import torch
from torch import nn

from common.registry import Registry
from heads.sparse import build_optimizer

OPTIMIZERS = Registry("optimizer", reserved={"groups": "the model", "cfg": "the trial config"})


@OPTIMIZERS.register
def sgd(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           fused=True)


@OPTIMIZERS.register
def adam(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), fused=True)  # L2 weight decay


@OPTIMIZERS.register
def adamw(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), fused=True)  # decoupled weight decay


@OPTIMIZERS.register
def rmsprop(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)  # no fused kernel


def make_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The config's optimizer; with a row-sparse head, chained with its lazy row-wise twin."""
    return build_optimizer(model, lambda groups: OPTIMIZERS.get(cfg.optimizer)(groups, cfg), cfg.optimizer,
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)
