"""What a user watching a search sees: the console, and the views it prints, opened the way the
printed commands open them (optuna-dashboard's own app on the journal, TensorBoard's own reader
on the log folder, MLflow's client on its store)."""
from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import sys
import wsgiref.util
from pathlib import Path

import pytest

import heads

pytestmark = pytest.mark.slow


def _printed(out: str, label: str) -> list[str]:
    """The command printed after `label` at the start of the search, as argv."""
    line = next(ln for ln in out.splitlines() if ln.startswith(label))
    return shlex.split(line[len(label):])


def _get(app, path: str):
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status[0].startswith("200"), (path, status)
    return json.loads(body)


def test_console_is_calm(smoke_experiment):
    _, code, out = smoke_experiment
    lines = out.splitlines()
    assert code == 0 and len(lines) < 150, f"{len(lines)} lines"
    summary = lines[next(i for i, ln in enumerate(lines) if re.match(r"\d+ trials: ", ln)):]
    assert max(len(ln) for ln in summary) <= 120, max(summary, key=len)
    events = [ln for ln in lines if re.match(r"\d+:\d\d (start|completed|pruned) ", ln)]
    assert sum(" start " in ln for ln in events) == 12
    assert sum(" completed " in ln or " pruned " in ln for ln in events) == 12
    assert all(len(ln) <= 120 for ln in events)
    assert not any("Checkpoint successfully created" in ln or "Trial status:" in ln for ln in lines)
    assert not any("driver_artifacts" in ln for ln in lines), "Ray's second TensorBoard hint"


def test_optuna_dashboard_finds_every_trial_with_its_ray_folder(smoke_experiment):
    from optuna_dashboard import wsgi

    exp, _, out = smoke_experiment
    command = _printed(out, "Optuna ")
    assert command[0] == "optuna-dashboard" and Path(command[1]) == exp / "optuna.log"
    app = wsgi(command[1])  # what `optuna-dashboard PATH` serves
    studies = _get(app, "/api/studies")["study_summaries"]
    assert len(studies) == 5  # one per (arch, head) pair
    trials = [t for s in studies for t in _get(app, f"/api/studies/{s['study_id']}")["trials"]]
    assert len(trials) == 12
    # The metric is named (the dashboard's axis says val_acc, not "Objective 0").
    assert all(_get(app, f"/api/studies/{s['study_id']}")["objective_names"] == ["val_acc"] for s in studies)
    folders = [{a["key"]: a["value"] for a in t["user_attrs"]}["ray_trial_dir"] for t in trials]
    assert len(set(folders)) == 12 and all((Path(f) / "progress.csv").exists() for f in folders)
    assert all(re.fullmatch(r"cnn-[a-z]+-[0-9a-f]{8}", Path(f).name) for f in folders)


def test_tensorboard_reads_every_trial_from_the_one_logdir(smoke_experiment):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    exp, _, out = smoke_experiment
    command = _printed(out, "TensorBoard ")
    assert command[:2] == ["tensorboard", "--logdir"] and Path(command[2]) == exp
    runs = EventMultiplexer().AddRunsFromDirectory(command[2]).Reload()
    tags = {run: runs.GetAccumulator(run).Tags()["scalars"] for run in runs.Runs()}
    assert len(tags) == 12 and all("ray/tune/val_acc" in t for t in tags.values()), tags


def test_the_live_page_has_every_trial_with_its_pair_status_and_curve(smoke_experiment):
    """The MLflow store behind the live page (the API the MLflow UI reads): one run per trial, tagged with
    its pair and its final status as the search's own results say, with its whole val_acc curve."""
    import mlflow

    import analysis

    exp, _, out = smoke_experiment
    command = _printed(out, "Live page ")
    assert command[:3] == ["mlflow", "ui", "--backend-store-uri"] and command[3] == f"sqlite:///{exp / 'mlflow.db'}"
    client = mlflow.MlflowClient(command[3])
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    trials = analysis.load(exp)
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    assert len(runs) == 12 and set(by_trial) == set(trials["trial_id"])
    for t in trials.itertuples():
        run = by_trial[t.trial_id]
        assert run.data.tags["pair"] == f"{t.arch}/{t.head}" and run.data.tags["status"] == t.status
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == t.epochs_run
        # the trial's own metrics only (not Ray's bookkeeping nor `config/...`: the config is in the params)
        assert set(run.data.metrics) <= {"epoch", "val_acc", "val_loss", "val_top5", "train_loss", "lr",
                                         "epoch_time_s", "images_per_s"} and "val_acc" in run.data.metrics
    assert {r.data.tags["status"] for r in runs} >= {"completed", "pruned"}
    assert {r.data.params["head"] for r in runs} == set(heads.list_heads())
    # the UI's filters work on the tags
    pruned = client.search_runs([runs[0].info.experiment_id], "tags.status = 'pruned'")
    assert {r.data.tags["trial_id"] for r in pruned} == set(trials[trials.status == "pruned"]["trial_id"])

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _page(url: str) -> str:
    """The page's DOM once its scripts have run, as headless Chromium renders it."""
    import subprocess

    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=30000", "--window-size=1600,1200", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here: `make browser` installs it (Debian package)")
def test_the_live_page_in_a_browser_shows_every_trial_and_filters_the_pruned(smoke_experiment):
    """The printed command serves the page; Chromium opens the printed address (the runs table) and finds
    every trial by its name (pair and trial id), then the printed filter for the pruned ones."""
    import os
    import signal
    import subprocess
    import time
    import urllib.parse
    import urllib.request

    import analysis

    exp, _, out = smoke_experiment
    command, url = _printed(out, "Live page ")[:6], _printed(out, "Live page ")[7]
    assert command[:2] == ["mlflow", "ui"] and re.fullmatch(r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs", url)
    port = _free_port()  # not 5000: a user's own MLflow may be there
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), *command[1:], "--port", str(port)],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        home, deadline = f"http://127.0.0.1:{port}/", time.time() + 180
        while True:
            try:
                urllib.request.urlopen(home, timeout=5).read()
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow ui did not answer in 180 s"
                time.sleep(1)
        url = url.replace(":5000/", f":{port}/")
        trials = analysis.load(exp)
        names = lambda dom: set(re.findall(r"cnn/[a-z]+ ([0-9a-f]{8})", dom))  # noqa: E731
        assert names(_page(url)) == set(trials["trial_id"])
        pruned = names(_page(url + "?searchFilter=" + urllib.parse.quote("tags.status = 'pruned'")))
        assert pruned == set(trials[trials["status"] == "pruned"]["trial_id"]) and pruned
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_the_live_page_gets_the_trials_own_numbers_only():
    """Ray's bookkeeping, the config and strings that parse as numbers (a trial id of digits, which Ray's
    callback would chart) stay off the live page; numpy numbers go on, at the trial's epoch as the step."""
    import numpy as np

    from tuning.live import LiveRuns

    logged = []

    class Store:
        def log_metrics(self, run_id, metrics_to_log, step):
            logged.append((run_id, metrics_to_log, step))

    live = LiveRuns("sqlite:///unused.db", "x", max_epochs=4)
    live.mlflow_util, live._trial_runs = Store(), {"trial": "run-1"}
    live.log_trial_result(3, "trial", {"val_acc": np.float32(0.5), "epoch": 3, "lr": 0.01, "trial_id": "12345678",
                                       "training_iteration": 3, "time_total_s": 9.0, "pid": 7, "done": False,
                                       "should_checkpoint": True, "config": {"lr": 0.01}, "hostname": "vm",
                                       "diverged": False})
    assert logged == [("run-1", {"val_acc": np.float32(0.5), "epoch": 3, "lr": 0.01}, 3)]
