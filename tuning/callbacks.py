"""Ray Tune callbacks of the search: disk kept bounded while it runs, nothing a resume needs removed.

`EndedTrialCheckpoints` removes a trial's checkpoints once it has ended (ran its epochs,
stopped by ASHA, or diverged): nothing resumes an ended trial, and a 60-trial search that kept
two checkpoints of every trial would keep tens of GB. Its metrics (result.json, progress.csv)
stay. The removal waits until Ray's saved experiment state lists the trial as ended (read from
the file, not its mtime: Ray copies an older save into the folder after the trial ended, and
a copy's mtime is new): a driver killed before that resumes the trial as running, from its
checkpoint. A
trial that failed keeps its checkpoints: `--resume` retries it from there. With `keep_best`,
the best trial so far of each (arch, head) pair keeps its last checkpoint, its final weights.

A running trial keeps the checkpoint Ray's saved state names (its last result's
`checkpoint_dir_name`) and every newer one; older ones go. (Ray's own `num_to_keep=2` deletes
by count: a driver killed after epoch 6 but before the snapshot that followed epoch 4 resumed
the trial from a checkpoint already deleted, and lost it.)
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import pyarrow.fs
from ray.tune import Callback

from tuning import manifest
from tuning.results import newest_state, state_entries

CHECK_EVERY_S = 5.0  # how often the saved experiment state is looked at while trials wait


def checkpoint_dirs(fs: pyarrow.fs.FileSystem, trial_path: str) -> list[str]:
    """A trial folder's checkpoint_NNNNNN folders, oldest first."""
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(trial_path))
    except FileNotFoundError:
        return []
    return sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                  and i.base_name.startswith("checkpoint_"))


def remove_checkpoints(fs: pyarrow.fs.FileSystem, trial_path: str, keep_last: bool = False) -> None:
    for path in checkpoint_dirs(fs, trial_path)[:-1 if keep_last else None]:
        fs.delete_dir(path)


def saved_trials(fs: pyarrow.fs.FileSystem, experiment_path: str) -> dict[str, tuple[str, str | None]] | None:
    """trial id -> (its status, the checkpoint folder a resume would start it from) in Ray's newest
    saved state (None when no state can be read now: nothing is removed on a guess)."""
    try:
        name = newest_state(fs, experiment_path)
        if name is None:
            return None
        with fs.open_input_stream(f"{experiment_path}/{name}") as f:
            entries = state_entries(f.read())
        saved = {}
        for trial, meta in entries:
            checkpoint = (meta.get("last_result") or {}).get("checkpoint_dir_name")
            saved[str(trial["trial_id"])] = (str(trial["status"]), checkpoint if isinstance(checkpoint, str) else None)
        return saved
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # being written, or not Ray's
        return None


class EndedTrialCheckpoints(Callback):
    def __init__(self, metric: str, mode: str, keep_best: bool = False):
        self.metric, self.sign, self.keep_best = metric, 1.0 if mode == "max" else -1.0, keep_best
        self.score: dict[str, float] = {}  # trial_id -> its best metric so far, signed so that larger is better
        self.diverged: set[str] = set()  # their scores mislead: never kept
        self.kept: dict[tuple, tuple[float, str]] = {}  # (arch, head) -> (score, trial folder) of the kept weights
        self.waiting: list[object] = []  # trials ended, checkpoints not yet removed
        self.running: dict[str, object] = {}  # trial id -> trial: reported, not ended
        self.next_check = 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.running[trial.trial_id] = trial
        value = result.get(self.metric)
        if result.get("diverged"):
            self.diverged.add(trial.trial_id)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            self.score[trial.trial_id] = max(self.score.get(trial.trial_id, -math.inf), self.sign * value)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.keep_best and trial.trial_id in self.score and trial.trial_id not in self.diverged:
            pair, score = (trial.config.get("arch"), trial.config.get("head")), self.score[trial.trial_id]
            if pair not in self.kept or score > self.kept[pair][0]:
                replaced = self.kept.get(pair)
                self.kept[pair] = (score, trial.path)
                if replaced and not any(t.path == replaced[1] for t in self.waiting):  # already settled
                    remove_checkpoints(trial.storage.storage_filesystem, replaced[1])
        self.running.pop(trial.trial_id, None)
        self.waiting.append(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.pop(trial.trial_id, None)  # a failed trial keeps its checkpoints for the retry

    def on_step_end(self, iteration, trials, **info):
        some = next(iter(self.running.values()), None) or (self.waiting[0] if self.waiting else None)
        if some is not None and time.monotonic() >= self.next_check:
            self.next_check = time.monotonic() + CHECK_EVERY_S
            saved = saved_trials(some.storage.storage_filesystem, some.storage.experiment_fs_path)
            if saved is not None:
                self._settle(lambda trial: saved.get(trial.trial_id, ("",))[0] == "TERMINATED")
                self._trim_running({t: c for t, (_, c) in saved.items() if c})

    def _trim_running(self, saved: dict[str, str]) -> None:
        """Remove a running trial's checkpoints older than the one before the checkpoint Ray's saved state
        names. That one stays too: the saved state's last result can already name a new checkpoint while
        Ray's checkpoint manager, which a restore reads, still holds the one before it (a worker killed
        then restored from a deleted checkpoint_000004 and lost its trial)."""
        for trial_id, trial in list(self.running.items()):
            if trial_id in saved:
                fs = trial.storage.storage_filesystem
                older = [p for p in checkpoint_dirs(fs, trial.path) if p.rsplit("/", 1)[-1] < saved[trial_id]]
                for path in older[:-1]:
                    fs.delete_dir(path)

    def on_experiment_end(self, trials, **info):
        self._settle(lambda trial: True)

    def _settle(self, recorded_ended) -> None:
        """Remove the checkpoints of the ended trials that Ray's saved state records as ended."""
        kept = {path for _, path in self.kept.values()}
        for trial in [t for t in self.waiting if recorded_ended(t)]:
            remove_checkpoints(trial.storage.storage_filesystem, trial.path, keep_last=trial.path in kept)
        self.waiting = [t for t in self.waiting if not recorded_ended(t)]


def fresh_trial_states(staging: Path, trials: list) -> list[str]:
    """Put each trial's current state into the experiment state Ray just staged where Ray wrote an older
    one; returns the ids of the trials it mended.

    Ray (2.60) writes a trial's cached JSON, refreshed only for the trials it marked since the last save,
    and a trial whose worker died before Ray stopped it ends ERROR unmarked (`TuneController.
    _schedule_trial_stop` returns before marking a trial that has no actor). Its last save then keeps it
    RUNNING, and the search reads as interrupted (exit 130 and a resume that retrains it) though it ended:
    on a loaded machine, where the worker's death is seen first, one crash-test search in three.
    `Trial.get_json_state()` is what Ray writes for a marked trial."""
    path = max(staging.glob("experiment_state-*.json"), default=None)  # this run's: the names end in its start
    if path is None or not trials:
        return []
    state = json.loads(path.read_text())
    now = {t.trial_id: t for t in trials}
    mended = []
    for i, (trial_json, _) in enumerate(state["trial_data"]):
        saved = json.loads(trial_json)
        trial = now.get(saved.get("trial_id"))
        if trial is not None and saved.get("status") != trial.status:
            state["trial_data"][i] = list(trial.get_json_state())
            mended.append(trial.trial_id)
    if mended:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)
    return mended


class StateManifest(Callback):
    """Signs the files a resume would unpickle (`tuning.manifest`) each time Ray saves them, and
    keeps a copy of the last whole save.

    Ray saves its state in a staging folder on the driver (the experiment state, then the
    searcher's, then the callbacks' through `get_state`) and then copies the folder into the
    experiment. `get_state` runs after the pickles are written and before the copy: it writes
    the manifest into the experiment, then moves the state files there itself, each whole
    (`manifest.publish`). It returns None: nothing of it is pickled.
    """

    def __init__(self):
        self.trials: list = []  # Ray's own list of the experiment's trials, as on_step_begin hands it

    def on_step_begin(self, iteration, trials, **info):
        self.trials = trials

    def get_state(self):
        if self.trials:
            storage = self.trials[0].storage
            staging = Path(storage.experiment_driver_staging_path)
            try:
                # An earlier copy still running would write older files over the ones published here.
                storage.syncer.wait()
            except Exception as exc:  # noqa: BLE001  (Ray re-raises its copy's error here; the next save retries)
                print(f"headsweep: Ray's last copy of the state failed: {exc}", file=sys.stderr)
            try:
                # A resume brings the experiment's manifest and kept copies into staging; Ray's
                # copy would put those stale ones back over the new, and not atomically.
                (staging / manifest.MANIFEST_FILE).unlink(missing_ok=True)
                shutil.rmtree(staging / manifest.BACKUP_DIR, ignore_errors=True)
                try:
                    fresh_trial_states(staging, self.trials)
                except (ValueError, KeyError, TypeError, IndexError) as exc:  # not Ray's layout: publish it as is
                    print(f"headsweep: trial states not checked this time: {exc!r}", file=sys.stderr)
                fs, where = storage.storage_filesystem, storage.experiment_fs_path
                staged = manifest.record(fs, where, staging)
                manifest.publish(fs, where, staging, staged)  # the state files whole; Ray copies the rest
            except OSError as exc:  # a failed save must not end the search: the next one writes it
                print(f"headsweep: manifest not written this time: {exc}", file=sys.stderr)
        return None
