"""`python -m tuning.search --space NAME`: the hyperparameter search over (backbone, head).

    python -m tuning.search --space smoke                       # ~2 min on 2 CPUs, generated data
    python -m tuning.search --space vit_heads --data-dir /data --gpus-per-trial 0.25
    python -m tuning.search --space vit_heads --name my-run --resume   # after a crash or Ctrl-C
    python -m tuning.search --space resnet_heads --address auto --storage /shared/exp   # a Ray cluster

Optuna (TPE, seeded, journal in the experiment folder) proposes configs through a
ConcurrencyLimiter; ASHA stops weak trials, which reach Optuna as PRUNED; every trial
gets the dataset from the object store (loaded once by the driver) and checkpoints each
epoch. Writes spec.json; exits 1 when every trial failed, 2 on bad input.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import search_spaces
from common.cli import guard
from common.status import ERROR, FINISHED
from search_spaces._registry import Space, define_by_run, sample_config
from tuning import data
from tuning.config import TrainConfig, parse_assignment
from tuning.experiment import Experiment, config_columns


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, help=f"one of: {', '.join(search_spaces.list_spaces())}")
    p.add_argument("--num-samples", type=int, help="trials in all (default: the space's)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's)")
    p.add_argument("--gpus-per-trial", type=float, help="fractional GPUs per trial, e.g. 0.25 = 4 per GPU "
                   "(default: the space's where GPUs exist, else 0)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: the space's)")
    p.add_argument("--storage", default="./experiments", help="experiment root: a path or a URI such as s3://bucket/x")
    p.add_argument("--name", help="experiment name (default: SPACE-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name after a crash or stop")
    p.add_argument("--address", help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT")
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                   help="start the Ray dashboard (local Ray only)")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="address the dashboard binds to")
    p.add_argument("--seed", type=int, default=0, help="seeds the TPE sampler")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space constant or search setting, e.g. epochs=10 grace_period=3 (repeatable)")
    p.add_argument("--data-dir", default="data", help="folder with the official dataset files")
    p.add_argument("--dry-run", type=int, nargs="?", const=5, metavar="N",
                   help="print the resolved spec and the first N sampled configs (default 5); train nothing")
    return p


# ----------------------------------------------------------------------------- the spec
def resolve_space(args: argparse.Namespace) -> Space:
    """The named space with --set and the dedicated flags applied, checked."""
    overrides = dict(parse_assignment(text) for text in args.overrides)
    for flag in ("num_samples", "max_concurrent", "cpus_per_trial", "gpus_per_trial"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag)
    space = search_spaces.get_space(args.space).with_overrides(overrides)
    check_settings(space.resolved_settings())
    return space


def check_settings(s: dict) -> None:
    for key in ("num_samples", "max_concurrent", "grace_period", "reduction_factor"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"{key}={s[key]!r} must be an integer >= 1")
    if s["reduction_factor"] < 2:
        raise ValueError(f"reduction_factor={s['reduction_factor']} must be >= 2")
    if s["cpus_per_trial"] <= 0:
        raise ValueError(f"cpus_per_trial={s['cpus_per_trial']} must be > 0")
    if s["gpus_per_trial"] < 0:
        raise ValueError(f"gpus_per_trial={s['gpus_per_trial']} must be > 0 (or omitted for CPU trials)")
    if s["mode"] not in ("max", "min"):
        raise ValueError(f"mode={s['mode']!r} must be 'max' or 'min'")


def check_gpus(requested: float | None, available: float) -> float:
    """GPUs per trial: the explicit request must be in (0, available]; otherwise 0 without GPUs."""
    if requested is None:
        return 0.0
    if requested <= 0:
        raise ValueError(f"--gpus-per-trial={requested} must be > 0")
    if requested > available:
        raise ValueError(f"--gpus-per-trial={requested} is more than this machine has ({available:g} GPUs)")
    return requested


def preview_configs(space: Space, n: int, seed: int) -> list[dict]:
    """The first n configs the seeded sampler proposes, each validated as a trial would be."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    configs = [sample_config(space, study.ask()) for _ in range(n)]
    for config in configs:
        TrainConfig.from_dict(config)
    return configs


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def make_spec(args: argparse.Namespace, space: Space) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "torchvision", "timm", "ray", "optuna", "headsweep"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"space": space.name, "description": space.description, "overrides": args.overrides,
            "constants": space.constants, "settings": space.resolved_settings(), "max_epochs": space.max_epochs,
            "seed": args.seed,
            "data_dir": str(args.data_dir), "argv": sys.argv[1:], "versions": {"python": platform.python_version(),
                                                                               **versions},
            "git_sha": _git_sha(), "host": platform.node(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------- Ray parts
def load_split(space: Space, exp: Experiment, data_dir: str):
    c = space.constants
    defaults = TrainConfig()
    return data.split_train_val(exp.load_dataset(data_dir), c.get("val_fraction", defaults.val_fraction),
                                c.get("seed", defaults.seed), c.get("train_limit"))


def make_searcher(space: Space, exp: Experiment, seed: int):
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from tuning.optuna_pruned import PruningAwareOptunaSearch

    s = space.resolved_settings()
    searcher = PruningAwareOptunaSearch(
        space=functools.partial(define_by_run, space), metric=s["metric"], mode=s["mode"],
        sampler=optuna.samplers.TPESampler(seed=seed), storage=exp.journal_storage(),
        study_name=exp.study_names()[0], max_epochs=space.max_epochs)
    return ConcurrencyLimiter(searcher, max_concurrent=s["max_concurrent"])


def make_tuner(space: Space, split, exp: Experiment, gpus: float, seed: int):
    from ray import tune
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from tuning.trainable import train_trial

    s = space.resolved_settings()
    trainable = tune.with_resources(tune.with_parameters(train_trial, split=split),
                                    {"cpu": s["cpus_per_trial"], "gpu": gpus})
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=space.max_epochs,
                              grace_period=s["grace_period"], reduction_factor=s["reduction_factor"])
    run_config = tune.RunConfig(
        name=exp.name, storage_path=exp.storage, callbacks=[TBXLoggerCallback()],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=s["max_failures"]))
    tune_config = tune.TuneConfig(search_alg=make_searcher(space, exp, seed), scheduler=scheduler,
                                  num_samples=s["num_samples"], metric=s["metric"], mode=s["mode"],
                                  reuse_actors=True)  # a new trial skips the worker's torch import
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), trainable


def run_search(args: argparse.Namespace) -> int:
    space = resolve_space(args)
    exp = Experiment.at(args.storage, args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.dry_run is not None:
        print(json.dumps({**exp.new_spec(make_spec(args, space)), "experiment": exp.uri}, indent=2, default=str))
        for i, config in enumerate(preview_configs(space, args.dry_run, args.seed)):
            print(f"config {i}: {json.dumps(config, default=str)}")
        return 0
    preview_configs(space, 1, args.seed)  # bad --set values fail here, before Ray starts
    if args.resume and not exp.exists():
        raise ValueError(f"--resume: no experiment at {exp.uri}; give the --name of an existing one")
    if not args.resume and exp.exists():
        raise ValueError(f"experiment {exp.uri} exists: pass --resume to continue it or choose another --name")
    if not args.address:
        check_gpus(args.gpus_per_trial, _local_gpus())  # fail fast, before Ray starts
    exp.local.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        exp.write_spec(exp.new_spec(make_spec(args, space)))
    return _run_with_ray(args, space, exp)


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _run_with_ray(args, space: Space, exp: Experiment) -> int:
    import ray
    from ray import tune

    context = ray.init(address=args.address, include_dashboard=args.dashboard if not args.address else None,
                       dashboard_host=args.dashboard_host, ignore_reinit_error=True, log_to_driver=True)
    try:
        available = ray.cluster_resources().get("GPU", 0.0)
        gpus = check_gpus(args.gpus_per_trial, available)
        if args.gpus_per_trial is None and available:
            gpus = space.resolved_settings()["gpus_per_trial"]
        if getattr(context, "dashboard_url", None):
            print(f"Ray dashboard: http://{context.dashboard_url}")
        print(f"experiment: {exp.uri}\noptuna-dashboard {exp.journal}\n"
              f"tensorboard --logdir {exp.uri}", flush=True)
        split = load_split(space, exp, args.data_dir)
        tuner, trainable = make_tuner(space, split, exp, gpus, args.seed)
        if args.resume and tune.Tuner.can_restore(exp.uri):
            tuner = tune.Tuner.restore(exp.uri, trainable=trainable, resume_errored=True)
        tuner.fit()
        exp.sync_journal()
        return summarize(exp)
    finally:
        ray.shutdown()


def summarize(exp: Experiment) -> int:
    """The end-of-run summary: trial counts and the best trial per (backbone, head), diverged and
    failed trials left out (their scores mislead); exit 1 when every trial failed."""
    import pandas as pd

    trials = exp.trials()
    failed = trials[trials["status"] == ERROR] if len(trials) else trials
    print(f"\n{len(trials)} trials, {len(failed)} failed")
    best = exp.best(trials) if len(trials) and trials["status"].isin(FINISHED).any() else trials[:0]
    if len(best):
        searched = [c for c in config_columns(trials) if c not in ("arch", "head")
                    and trials[c].astype(str).nunique() > 1]
        best = best[["arch", "head", f"best_{exp.settings.get('metric', 'val_acc')}", "epochs_run", "trial_id"]
                    + searched]
    with pd.option_context("display.max_columns", 30, "display.width", 200):
        print("best trial per (backbone, head):")
        print(best.to_string(index=False) if len(best) else "(none)")
    if len(trials) and len(failed) == len(trials):
        print("every trial failed; first error:", failed["error"].dropna().head(1).tolist() or "?", file=sys.stderr)
        return 1
    return 0


@guard
def main(argv: list[str] | None = None) -> int:
    return run_search(build_parser().parse_args(argv))


if __name__ == "__main__":
    # A checkpoint every epoch of short smoke trials trips this advisory warning constantly.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sys.exit(main())
