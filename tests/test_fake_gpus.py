"""Fractional GPUs without a GPU: a one-node Ray cluster that declares 2 (fake) GPUs, and a search at
--gpus-per-trial 0.5. Ray packs 4 trials on them at once; each trial records the GPU ids Ray gave it
and, CUDA being absent here, trains on the CPU and says so once. The trials meet at their first report
(tuning.trainable's HEADSWEEP_TEST_MEET): four run together by construction, on any machine's load,
and only if Ray placed four at once."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from cluster import LocalCluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_four_trials_share_two_fake_gpus_at_once(tmp_path, monkeypatch):
    from tuning.trainable import MEET

    meet = tmp_path / "meet"
    meet.mkdir()
    monkeypatch.setenv(MEET, f"{meet}:4")  # the cluster's nodes, and so the trials, inherit it
    cluster = LocalCluster([4], gpus_per_node=2).start()
    try:
        done = cluster.run([sys.executable, "-m", "tuning.search", "--space", "smoke", "--address", cluster.address,
                            "--storage", str(tmp_path), "--name", "g", "--gpus-per-trial", "0.5",
                            "--set", "num_samples=5", "--set", "max_concurrent=4", "--set", "cpus_per_trial=1",
                            "--set", "head=softmax", "--set", "epochs=6", "--set", "grace_period=6"],
                           timeout=400, cwd=ROOT)
    finally:
        cluster.stop()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frames = {f.parent.name: pd.read_csv(f) for f in (tmp_path / "g").glob("*/progress.csv")}
    assert len(frames) == 5 and len(list(meet.iterdir())) == 5  # every trial came to the meeting
    assert {str(f["gpu_ids"].iloc[-1]) for f in frames.values()} <= {"0", "1"}  # each saw its own fake GPU
    windows = sorted((f["timestamp"].iloc[0] - f["time_this_iter_s"].iloc[0], f["timestamp"].iloc[-1])
                     for f in frames.values())
    most = max(sum(start <= t <= end for start, end in windows) for t, _ in windows)
    assert most >= 4, windows  # 4 x 0.5 GPU on 2 GPUs: four trials ran at once
    assert done.stdout.count("CUDA is not available here: training on the CPU") + \
        done.stderr.count("CUDA is not available here: training on the CPU") >= 1
