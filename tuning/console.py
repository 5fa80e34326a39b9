"""The search's console: one line per trial event and a compact periodic status, instead of
Ray Tune's tables (about 45 lines per trial). Ray's own output is turned off (verbose=0).

    0:07 start     cnn/softmax c850ebc2  lr=0.0125 batch_size=32 label_smoothing=0.109
    0:08 rung      cnn/softmax c850ebc2  epoch 1  val_acc=0.050
    0:09 completed cnn/softmax c850ebc2  4 epochs  val_acc=0.200 (best 0.200)
    0:10 pruned    cnn/gumbel d6ddfbc3   1 epoch   val_acc=0.010 (best 0.010)
    0:11 failed    cnn/sampled 1e75ef10  ValueError: head_num_sampled=500 is more than ...
    0:30 status    3 running, 2 pending, 7/12 done
               cnn/softmax        1 running  0 pending  2 done  best val_acc=0.200
               ...

Levels: quiet (failures only), normal (events at each ASHA rung, status every STATUS_EVERY_S),
verbose (every epoch's result too, status twice as often).
"""
from __future__ import annotations

import math
import os
import shlex
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from ray.tune import Callback

from common.cli import NOTHING_USABLE, WIDTH, clip, short
from common.status import COMPLETED, CONFIG_ERROR, DIVERGED, ERROR, FINISHED, RUNNING, trial_status
from tuning.folder import ExperimentFolder, mlflow_uri
from tuning.live import runs_page
from tuning.results import Results, config_columns

QUIET, NORMAL, VERBOSE = 0, 1, 2
STATUS_EVERY_S = 30.0


def rungs(grace_period: int, reduction_factor: int, max_epochs: int) -> set[int]:
    """The epochs at which ASHA compares a trial with its pair's others."""
    out, epoch = set(), grace_period
    while epoch < max_epochs:
        out.add(epoch)
        epoch *= reduction_factor
    return out


def error_line(text: str | None, node: str | None = None) -> str:
    """The line that says what went wrong: the last non-empty line of a traceback, or what a lost
    worker or node means in a few words (Ray's paragraph on it lists causes that are not ours)."""
    lost = lost_worker(text, node)
    if lost:
        return lost
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no error text)"


def lost_worker(text: str | None, node: str | None = None) -> str | None:
    """What Ray's error says was lost when a trial's process or machine died (the node by its id, when known),
    or None for any other error."""
    text = text or ""
    if "node has died" in text or "NodeDiedError" in text or "node died" in text:
        return f"node {node[:8] + ' ' if node else ''}lost (machine gone or raylet died)"
    if "worker process has died" in text or "ActorDiedError" in text or "WorkerCrashedError" in text:
        return "worker died (killed or out of memory)"
    return None


class Console(Callback):
    def __init__(self, metric: str, mode: str, max_epochs: int, num_samples: int, constants: set[str],
                 rung_epochs: set[int], level: int = NORMAL, out=None):
        self.metric, self.sign, self.max_epochs, self.num_samples = metric, 1 if mode == "max" else -1, max_epochs, \
            num_samples
        self.constants, self.rung_epochs, self.level = constants, rung_epochs, level
        self.out = out  # None: sys.stdout when printing (pytest's capture replaces it)
        self.start = time.monotonic()
        self.next_status = self.start + STATUS_EVERY_S / (2 if level >= VERBOSE else 1)
        self.best: dict[str, float] = {}  # pair label -> best metric so far (finite, signed)

    # ------------------------------------------------------------------ printing
    def say(self, event: str, trial, text: str = "") -> None:
        elapsed = int(time.monotonic() - self.start)
        label = f"{self.pair(trial)} {trial.trial_id}"
        print(clip(f"{elapsed // 60}:{elapsed % 60:02d} {event:<9} {label:<28} {text}".rstrip()),
              file=self.out or sys.stdout, flush=True)

    @staticmethod
    def pair(trial) -> str:
        return f"{trial.config.get('arch', '?')}/{trial.config.get('head', '?')}"

    def value(self, result: dict) -> str:
        v = result.get(self.metric)
        return f"{self.metric}={v:.3f}" if isinstance(v, (int, float)) else f"{self.metric}=-"

    def note_best(self, trial, result: dict) -> None:
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and not result.get("diverged"):
            key = self.pair(trial)
            self.best[key] = max(self.best.get(key, -math.inf), self.sign * v)

    # ------------------------------------------------------------------ Ray Tune's hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        if self.level >= NORMAL:
            searched = [(k, v) for k, v in trial.config.items() if k not in self.constants and k not in ("arch", "head")]
            # numbers first (lr, batch_size, ...), lists last: a long list must not hide them
            searched.sort(key=lambda kv: (isinstance(kv[1], (list, tuple, dict)), kv[0]))
            params = " ".join(f"{k}={short(v)}" for k, v in searched)
            self.say("start", trial, params)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(CONFIG_ERROR):
            return  # not an epoch: on_trial_complete says "failed"
        self.note_best(trial, result)
        epoch = result.get("training_iteration")
        if self.level >= VERBOSE or (self.level >= NORMAL and epoch in self.rung_epochs):
            self.say("epoch" if epoch not in self.rung_epochs else "rung", trial, f"epoch {epoch}  {self.value(result)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status = trial_status("TERMINATED", last, self.max_epochs)
        if self.level < NORMAL and status not in (DIVERGED, ERROR):
            return
        epochs = last.get("training_iteration", 0)
        if status == ERROR:  # its config cannot run: ended at once, not retried (tuning.trainable)
            self.say("failed", trial, f"config error: {last.get(CONFIG_ERROR)}")
            return
        if status == DIVERGED:
            self.say(status, trial, f"after {epochs} epochs: {last.get('reason', 'non-finite loss')}")
            return
        best = self.best.get(self.pair(trial))
        best = f" (pair's best {self.sign * best:.3f})" if best is not None else ""
        self.say(COMPLETED if status == COMPLETED else "pruned", trial,
                 f"{epochs} epoch{'s' * (epochs != 1)}  {self.value(last)}{best}")

    def on_trial_error(self, iteration, trials, trial, **info):
        retries = getattr(trial, "max_failures", 0)
        self.say("failed", trial, _what_failed(trial) + (
            f"; gave up after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""))

    def on_trial_recover(self, iteration, trials, trial, **info):
        checkpoint = trial.checkpoint.path.rsplit("/", 1)[-1] if trial.checkpoint else None
        self.say("retry", trial, f"{_what_failed(trial)}; retry {trial.num_failures}/{trial.max_failures} "
                                 + (f"from {checkpoint}" if checkpoint else "from scratch"))

    def on_step_end(self, iteration, trials, **info):
        if self.level >= NORMAL and time.monotonic() >= self.next_status:
            self.next_status = time.monotonic() + STATUS_EVERY_S / (2 if self.level >= VERBOSE else 1)
            self.print_status(trials)

    def print_status(self, trials) -> None:
        out = self.out or sys.stdout
        count = lambda ts, *states: sum(t.status in states for t in ts)  # noqa: E731
        done = count(trials, "TERMINATED", "ERROR")
        elapsed = int(time.monotonic() - self.start)
        print(f"{elapsed // 60}:{elapsed % 60:02d} status    {count(trials, 'RUNNING')} running, "
              f"{count(trials, 'PENDING', 'PAUSED')} pending, {done}/{self.num_samples} done", file=out)
        by_pair: dict[str, list] = {}
        for t in trials:
            by_pair.setdefault(self.pair(t), []).append(t)
        for label, ts in sorted(by_pair.items()):
            best = self.best.get(label)
            best = f"best {self.metric}={self.sign * best:.3f}" if best is not None else ""
            print(clip(f"{'':15}{label:<24} {count(ts, 'RUNNING')} running  {count(ts, 'PENDING', 'PAUSED')} "
                       f"pending  {count(ts, 'TERMINATED', 'ERROR')} done  {best}".rstrip()), file=out)
        out.flush()


def _what_failed(trial) -> str:
    """The error's line; for a lost node, which one (the node id its last epoch ran on, as Ray names it)."""
    return error_line(_error_text(trial), (trial.last_result or {}).get("node_id"))


def _error_text(trial) -> str | None:
    """The error Ray wrote for the trial: on the driver first (the storage copy comes later)."""
    try:
        if trial.error_file:
            with open(trial.error_file, errors="replace") as f:
                return f.read()
    except OSError:
        pass
    return trial.get_error()


# ----------------------------------------------------------------------------- the search's frame
def resume_command(exp: ExperimentFolder) -> str:
    return shlex.join([sys.executable.rsplit("/", 1)[-1], "-m", "tuning.search", "--name", exp.name,
                       "--storage", exp.storage, "--resume"])


def print_views(exp: ExperimentFolder, dashboard_url: str | None, local: bool, live: bool = False) -> None:
    """The live views, once, each a command or URL that works as printed."""
    token = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    lines = [f"experiment      {exp.uri}"]
    if live:
        lines.append(f"Live page       mlflow ui --backend-store-uri {shlex.quote(mlflow_uri(exp))} --host 127.0.0.1  "
                     f"then {runs_page(exp)}  (every trial of every pair; stays after the search)")
    if dashboard_url:
        notes = (["token: `ray get-auth-token`"] if token else []) + (["closes when the search ends"] if local else [])
        lines.append(f"Ray dashboard   http://{dashboard_url}" + (f"  ({'; '.join(notes)})" if notes else ""))
    lines.append(f"Optuna          optuna-dashboard {shlex.quote(str(exp.journal))}")
    lines.append(f"TensorBoard     tensorboard --logdir {shlex.quote(exp.uri)}")
    print("\n".join(lines), flush=True)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def summarize(exp: Results, stopped: bool = False) -> int:
    """The end-of-run summary, within 120 columns: trial counts by status and the best trial per
    (backbone, head) with its searched values, diverged and failed trials left out (their scores
    mislead); exit 1 when none finished. analysis.load(...) has every column."""
    trials = exp.trials()
    failed = trials[trials["status"] == ERROR] if len(trials) else trials
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    print(f"\n{len(trials)} trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in (*FINISHED, DIVERGED, ERROR))
          + (f", {counts[RUNNING]} not finished" if counts.get(RUNNING) else ""))
    if len(trials):
        per_pair = trials.groupby(["arch", "head"]).size()
        print(textwrap.fill(f"trials per (backbone, head) ({exp.spec.get('budget', 'joint')} budget): "
                            + ", ".join(f"{a}/{h}={n}" for (a, h), n in per_pair.items()), WIDTH,
                            subsequent_indent="  "))
    if "path" in trials and not exp.is_uri:
        sizes = [folder_bytes(Path(p)) for p in trials["path"]]
        print(f"disk: {np.mean(sizes) / 2**10:.0f} KB per trial, {sum(sizes) / 2**20:.1f} MB in all (checkpoints of "
              "ended trials removed)")
    metric = exp.settings.get("metric", "val_acc")
    best = exp.best(trials) if len(trials) and trials["status"].isin(FINISHED).any() else trials[:0]
    print(f"best trial per (backbone, head), by validation {metric}:" + ("" if len(best) else " (none)"))
    searched = [c for c in config_columns(trials) if c not in ("arch", "head")
                and trials[c].astype(str).nunique() > 1] if len(best) else []
    for _, row in best.iterrows():
        values = " ".join(f"{c}={short(row[c])}" for c in searched if _present(row[c]))
        print(clip(f"  {row['arch'] + '/' + row['head']:<24} {row[f'best_{metric}']:.4f}  {int(row['epochs_run'])} ep  "
                    f"{row['trial_id']}  {values}".rstrip()))
    if len(trials) and not stopped and not trials["status"].isin(FINISHED).any():
        first = failed["error"].dropna().head(1).tolist()
        print("no trial finished (every one failed or diverged); first error:",
              error_line(first[0]) if first else "-", file=sys.stderr)
        return NOTHING_USABLE
    return 0


def _present(value) -> bool:
    return not (isinstance(value, float) and np.isnan(value)) and value is not None
