"""The Ray Tune function trainable around `engine.fit`: report + checkpoint every epoch, resume.

The config is validated at trial start: a bad key or value, or a model or head that cannot be
built on this data, ends this trial alone with a result that names it (`config_error`), not an
exception, so Ray does not retry what would fail the same way. A diverging trial reports `diverged=True` with its reason and ends;
the searcher records it as failed. Checkpoints hold weights, optimizer, schedule, RNG
state and epoch, so a restored trial continues where it stopped.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from common.status import CONFIG_ERROR
from training import engine
from training.config import ConfigError, TrainConfig
from training.data import Split
from tuning.results import METRICS

STATE_FILE = "state.pt"


def _restore_state() -> dict | None:
    """The trial's last checkpoint, or None (a fresh start) when it has none or it cannot be read:
    a truncated or crafted file is refused, said on the trial's log, and the trial starts over
    rather than failing again on the same file."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as folder:
            # Tensors, numbers and containers only: a checkpoint file cannot run code when read.
            return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: torch raises many kinds
        where = f"{checkpoint.path}/{STATE_FILE}"
        print(f"refused checkpoint {where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
              "this trial starts from scratch", file=sys.stderr, flush=True)
        return None


def _report(metrics: dict, get_state) -> None:
    # The node that ran the epoch: on one machine with several Ray nodes, node_ip and hostname are
    # the same for all, the node id is not. The GPUs Ray gave the trial, as it gave them.
    metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": _gpu_ids()}
    with tempfile.TemporaryDirectory() as folder:
        torch.save(get_state(), Path(folder) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def trial_threads() -> int:
    """Torch threads for this trial: its share of the CPUs (at least one). Packed trials then use
    the cores they were given, not all of them each (oversubscribed OpenMP threads slow all)."""
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)))


def _gpu_ids() -> str:
    return ",".join(str(i) for i in ray.get_gpu_ids())


def _device_note(cfg: TrainConfig) -> TrainConfig:
    """A trial given GPUs on a machine where CUDA is absent trains on the CPU and says so, once."""
    ids = _gpu_ids()
    if ids and not torch.cuda.is_available() and (cfg.device == "auto" or cfg.device.startswith("cuda")):
        print(f"trial has GPU(s) {ids} from Ray, but CUDA is not available here: training on the CPU",
              file=sys.stderr, flush=True)
        cfg.device = "cpu"
    return cfg


def train_trial(config: dict, split: Split) -> None:
    # Ray logs "Checkpoint successfully created" at every epoch of every trial: the search's
    # console says what matters (tuning/console.py).
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    torch.set_num_threads(trial_threads())
    try:
        cfg = TrainConfig.from_dict(config)
    except ValueError as exc:
        return _config_error(exc)
    try:
        engine.fit(_device_note(cfg), split, on_epoch=_report, state=_restore_state())
    except ConfigError as exc:
        return _config_error(exc)


def _config_error(exc: Exception) -> None:
    """End the trial on a config that cannot run, as its one result: Ray retries a raised error
    (FailureConfig.max_failures), and this one would come back every time."""
    tune.report({**{m: float("nan") for m in METRICS}, "epoch": 0, CONFIG_ERROR: str(exc),
                 "node_id": ray.get_runtime_context().get_node_id()})
