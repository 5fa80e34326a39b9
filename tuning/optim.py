"""The optimizers a trial config may name: one table that builds them and that validation reads.

Each entry takes the parameter groups and the TrainConfig (lr, momentum, nesterov).
Weight decay is set per group by `make_optimizer`: none on biases and norm scales.
"""
from __future__ import annotations

import torch
from torch import nn

from common.registry import Registry

OPTIMIZERS = Registry("optimizer", reserved={"groups": "the model", "cfg": "the trial config"})


@OPTIMIZERS.register
def sgd(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register
def adam(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))  # L2 weight decay


@OPTIMIZERS.register
def adamw(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))  # decoupled weight decay


@OPTIMIZERS.register
def rmsprop(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


def make_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and norm scales (1-D tensors), as is usual.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS.get(cfg.optimizer)(groups, cfg)
