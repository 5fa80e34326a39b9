"""fit / evaluate: the training core, independent of Ray (imports torch and the registries only).

`fit(cfg, split, on_epoch)` trains backbone + head epoch by epoch on device-resident
data and calls `on_epoch(metrics, get_state)` after each epoch; the Ray trainable uses
that hook to report and checkpoint, the CLI to print. The loss is read from the device
once per epoch (no per-step host sync). A non-finite loss ends the run with
status "diverged" and a reason, not an exception.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

import heads
import models
from tuning.config import TrainConfig
from tuning.data import Split
from tuning.loader import DeviceLoader, channel_stats


class Classifier(nn.Module):
    """Backbone features -> head. forward() returns features; the head gives loss / log_prob."""

    def __init__(self, backbone: nn.Module, head: heads.base.Head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.backbone(x)


@dataclass
class Run:
    cfg: TrainConfig
    device: torch.device
    model: Classifier
    train_loader: DeviceLoader
    val_loader: DeviceLoader | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    forward: Callable  # the (maybe compiled) backbone call
    stats: tuple  # per-channel (mean, std) of the training images, 0-255 scale
    epoch: int = 0  # epochs completed


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    status: str = "completed"  # completed | diverged
    reason: str = ""
    run: Run | None = None

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 on CUDA when amp is on; fp32 on CPU, where bf16 matmuls are slow and not bit-stable."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")


def build_model(cfg: TrainConfig, dataset) -> Classifier:
    backbone = models.create_model(cfg.arch, in_chans=dataset.in_chans, img_size=dataset.img_size, **cfg.model_kwargs)
    counts = np.bincount(dataset.y_train, minlength=dataset.num_classes)
    # Every head takes label_smoothing; those that cannot smooth refuse a non-zero value themselves.
    head_hp = {"label_smoothing": cfg.label_smoothing, **cfg.head_kwargs}
    head = heads.create_head(cfg.head, backbone.num_features, dataset.num_classes,
                             hierarchy=dataset.class_to_group, class_counts=counts, **head_hp)
    return Classifier(backbone, head)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and norm scales (1-D tensors), as is usual.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the peak lr at optimizer step `step`."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    # 1) linear warmup from ~0 to 1
    if step < warmup:
        return (step + 1) / warmup
    # 2) step decay: x gamma every step_epochs
    if cfg.schedule == "step":
        return cfg.step_gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    # 3) constant
    if cfg.schedule == "constant":
        return 1.0
    # 4) cosine from 1 to 0 over the remaining steps
    progress = (step - warmup) / max(1.0, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_run(cfg: TrainConfig, split: Split) -> Run:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, split.dataset).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    stats = channel_stats(split.x_train)
    train = DeviceLoader(split.x_train, split.y_train, cfg.batch_size, device, train=True, mean=stats[0],
                         std=stats[1], augment=cfg.augment, seed=cfg.seed, channels_last=cfg.channels_last)
    optimizer = make_optimizer(cfg, model)
    steps = len(train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, steps))
    forward = torch.compile(model.backbone) if cfg.compile else model.backbone
    run = Run(cfg, device, model, train, None, optimizer, scheduler, forward, stats)
    run.val_loader = eval_loader(run, split.x_val, split.y_val)
    return run


def eval_loader(run: Run, images: np.ndarray, labels: np.ndarray) -> DeviceLoader:
    """In-order batches normalised with the training statistics (validation, test)."""
    return DeviceLoader(images, labels, max(run.cfg.batch_size, 512), run.device, train=False, mean=run.stats[0],
                        std=run.stats[1], channels_last=run.cfg.channels_last)


def train_epoch(run: Run) -> float:
    """One pass over the training split; returns the mean loss (one host sync)."""
    model, cfg = run.model, run.cfg
    model.train()
    total = torch.zeros((), device=run.device)
    for x, y in run.train_loader:
        with autocast(cfg, run.device):
            loss = model.head.loss(run.forward(x), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        total += loss.detach().float()
    return total.item() / len(run.train_loader)


@torch.no_grad()
def evaluate(model: Classifier, loader: DeviceLoader, cfg: TrainConfig, return_log_probs: bool = False) -> dict:
    """Mean NLL, top-1 and top-5 accuracy of the full distribution (log_prob) over `loader`."""
    model.eval()
    nll = torch.zeros((), device=loader.device, dtype=torch.float64)
    top1, top5 = torch.zeros_like(nll), torch.zeros_like(nll)
    outputs = []
    for x, y in loader:
        with autocast(cfg, loader.device):
            log_p = model.head.log_prob(model(x)).float()
        nll += -log_p.gather(1, y[:, None]).sum()
        best = log_p.topk(min(5, log_p.shape[1]), dim=1).indices
        top1 += (best[:, 0] == y).sum()
        top5 += (best == y[:, None]).any(dim=1).sum()
        if return_log_probs:
            outputs.append(log_p.cpu())
    n = loader.num_images
    result = {"loss": nll.item() / n, "acc": top1.item() / n, "top5": top5.item() / n}
    if return_log_probs:
        result["log_probs"] = torch.cat(outputs).numpy()
    return result


def get_state(run: Run) -> dict:
    """Everything a resumed run needs to continue exactly: weights, optimizer, schedule, RNG, epoch.

    The tensors are the live ones: serialise the dict at once (torch.save), do not keep it.
    """
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "epoch": run.epoch,
             "torch_rng": torch.get_rng_state(), "loader_rng": run.train_loader.get_state()}
    if run.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(run.device)
    return state


def load_state(run: Run, state: dict) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.epoch = int(state["epoch"])
    torch.set_rng_state(state["torch_rng"])
    run.train_loader.set_state(state["loader_rng"])
    if "cuda_rng" in state and run.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(cfg: TrainConfig, split: Split, on_epoch: Callable[[dict, Callable[[], dict]], None] | None = None,
        state: dict | None = None) -> FitResult:
    """Train for cfg.epochs (continuing from `state` if given) and validate after every epoch."""
    run = build_run(cfg, split)
    if state is not None:
        load_state(run, state)
    result = FitResult(run=run)
    while run.epoch < cfg.epochs:
        _sync(run.device)
        start = time.perf_counter()
        train_loss = train_epoch(run)
        _sync(run.device)
        seconds = time.perf_counter() - start
        run.epoch += 1
        # No validation split (retraining on train+val): the test set is evaluated once, elsewhere.
        has_val = run.val_loader.num_images > 0
        val = evaluate(run.model, run.val_loader, cfg) if has_val else \
            {"loss": float("nan"), "acc": float("nan"), "top5": float("nan")}
        metrics = {"epoch": run.epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_acc": val["acc"],
                   "val_top5": val["top5"], "epoch_time_s": seconds,
                   "images_per_s": len(run.train_loader) * run.train_loader.batch_size / seconds,
                   "lr": run.optimizer.param_groups[0]["lr"]}
        if not math.isfinite(train_loss) or (has_val and not math.isfinite(val["loss"])):
            result.status = "diverged"
            result.reason = f"non-finite loss at epoch {run.epoch} (train {train_loss}, val {val['loss']})"
            metrics.update(diverged=True, reason=result.reason)
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, lambda: get_state(run))
        if result.status == "diverged":
            break
    return result


def head_time_share(run: Run, steps: int = 10) -> float:
    """Share of a training step's time spent in the head (its loss forward + backward).

    Times `steps` full steps (backbone + head + optimizer) and the head alone on the
    same batches' features, side by side; no optimizer step is applied.
    """
    model, cfg = run.model, run.cfg
    model.train()
    batches = [b for _, b in zip(range(steps), run.train_loader)]

    def timed(fn) -> float:
        _sync(run.device)
        start = time.perf_counter()
        for x, y in batches:
            fn(x, y)
        _sync(run.device)
        return time.perf_counter() - start

    def full(x, y):
        with autocast(cfg, run.device):
            loss = model.head.loss(run.forward(x), y)
        loss.backward()

    with torch.no_grad(), autocast(cfg, run.device):
        features = [run.forward(x).detach().requires_grad_() for x, _ in batches]
    pairs = iter(features)

    def head_only(_x, y):
        with autocast(cfg, run.device):
            loss = model.head.loss(next(pairs), y)
        loss.backward()

    total = timed(full)
    share = timed(head_only) / total
    model.zero_grad(set_to_none=True)
    return share
