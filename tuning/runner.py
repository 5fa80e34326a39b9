"""The search's run: Ray Tune's searcher (per-pair Optuna studies), ASHA, the trainable, the callbacks
and trackers, SIGTERM handling and Ray's lifecycle. `tuning.search` (the command line, Ray-free)
validates everything first and then calls `run`.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import re
import signal
import sys
from pathlib import Path

import pyarrow.fs
import ray
from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.trainable.function_trainable import wrap_function

from common.cli import INTERRUPTED, NOTHING_USABLE, check_cpus, check_gpus
from common.status import DIVERGED, FINISHED, RUNNING
from search_spaces._registry import DataInfo, Pair, Space, define_by_run
from training import data
from tuning import console
from tuning.console import print_views, resume_command, summarize
from tuning.callbacks import EndedTrialCheckpoints, StateManifest, remove_checkpoints
from tuning.experiment import Experiment
from tuning.optuna_pruned import PruningAwareOptunaSearch
from tuning.pairs import PairedSearch, PerPairASHA, trial_dirname
from tuning.folder import PARAMS_FILE, TRACKERS
from tuning.live import live_runs
from tuning.spec import first_trials, make_sampler, study_labels, trials_per_study
from tuning.trainable import train_trial


def make_searcher(space: Space, exp: Experiment, info: DataInfo, seed: int, budget: str):
    """One study per pair (PairedSearch) or one joint study, each seeded and starting from its recipe."""
    s, studies = space.resolved_settings(), exp.studies()
    trials = trials_per_study(space, budget)

    def study(label: str, pair: Pair | None):
        return PruningAwareOptunaSearch(
            space=functools.partial(define_by_run, space, info, pair), metric=s["metric"], mode=s["mode"],
            sampler=make_sampler(s["sampler"], seed, label, trials), storage=exp.journal_storage(),
            study_name=studies[label], points_to_evaluate=first_trials(space, info, pair),
            max_epochs=space.max_epochs, experiment=exp.uri)

    labels = study_labels(space, budget)
    searcher = study("joint", None) if budget == "joint" else \
        PairedSearch({pair: study(label, pair) for label, pair in labels.items()}, s["metric"], s["mode"])
    return ConcurrencyLimiter(searcher, max_concurrent=s["max_concurrent"])


def make_trainable(space: Space, split: data.Split, gpus: float):
    s = space.resolved_settings()
    return tune.with_resources(named_trials(tune.with_parameters(train_trial, split=split)),
                               {"cpu": s["cpus_per_trial"], "gpu": gpus})


def named_trials(fn):
    """Ray's trainable class for `fn`, whose actors the Ray dashboard (and the `(...)` prefix of their
    log lines) names by pair and trial id: Ray takes an actor's name there from its __repr__, which for
    a function trainable is the function's name, `train_trial` for every trial."""
    base = wrap_function(fn)

    class Trial(base):
        def __repr__(self):
            config = getattr(self, "config", None) or {}
            return f"{config.get('arch', '?')}/{config.get('head', '?')} trial {self.trial_id}"

    Trial.__name__ = Trial.__qualname__ = "Trial"
    return Trial


def make_callbacks(space: Space, exp: Experiment, args: argparse.Namespace) -> list:
    """The search's Ray Tune callbacks: TensorBoard files, checkpoint removal, the console, trackers.
    (Tuner.restore keeps the pickled ones; `resume_callbacks` re-adds the console and trackers.)"""
    s = space.resolved_settings()
    return [TBXLoggerCallback(), EndedTrialCheckpoints(s["metric"], s["mode"], args.keep_best_weights),
            *resume_callbacks(space, exp, args)]


def resume_callbacks(space: Space, exp: Experiment, args: argparse.Namespace) -> list:
    """The callbacks made anew by every run, a resumed one too: the console, the trackers, and
    the manifest of the resume state (it holds no path of the folder it was made in)."""
    s = space.resolved_settings()
    level = console.QUIET if args.quiet else console.VERBOSE if args.verbose else console.NORMAL
    rung_epochs = console.rungs(s["grace_period"], s["reduction_factor"], space.max_epochs)
    return [console.Console(s["metric"], s["mode"], space.max_epochs, s["num_samples"], set(space.constants),
                            rung_epochs, level),
            StateManifest(), *(tracker(name, exp, space.max_epochs) for name in trackers(args))]


def trackers(args: argparse.Namespace) -> list[str]:
    """--callback's trackers, with MLflow (the live page) unless --no-live."""
    return list(dict.fromkeys([*args.callback, *(["mlflow"] if getattr(args, "live", False) else [])]))


def tracker(name: str, exp: Experiment, max_epochs: int):
    """Ray's own WandbLoggerCallback, or for MLflow tuning.live's (Ray's MLflowLoggerCallback with each
    trial's pair and status as tags), imported only when asked for."""
    if name == "mlflow":
        return live_runs(exp, max_epochs)
    module, cls = TRACKERS[name][1].rsplit(".", 1)
    callback = getattr(importlib.import_module(module), cls)
    return callback(project=os.environ.get("WANDB_PROJECT", "headsweep"), group=exp.name)


def restore_tuner(exp: Experiment, trainable, space: Space, args: argparse.Namespace):
    """Tuner.restore, with this run's console and trackers in place of the saved ones (Ray keeps
    the RunConfig it pickled at the start; -q/-v and --callback belong to this run)."""

    tuner = tune.Tuner.restore(exp.uri, trainable=trainable, resume_errored=True)
    # The searcher's restored state will name the journal it was saved with; this experiment's
    # own is the one to write (a copied or moved experiment must not append to the original's).
    tuner._local_tuner._tune_config.search_alg.searcher.journal = str(exp.journal)
    run_config = tuner._local_tuner._run_config  # no public way to change a restored run's callbacks
    run_config.callbacks = [c for c in run_config.callbacks or [] if type(c).__name__ == "TBXLoggerCallback"
                            or isinstance(c, EndedTrialCheckpoints)] + resume_callbacks(space, exp, args)
    return tuner


def make_tuner(space: Space, trainable, exp: Experiment, info: DataInfo, args: argparse.Namespace):
    """A new search. (A resumed one is Tuner.restore: building searchers here would enqueue the
    recipes into the existing studies again.)"""
    s, budget = space.resolved_settings(), exp.spec.get("budget", args.budget)
    asha = functools.partial(ASHAScheduler, time_attr="training_iteration", max_t=space.max_epochs,
                             grace_period=s["grace_period"], reduction_factor=s["reduction_factor"])
    scheduler = PerPairASHA(asha) if budget == "pairs" else asha()
    run_config = tune.RunConfig(
        name=exp.name, storage_path=exp.storage, callbacks=make_callbacks(space, exp, args),
        verbose=0,  # Ray's tables: the Console callback prints one line per event instead
        # All kept by Ray; EndedTrialCheckpoints removes what Ray's saved state no longer needs.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        failure_config=tune.FailureConfig(max_failures=s["max_failures"]))
    tune_config = tune.TuneConfig(search_alg=make_searcher(space, exp, info, args.seed, budget), scheduler=scheduler,
                                  num_samples=s["num_samples"], metric=s["metric"], mode=s["mode"],
                                  trial_dirname_creator=trial_dirname,
                                  reuse_actors=True)  # a new trial skips the worker's torch import
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def run(args: argparse.Namespace, space: Space, exp: Experiment, split: data.Split) -> int:
    """Start (or join) Ray, run the search to its end or a stop, and print the summary; the exit code."""
    try:
        calm_ray_auth()
        context = ray.init(address=args.address, include_dashboard=args.dashboard if not args.address else None,
                           dashboard_host=args.dashboard_host, ignore_reinit_error=True, log_to_driver=True,
                           logging_level=logging.INFO if args.verbose else logging.WARNING)
        available = ray.cluster_resources().get("GPU", 0.0)
        gpus = check_gpus(args.gpus_per_trial, available)
        check_cpus(space.resolved_settings()["cpus_per_trial"], ray.cluster_resources().get("CPU", 0.0), "the cluster")
        if args.gpus_per_trial is None and available:
            gpus = space.resolved_settings()["gpus_per_trial"]
        print_views(exp, getattr(context, "dashboard_url", None), local=not args.address,
                    live="mlflow" in trackers(args))
        trainable = make_trainable(space, split, gpus)
        # Ray saves its state every second, not every 10 s or more: a driver killed after a trial
        # ended but before the next save resumes that trial from an older checkpoint and trains its
        # last epochs again. (Every step would close that window, but a save of a 60-trial state
        # is ~1.3 MB of JSON, ~8 ms, and steps come ten a second. The user's value wins.)
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
        ended_before = exp.ended_trial_ids() if args.resume else set()
        if args.resume:  # what a killed driver left: the checkpoints of trials that had ended
            remove_ended_checkpoints(exp, args.keep_best_weights)
        if args.resume and tune.Tuner.can_restore(exp.uri):
            tuner = restore_tuner(exp, trainable, space, args)
        else:
            tuner = make_tuner(space, trainable, exp, DataInfo.of(split.dataset), args)
        # Ray's new output engine prints its configuration block even at verbose=0; the legacy one
        # at verbosity 0 prints nothing (the Console callback speaks instead).
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        quiet_ray_logs()
        # `ray job stop`, a batch scheduler's preemption and Kubernetes send SIGTERM: stop as on
        # Ctrl-C (Ray stops the trials and saves its state; exit 130), not wherever it is. A trial
        # that started and ended since Ray's last save would otherwise be lost to Ray and kept
        # by Optuna.
        sigterm = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        try:
            tuner.fit()
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        stopped = interrupted(exp, space.resolved_settings()["num_samples"])
        # Once the search has ended, an Optuna trial still RUNNING is an orphan of a killed driver;
        # after a Ctrl-C, the running trials' Optuna trials go on when it resumes.
        orphans = 0 if stopped else exp.fail_orphans()
        if orphans:
            print(f"{orphans} Optuna trial(s) left RUNNING by a killed driver marked FAIL (not results)")
        exp.sync_journal()
        remove_ended_checkpoints(exp, args.keep_best_weights)  # the summary's disk line says they are gone
        lost = ended_before - exp.ended_trial_ids() if ended_before else set()
        if lost:
            print(f"error: the resumed search lost {len(lost)} trial(s) that had ended ({', '.join(sorted(lost))}); "
                  f"the state files before it are still in {exp.uri} (nothing was deleted)", file=sys.stderr)
            return NOTHING_USABLE
        code = summarize(exp, stopped)
        if stopped:
            print(f"interrupted; continue with: {resume_command(exp)}", file=sys.stderr)
            return INTERRUPTED
        return code
    except KeyboardInterrupt:  # a second Ctrl-C: Ray's graceful stop was cut short
        print(f"\ninterrupted; continue with: {resume_command(exp)}", file=sys.stderr)
        raise
    finally:
        ray.shutdown()


def remove_ended_checkpoints(exp: Experiment, keep_best: bool) -> None:
    """Remove the checkpoint folders of every trial Ray's saved state records as ended (not errored: a resume
    retries those from their checkpoint), keeping the best trial's last one per pair with --keep-best-weights,
    and those of trial folders the state does not list. The callback does this as trials end; this sweep
    bounds the disk after a driver was killed."""
    if exp.is_uri:
        return
    exp.refresh()  # what the folder holds now, not a list read earlier
    trials = exp.trials()
    exp.refresh()  # the search goes on writing it
    if trials.empty:
        return
    ended = trials[trials["status"].isin(FINISHED + (DIVERGED,)) & trials["trial_id"].isin(exp.ended_trial_ids())]
    kept = set(exp.best(trials[trials["status"].isin(FINISHED)])["trial_id"]) if keep_best else set()
    fs = pyarrow.fs.LocalFileSystem()
    for row in ended.itertuples():
        remove_checkpoints(fs, row.path, keep_last=row.trial_id in kept)
    for folder in unlisted_trial_folders(exp, trials):
        remove_checkpoints(fs, str(folder))


def unlisted_trial_folders(exp: Experiment, trials) -> list[Path]:
    """Trial folders Ray's saved state does not list: started after its last save by a driver then killed.
    Ray never resumes them (a new trial took their config over as the same Optuna trial), so their
    checkpoints are dead weight; their metrics stay."""
    listed = {Path(p).name for p in trials["path"]}
    return sorted(p.parent for p in Path(exp.uri).glob(f"*/{PARAMS_FILE}") if p.parent.name not in listed)


class _RayAuthNotice(logging.Filter):
    """Ray 2.60 turns token authentication on for a new local cluster and says so in 245 characters that
    end by telling users how to turn it off; this keeps it on and says so in one line, with the token's place."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Token authentication is enabled" not in record.getMessage():
            return True
        where = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
        print(f"Ray: token authentication on (the dashboard and `ray` commands ask for the token in {where})",
              file=sys.stderr, flush=True)
        return False


def calm_ray_auth() -> None:
    """Before ray.init: Ray's token-authentication warning replaced by our one line (_RayAuthNotice)."""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _RayAuthNotice) for f in log.filters):
        log.addFilter(_RayAuthNotice())


def quiet_ray_logs() -> None:
    """Ray's driver-side warnings that repeat what the console says, or mislead a user of this CLI."""
    # "Resume experiment with: Tuner.restore(...)": this tool prints its own command.
    logging.getLogger("ray.tune.tune").addFilter(_Said("Tuner.restore"))
    # "Failed to fetch metrics" for trials stopped before their first epoch: the summary counts them.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.utils.util").addFilter(_SlowUnder(SLOW_WARNING_S))
    # "Trial task failed for trial ..." with Ray's traceback, at every failure and retry; and "Trials did not
    # complete": the console says each in one line (failed / retry) and the trial's error.txt keeps the trace.
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(_Said("Trial task failed for trial"))
    logging.getLogger("ray.tune.tune").addFilter(_Said("Trials did not complete"))


class _Said(logging.Filter):
    """Drops Ray's records that hold `text`: this tool says the same in its own words."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


SLOW_WARNING_S = 5.0


class _SlowUnder(logging.Filter):
    """Drops Ray's "operation took 0.6 s, which may be a performance bottleneck" below `seconds`: the live
    page's MLflow writes take ~0.6 s a result on 2 busy cores, on the driver, not on the trials' path, and a
    warning per result drowned the console (Ray's threshold, TUNE_WARN_THRESHOLD_S, is read at import)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def filter(self, record: logging.LogRecord) -> bool:
        took = re.search(r"took (\d+(?:\.\d+)?) s", record.getMessage())
        return took is None or float(took.group(1)) >= self.seconds


def interrupted(exp: Experiment, num_samples: int) -> bool:
    """Whether the search stopped before its end (Ctrl-C: Ray saves its state and returns)."""
    trials = exp.trials()
    return len(trials) < num_samples or bool(len(trials) and (trials["status"] == RUNNING).any())
