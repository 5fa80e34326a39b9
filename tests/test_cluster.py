"""A real two-node Ray cluster on this machine (tests/cluster.py): the search and the retrain
with --address, the search as a Ray job (stopped, then resumed as another job), and the
dashboard's token. README, "On a cluster"."""
from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cluster import RAY, LocalCluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SEARCH = [sys.executable, "-m", "tuning.search", "--space", "smoke"]


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster([1, 1]).start()  # two nodes of one CPU: a smoke trial takes one
    yield c
    c.stop()


def _nodes(exp: Path) -> set[str]:
    """The Ray node of each trial's last epoch, from its progress.csv."""
    return {pd.read_csv(f)["node_id"].iloc[-1] for f in exp.glob("*/progress.csv")}


def _optuna_states(exp: Path) -> Counter:
    from tuning.experiment import Experiment

    e = Experiment.open(exp)
    return Counter(t.state.name for name in e.study_names() for t in e.load_study(name).trials)


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    """The dashboard's REST API: (HTTP status, body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_search_and_retrain_run_on_both_nodes(cluster, tmp_path):
    """By construction, not by the scheduler's luck: while the test holds the head node's CPU, every trial of
    the search (its driver on the head) must run on the worker node; while it holds the worker's, every
    retrain task runs on the head."""
    nodes = cluster.run([RAY, "list", "nodes", "--address", cluster.dashboard, "--format", "json"], timeout=60)
    assert {n["node_ip"] for n in json.loads(nodes.stdout)} == {"127.0.0.1"} and len(json.loads(nodes.stdout)) == 2
    ids = cluster.node_ids()
    storage = tmp_path / "shared"  # one path both nodes see: the trials write there, the driver reads it
    t = time.monotonic()
    with cluster.hold(0):
        done = cluster.run([*SEARCH, "--address", cluster.address, "--storage", str(storage), "--name", "c"],
                           timeout=300, cwd=ROOT)
    wall = time.monotonic() - t
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"smoke search on the two-node cluster: {wall:.1f} s wall")
    assert "12 trials: " in done.stdout and "0 error" in done.stdout
    assert _nodes(storage / "c") == {ids["node_1"]}  # every trial on the worker, none where the driver is
    with cluster.hold(1):
        retrain = cluster.run([sys.executable, "-m", "analysis.retrain", str(storage / "c"), "--seeds", "1",
                               "--address", cluster.address, "-v"], timeout=300, cwd=ROOT)
    assert retrain.returncode == 0, retrain.stdout[-3000:] + retrain.stderr[-3000:]
    final = pd.read_parquet(storage / "c" / "analysis" / "final.parquet")
    assert len(final) == 5 and (final["status"] == "completed").all()
    assert set(final["node_id"]) == {ids["node_0"]}  # every retrain task on the head


def test_dashboard_answers_with_the_token_only(cluster):
    status, body = _get(f"{cluster.dashboard}/api/version", cluster.token)
    assert status == 200 and json.loads(body)["ray_version"]
    assert _get(f"{cluster.dashboard}/api/version", None)[0] == 401
    assert _get(f"{cluster.dashboard}/api/version", "0" * 64)[0] == 403


def test_search_as_a_ray_job_stops_and_resumes(cluster, tmp_path):
    """`ray job submit`: the dashboard's Jobs page has the driver's logs; a stopped job's search
    continues in a second job with --resume (the name alone)."""
    exp = tmp_path / "shared" / "j"
    job = [RAY, "job", "submit", "--address", cluster.dashboard]
    args = ["--storage", str(exp.parent), "--name", "j"]
    first = cluster.run([*job, "--submission-id", "hs-j-1", "--no-wait", "--", *SEARCH, *args,
                         "--set", "epochs=6", "--set", "num_samples=8"], timeout=120, cwd=ROOT)
    assert first.returncode == 0, first.stdout + first.stderr
    deadline = time.monotonic() + 180
    # Stop it once a trial has reported and Ray has saved its state (a stop before that is a new search).
    while not (list(exp.glob("*/progress.csv")) and list(exp.glob("experiment_state-*.json"))):
        assert time.monotonic() < deadline, cluster.run([RAY, "job", "logs", "--address", cluster.dashboard,
                                                         "hs-j-1"], timeout=60).stdout[-3000:]
        time.sleep(0.5)
    stop = cluster.run([RAY, "job", "stop", "--address", cluster.dashboard, "hs-j-1"], timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    # The Jobs page's data: the job, stopped, with the driver's own output in its logs.
    status, body = _get(f"{cluster.dashboard}/api/jobs/hs-j-1", cluster.token)
    assert status == 200 and json.loads(body)["status"] == "STOPPED", body
    deadline = time.monotonic() + 60  # the driver's last lines reach the job's log a moment after it stops
    while True:
        logs = cluster.run([RAY, "job", "logs", "--address", cluster.dashboard, "hs-j-1"], timeout=60).stdout
        if "interrupted; continue with:" in logs or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert "experiment      " in logs and " start " in logs, logs[-3000:]
    # The job's SIGTERM stopped the search as Ctrl-C does: Ray saved its state and said how to go on.
    assert "interrupted; continue with:" in logs, logs[-3000:]

    second = cluster.run([*job, "--submission-id", "hs-j-2", "--", sys.executable, "-m", "tuning.search", *args,
                          "--resume"], timeout=300, cwd=ROOT)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "8 trials: " in second.stdout and ", 0 error" in second.stdout, second.stdout[-3000:]
    states = _optuna_states(exp)
    assert states["COMPLETE"] + states["PRUNED"] == 8 and not states["RUNNING"], states
