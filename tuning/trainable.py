"""The Ray Tune function trainable around `engine.fit`: report + checkpoint every epoch, resume.

The config is validated at trial start: a bad key or value, or a model or head that cannot be
built on this data, ends this trial alone with a result that names it (`config_error`), not an
exception, so Ray does not retry what would fail the same way. A diverging trial reports `diverged=True` with its reason and ends;
the searcher records it as failed. Checkpoints hold weights, optimizer, schedule, RNG
state and epoch, so a restored trial continues where it stopped.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
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
    _crash_test("before", metrics["epoch"])
    _meet_test(metrics["epoch"])
    with tempfile.TemporaryDirectory() as folder:
        torch.save(get_state(), Path(folder) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    _crash_test("after", metrics["epoch"])


# The tests' fault injection and rendezvous, read from the environment (unset: nothing happens)
CRASH_AT = "HEADSWEEP_TEST_CRASH_AT"  # "before:3,after:1": where the crash tests SIGKILL a trial's worker
CRASH_MARKS = "HEADSWEEP_TEST_CRASH_MARKS"  # a folder: each crash once per trial, moment and epoch
MEET = "HEADSWEEP_TEST_MEET"  # "<folder>:<n>": each trial waits at its first report until n trials are there


def _meet_test(epoch: int) -> None:
    """For the packing tests (tests/test_fake_gpus.py): each trial, at its first epoch's report, waits until
    n trials are there at once, so that 'n trials ran together' holds by construction, not by the timing
    of a loaded machine; after 300 s it goes on (the test then finds them apart)."""
    meet = os.environ.get(MEET)
    if not meet or epoch != 1:
        return
    folder, n = meet.rsplit(":", 1)
    (Path(folder) / tune.get_context().get_trial_id()).touch()
    deadline = time.monotonic() + 300
    while len(list(Path(folder).iterdir())) < int(n) and time.monotonic() < deadline:
        time.sleep(0.05)


def _crash_test(moment: str, epoch: int) -> None:
    """Fault injection for the crash tests (tests/test_crashes.py), as Ray's own tests inject theirs: the
    worker SIGKILLs itself at the named moments of the epoch's report (before it: the epoch is lost; after
    it: Ray may not have taken the result in yet), at the same places on any machine and load."""
    at, marks = os.environ.get(CRASH_AT), os.environ.get(CRASH_MARKS)
    if not at or not marks or f"{moment}:{epoch}" not in at.split(","):
        return
    try:  # created once, atomically: a restored trial that reaches the same moment again goes on
        os.close(os.open(Path(marks) / f"{tune.get_context().get_trial_id()}-{moment}-{epoch}",
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


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
