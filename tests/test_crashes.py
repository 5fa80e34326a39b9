"""A trial's worker SIGKILLed at chosen moments of its epochs (the trainable's fault injection,
tuning.trainable._crash_test): the trial goes on from its last checkpoint, never from scratch and
never repeating an epoch it had reported; a trial that crashes more often than max_failures allows ends
failed in Ray and Optuna alike, and the search says so in its exit code (1 only when nothing finished)."""
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import searched

from tuning.trainable import CRASH_AT, CRASH_MARKS

ROOT = Path(__file__).resolve().parents[1]


def _search(tmp_path: Path, name: str, crash_at: str, *sets: str) -> subprocess.CompletedProcess:
    marks = tmp_path / f"marks-{name}"
    marks.mkdir()
    env = {**os.environ, CRASH_AT: crash_at, CRASH_MARKS: str(marks), "OMP_WAIT_POLICY": "PASSIVE"}
    argv = [sys.executable, "-m", "tuning.search", "--space", "smoke", "--storage", str(tmp_path), "--name", name,
            "--no-dashboard", "--set", "epochs=4", "--set", "grace_period=4", *[a for s in sets for a in ("--set", s)]]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _epochs(exp: Path) -> dict[str, list[int]]:
    """Each trial folder's reported epochs, in order, over all its restarts."""
    return {folder: [r["epoch"] for r in rows] for folder, rows in searched.results(exp).items()}


def _optuna_states(exp: Path) -> dict[str, str]:
    return {t.user_attrs.get("ray_trial_id"): t.state.name for t in searched.optuna_trials(exp)}


@pytest.mark.slow  # Ray and a search in a subprocess
def test_a_worker_killed_before_and_after_its_reports_resumes_its_trial_from_the_checkpoint(tmp_path):
    # Every trial's worker dies twice: right after epoch 1's report (Ray may not have taken it in yet)
    # and in epoch 3 before its report (that epoch is lost and trained again from epoch 2's checkpoint).
    done = _search(tmp_path, "k", "after:1,before:3", "num_samples=3", "head=softmax", "max_concurrent=2", "max_failures=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 trials: 3 completed, 0 pruned, 0 diverged, 0 error" in done.stdout
    exp = tmp_path / "k"
    epochs = _epochs(exp)
    assert len(epochs) == 3 and len(list((tmp_path / "marks-k").iterdir())) == 6  # each worker died twice
    # none restarted from scratch, no reported epoch trained again
    assert all(e == [1, 2, 3, 4] for e in epochs.values()), epochs
    assert Counter(_optuna_states(exp).values()) == {"COMPLETE": 3}
    retries = [line for line in done.stdout.splitlines() if " retry " in line]
    assert len(retries) == 6 and all("worker died (killed or out of memory); retry" in line for line in retries)
    assert "Traceback" not in done.stdout + done.stderr  # the console's lines, not Ray's tracebacks
    assert not list(exp.rglob("checkpoint_*"))  # every trial ended: no checkpoint left


@pytest.mark.slow
def test_a_trial_that_crashes_more_than_max_failures_ends_failed_everywhere(tmp_path):
    # max_failures=1: the trial is retried once; its worker dies after epoch 1 and again after epoch 2.
    done = _search(tmp_path, "f", "after:1,after:2", "num_samples=2", "head=softmax", "max_concurrent=1", "max_failures=1")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]  # nothing finished: exit 1, not 130 "interrupted"
    assert "interrupted" not in out and "Traceback" not in out, out[-3000:]
    assert "2 trials: 0 completed, 0 pruned, 0 diverged, 2 error" in done.stdout, done.stdout[-3000:]
    import analysis

    trials = analysis.load(tmp_path / "f")
    assert list(trials.status) == ["error", "error"]
    epochs = _epochs(tmp_path / "f")
    assert len(epochs) == 2 and all(e == [1, 2] for e in epochs.values()), epochs  # the retry went on from epoch 1
    assert set(_optuna_states(tmp_path / "f").values()) == {"FAIL"}
    failed = [line for line in done.stdout.splitlines() if " failed " in line]
    assert len(failed) == 2 and all(line.endswith("worker died (killed or out of memory); gave up after 1 retry")
                                    for line in failed), failed
