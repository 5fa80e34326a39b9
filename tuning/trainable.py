"""The Ray Tune function trainable around `engine.fit`: report + checkpoint every epoch, resume.

The config is validated at trial start: a bad key or value fails this trial alone with
a message naming it. A diverging trial reports `diverged=True` with its reason and ends;
the searcher records it as failed. Checkpoints hold weights, optimizer, schedule, RNG
state and epoch, so a restored trial continues where it stopped.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from ray import tune

from tuning import engine
from tuning.config import TrainConfig
from tuning.data import Split

STATE_FILE = "state.pt"


def _restore_state() -> dict | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        # Tensors, numbers and containers only: a checkpoint file cannot run code when read.
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def _report(metrics: dict, get_state) -> None:
    with tempfile.TemporaryDirectory() as folder:
        torch.save(get_state(), Path(folder) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def train_trial(config: dict, split: Split) -> None:
    cfg = TrainConfig.from_dict(config)
    engine.fit(cfg, split, on_epoch=_report, state=_restore_state())
