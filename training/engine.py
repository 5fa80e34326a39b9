"""fit / evaluate: the training core, independent of Ray (imports torch and the registries only).

`fit(cfg, split, on_epoch)` trains backbone + head epoch by epoch on device-resident
data and calls `on_epoch(metrics, get_state)` after each epoch; the Ray trainable uses
that hook to report and checkpoint, the CLI to print. It returns the history and a small
`Trained` record (model, the forward it trained with, device, normalisation), which
`evaluate` takes. The loss is read from the device once per epoch (no per-step host
sync). A non-finite loss ends the run with status "diverged" and a reason, not an exception.
Precision: `cfg.amp` resolves per device (`precision`): bf16 autocast on CUDA and on CPUs with a
bf16 path in hardware, fp32 elsewhere; heads compute losses and log-probabilities in fp32. A
backbone with `data_init(images)` (airnet's whitening filters) gets the training images first.
`evaluate` averages each image's and its mirror image's distributions (flip TTA) where asked.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

import heads
import models
from common.status import COMPLETED, DIVERGED
from heads.speed import kernels
from training.config import ConfigError, TrainConfig
from training.data import Split
from training.loader import DeviceLoader, channel_stats
from training.optim import make_optimizer


class Classifier(nn.Module):
    """Backbone features -> head. forward() returns features; the head gives loss / log_prob."""

    def __init__(self, backbone: nn.Module, head: heads.base.Head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.backbone(x)


@dataclass
class Trained:
    """A trained model and what evaluating it needs."""

    cfg: TrainConfig
    model: Classifier
    forward: Callable  # the (maybe compiled) backbone call: training and evaluation use the same
    device: torch.device
    stats: tuple  # per-channel (mean, std) of the training images, 0-255 scale
    precision: str = "fp32"  # "bf16" (autocast) or "fp32": cfg.amp resolved on this device
    flip: bool = True  # the training flipped images (so a flipped test image is in distribution)

    def loader(self, images: np.ndarray, labels: np.ndarray) -> DeviceLoader:
        """In-order batches normalised with the training statistics (validation, test)."""
        return DeviceLoader(images, labels, max(self.cfg.batch_size, 512), self.device, train=False,
                            mean=self.stats[0], std=self.stats[1], channels_last=self.cfg.channels_last)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    status: str = COMPLETED  # or DIVERGED
    reason: str = ""
    trained: Trained | None = None

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}


@dataclass
class _Run:
    """The training state inside fit: what a checkpoint saves and restores."""

    trained: Trained
    train_loader: DeviceLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    epoch: int = 0  # epochs completed
    on_step: Callable[[int, int], None] | None = None  # (step in epoch, steps per epoch): progress lines


def resolve_device(name: str) -> torch.device:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):  # torch.device("") raises RuntimeError
        raise ValueError(f"device={name!r} is not allowed: must be auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls and convolutions in hardware (AMX tiles or AVX512-BF16):
    there oneDNN's bf16 path is 1.5-2.7x faster than fp32 (README, tools.train_bench); elsewhere it is emulated."""
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def precision(amp: str, device: torch.device, arch: str | None = None) -> str:
    """What `amp` resolves to on `device` (for backbone `arch`): "bf16" or "fp32". A backbone whose
    registry entry says `cpu_bf16=False` (measured slower in bf16 on the CPU) stays fp32 there."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if arch is not None and not models.MODELS.meta(arch).get("cpu_bf16", True):
        return "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def autocast(precision_: str, device: torch.device):
    """bf16 autocast for the backbone's convolutions and matmuls; heads compute their losses in fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision_ == "bf16")


def build_model(cfg: TrainConfig, dataset) -> Classifier:
    backbone = models.create_model(cfg.arch, in_chans=dataset.in_chans, img_size=dataset.img_size, **cfg.model_kwargs)
    counts = np.bincount(dataset.y_train, minlength=dataset.num_classes)
    head = heads.create_head(cfg.head, backbone.num_features, dataset.num_classes, hierarchy=dataset.class_to_group,
                             class_counts=counts, label_smoothing=cfg.label_smoothing, **cfg.head_kwargs)
    return Classifier(backbone, head)


def augmentation(cfg: TrainConfig, dataset) -> dict:
    """The loader's augmentation: the config's choices, the dataset's own defaults where the config says auto."""
    own = dataset.augment
    return {"augment": cfg.augment, "pad": cfg.crop_pad,
            "flip": own.get("flip", True) if cfg.flip is None else cfg.flip,
            "pad_mode": own.get("pad_mode", "constant") if cfg.pad_mode == "auto" else cfg.pad_mode}


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


def build_run(cfg: TrainConfig, split: Split) -> _Run:
    if cfg.batch_size > len(split.y_train):  # not the batch asked for, and images/s would count it anyway
        raise ValueError(f"batch_size={cfg.batch_size} is more than the {len(split.y_train)} training images: "
                         "not one full batch per epoch")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, split.dataset).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    stats = channel_stats(split.x_train)
    train = DeviceLoader(split.x_train, split.y_train, cfg.batch_size, device, train=True, mean=stats[0],
                         std=stats[1], seed=cfg.seed, channels_last=cfg.channels_last,
                         **augmentation(cfg, split.dataset))
    if hasattr(model.backbone, "data_init"):  # e.g. airnet's whitening filters, from the training images
        model.backbone.data_init(train.normalised(5000))
    optimizer = make_optimizer(cfg, model)
    steps = len(train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, steps))
    forward = torch.compile(model.backbone) if cfg.compile else model.backbone
    trained = Trained(cfg, model, forward, device, stats, precision(cfg.amp, device, cfg.arch),
                      train.augment and train.flip)
    return _Run(trained, train, optimizer, scheduler)


def train_step(run: _Run, x: torch.Tensor, y: torch.Tensor, mark: Callable[[str], None] | None = None):
    """One optimizer step on a batch; returns the loss (on the device, no host sync). `mark(phase)`
    is called after the forward, the backward and the optimizer (tools.train_bench times them)."""
    t, mark = run.trained, mark or (lambda phase: None)
    with autocast(t.precision, t.device):
        loss = t.model.head.loss(t.forward(x), y).float()
    mark("forward")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mark("backward")
    if t.cfg.grad_clip:
        nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    mark("optimizer")
    return loss.detach()


def train_epoch(run: _Run) -> float:
    """One pass over the training split; returns the mean loss (one host sync)."""
    t = run.trained
    t.model.train()
    total = torch.zeros((), device=t.device)
    for step, (x, y) in enumerate(run.train_loader, 1):
        total += train_step(run, x, y).float()
        if run.on_step is not None:  # counts only: no host sync
            run.on_step(step, len(run.train_loader))
    return total.item() / len(run.train_loader)


def _log_prob(trained: Trained, x: torch.Tensor) -> torch.Tensor:
    with autocast(trained.precision, x.device):
        return trained.model.head.log_prob(trained.forward(x)).float()


def tta_flip(cfg: TrainConfig, trained: Trained) -> bool:
    """Flip test-time augmentation: on when asked and the training itself flipped the images."""
    return cfg.tta_flip and trained.flip


@torch.no_grad()
def evaluate(trained: Trained, loader: DeviceLoader, return_log_probs: bool = False, tta: bool = True) -> dict:
    """Mean NLL, top-1 and top-5 accuracy of the full distribution (log_prob) over `loader`; with the
    flip test-time augmentation where the config asks for it (`tta=False`: never), and then also the
    top-1 accuracy of the plain images alone (`acc_without_tta`), read off the same pass."""
    model, flip = trained.model, tta and tta_flip(trained.cfg, trained)
    model.eval()
    nll = torch.zeros((), device=loader.device, dtype=torch.float64)
    top1, top5, plain1 = torch.zeros_like(nll), torch.zeros_like(nll), torch.zeros_like(nll)
    outputs = []
    for x, y in loader:
        log_p = _log_prob(trained, x)
        if flip:  # the mean of the two distributions, still normalised
            plain1 += (log_p.argmax(1) == y).sum()
            log_p = torch.logaddexp(log_p, _log_prob(trained, x.flip(3))) - math.log(2)
        nll += -log_p.gather(1, y[:, None]).sum()
        best = log_p.topk(min(5, log_p.shape[1]), dim=1).indices
        top1 += (best[:, 0] == y).sum()
        top5 += (best == y[:, None]).any(dim=1).sum()
        if return_log_probs:
            outputs.append(log_p.cpu())
    n = loader.num_images
    result = {"loss": nll.item() / n, "acc": top1.item() / n, "top5": top5.item() / n}
    result["acc_without_tta"] = plain1.item() / n if flip else result["acc"]
    if return_log_probs:
        result["log_probs"] = torch.cat(outputs).numpy()
    return result


def get_state(run: _Run) -> dict:
    """Everything a resumed run needs to continue exactly: weights, optimizer, schedule, RNG, epoch.

    The tensors are the live ones: serialise the dict at once (torch.save), do not keep it.
    """
    state = {"model": run.trained.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "epoch": run.epoch,
             "torch_rng": torch.get_rng_state(), "loader_rng": run.train_loader.get_state()}
    if run.trained.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(run.trained.device)
    return state


def load_state(run: _Run, state: dict) -> None:
    run.trained.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.epoch = int(state["epoch"])
    torch.set_rng_state(state["torch_rng"])
    run.train_loader.set_state(state["loader_rng"])
    if "cuda_rng" in state and run.trained.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], run.trained.device)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_NO_VAL = {"loss": float("nan"), "acc": float("nan"), "top5": float("nan")}
SEEN_SAMPLE = 2000  # training images scored after each epoch of a run without a validation split (~1% of its time)


def seen_loader(trained: Trained, split: Split) -> DeviceLoader:
    """A fixed sample of the training images, in order and unaugmented: a retrain (train+val, no validation
    split) reports its accuracy so far on images it trains on (optimistic, but never the test set)."""
    n = min(SEEN_SAMPLE, len(split.y_train))
    return trained.loader(split.x_train[:n], split.y_train[:n])


def _epoch(run: _Run, val: DeviceLoader | None, seen: DeviceLoader | None = None) -> dict:
    """Train one epoch, validate, and return the epoch's metrics (with `diverged` and a reason if so);
    without a validation split, `seen` scores the accuracy so far on training images (`train_acc`)."""
    sync(run.trained.device)
    start = time.perf_counter()
    train_loss = train_epoch(run)
    sync(run.trained.device)
    seconds = time.perf_counter() - start
    run.epoch += 1
    # No validation split (retraining on train+val): the test set is evaluated once, elsewhere.
    v = evaluate(run.trained, val) if val is not None else _NO_VAL
    metrics = {"epoch": run.epoch, "train_loss": train_loss, "val_loss": v["loss"], "val_acc": v["acc"],
               "val_top5": v["top5"], "epoch_time_s": seconds,
               "images_per_s": len(run.train_loader) * run.train_loader.batch_size / seconds,
               "lr": run.optimizer.param_groups[0]["lr"], "precision": run.trained.precision}
    if seen is not None and math.isfinite(train_loss):
        metrics["train_acc"] = evaluate(run.trained, seen, tta=False)["acc"]
        metrics["train_acc_images"] = seen.num_images  # SEEN_SAMPLE, or fewer on a small training set
    if not math.isfinite(train_loss) or (val is not None and not math.isfinite(v["loss"])):
        metrics.update(diverged=True, reason=f"non-finite loss at epoch {run.epoch} (train {train_loss}, "
                                             f"val {v['loss']})")
    return metrics


def fit(cfg: TrainConfig, split: Split, on_epoch: Callable[[dict, Callable[[], dict]], None] | None = None,
        state: dict | None = None, on_step: Callable[[int, int], None] | None = None) -> FitResult:
    """Train for cfg.epochs (continuing from `state` if given) and validate after every epoch."""
    try:
        run = build_run(cfg, split)
    except ValueError as exc:  # before any training: the config (with this data) is at fault
        raise ConfigError(str(exc)) from exc
    run.on_step = on_step
    if run.trained.device.type == "cpu":  # a first build of the heads' kernels (~30 s) is not an epoch's time
        kernels.compiled()
    if state is not None:
        load_state(run, state)
    val = run.trained.loader(split.x_val, split.y_val) if len(split.y_val) else None
    seen = seen_loader(run.trained, split) if val is None else None
    result = FitResult(trained=run.trained)
    while run.epoch < cfg.epochs:
        metrics = _epoch(run, val, seen)
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, lambda: get_state(run))
        if metrics.get("diverged"):
            result.status, result.reason = DIVERGED, metrics["reason"]
            break
    return result
