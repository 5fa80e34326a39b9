"""`python -m tuning.search --space NAME`: the hyperparameter search over (backbone, head).

    python -m tuning.search --space smoke                       # ~1 min on 2 CPUs, generated data
    python -m tuning.search --space vit_heads --data-dir /data --gpus-per-trial 0.25
    python -m tuning.search --name my-run --resume              # after a crash or Ctrl-C (spec.json says the rest)
    python -m tuning.search --space resnet_heads --address auto --storage /shared/exp   # a Ray cluster

Per-pair budgets (the default, `--budget pairs`): every (backbone, head) pair gets an equal
share of the trials (+-1), its own Optuna study (TPE, seeded; all in the experiment's one
journal) whose first trial is the family's known-good recipe, and its own ASHA; all pairs
run in one Ray Tune experiment. `--budget joint`: one study and one ASHA over all pairs, for
the best model overall rather than a comparison. ASHA-stopped trials reach Optuna as PRUNED;
every trial gets the dataset from the object store (loaded once by the driver) and
checkpoints each epoch. Writes spec.json; exit codes: 0 done, 1 no trial finished (all failed or
diverged), 2 bad input, 130 interrupted (it prints the --resume command).

The console shows one line per trial event and a periodic status (tuning/console.py); the
three live views (Ray dashboard, optuna-dashboard, TensorBoard) are printed once at the start.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import os
import platform
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

import search_spaces
from common.cli import (INTERRUPTED, NOTHING_USABLE, WIDTH, ArgumentParser, check_cpus, check_gpus, clip, guard,
                        short)
from common.status import DIVERGED, ERROR, FINISHED, RUNNING
from search_spaces._registry import DataInfo, Pair, Space, define_by_run, sample_config
from search_spaces.spaces import baseline
from tuning import data, manifest
from tuning.config import TrainConfig, parse_assignment
from tuning.experiment import METRICS, Experiment, config_columns


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tuning.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", help=f"one of: {', '.join(search_spaces.list_spaces())} (with --resume: "
                   "spec.json's)")
    p.add_argument("--num-samples", type=int, help="trials in all, not per pair (default: the space's); with "
                   "--budget pairs each (arch, head) pair gets an equal share (+-1)")
    p.add_argument("--budget", choices=("pairs", "joint"), default="pairs",
                   help="pairs: equal trials, one Optuna study and one ASHA per (arch, head) pair, for a fair "
                        "comparison; joint: one study and one ASHA over all pairs, for the best model overall")
    p.add_argument("--dataset", help="cifar100, cifar10, fashion_mnist or imagefolder:PATH (default: the "
                   "space's); the number of classes and the hierarchy come from the data")
    p.add_argument("--image-size", type=int, help="ImageFolder images are resized to this many pixels a side "
                   "(default 32)")
    p.add_argument("--hierarchy-file", help="JSON {class name: group name}: the hierarchical head's tree")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's)")
    p.add_argument("--gpus-per-trial", type=float, help="fractional GPUs per trial, e.g. 0.25 = 4 per GPU "
                   "(default: the space's where GPUs exist, else 0)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: the space's)")
    p.add_argument("--storage", default="./experiments", help="experiment root: a path or a URI such as s3://bucket/x")
    p.add_argument("--name", help="experiment name (default: SPACE-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name (under --storage) after a "
                   "crash or stop; the space, overrides and seed come from its spec.json")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                   help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS, which "
                        "`ray job submit` sets; else a local Ray for this search)")
    p.add_argument("--trust-state", action="store_true",
                   help="with --resume: resume although the experiment's state is not in a manifest this machine "
                        "signed (an experiment from an older headsweep that you wrote yourself): Ray unpickles it")
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                   help="start the Ray dashboard (local Ray only)")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="address the dashboard binds to")
    p.add_argument("--seed", type=int, default=0, help="seeds the TPE sampler")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space constant or search setting, e.g. epochs=10 grace_period=3; a searched "
                        "parameter so set is no longer searched; arch=NAME / head=[a,b] restrict the pairs "
                        "(repeatable)")
    p.add_argument("--keep-best-weights", action="store_true",
                   help="keep the final checkpoint of the best trial of each (arch, head) pair; by default a "
                        "trial's checkpoints are removed when it ends (its metrics stay)")
    p.add_argument("--data-dir", default="data", help="folder with the official dataset files")
    p.add_argument("--callback", action="append", default=[], choices=sorted(TRACKERS),
                   help="also log every trial to Weights & Biases or MLflow (Ray's own logger callbacks; the "
                        "package must be installed; MLflow: MLFLOW_TRACKING_URI, else <experiment>/mlflow.db)")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")
    talk.add_argument("-v", "--verbose", action="store_true", help="also print every epoch's result and Ray's logs")
    p.add_argument("--dry-run", type=int, nargs="?", const=5, metavar="N",
                   help="print the resolved spec, the pairs and each pair's first N configs (default 5); train "
                        "nothing")
    return p


# Flags that say how this run of the search goes, not what it searches: a resume may change them.
SESSION_FLAGS = ("storage", "name", "resume", "trust_state", "address", "dashboard", "dashboard_host", "callback", "quiet",
                 "verbose", "dry_run", "argv")
# --callback NAME -> (package it needs, Ray's logger callback class)
TRACKERS = {"wandb": ("wandb", "ray.air.integrations.wandb.WandbLoggerCallback"),
            "mlflow": ("mlflow", "ray.air.integrations.mlflow.MLflowLoggerCallback")}


# ----------------------------------------------------------------------------- the spec
def resumed_args(args: argparse.Namespace) -> argparse.Namespace:
    """--resume: the search's own flags from spec.json's argv, this run's session flags on top.
    A search flag given now that differs from the saved one is refused (Ray resumes the saved
    search whatever it says; silently ignoring it would mislead)."""
    if not args.name:
        raise ValueError("--resume needs --name: the experiment to continue (a folder under --storage)")
    exp = Experiment.at(os.path.expanduser(args.storage), args.name)
    if not exp.exists():
        raise ValueError(f"--resume: no experiment at {exp.uri}; give the --name (and --storage) of an existing one")
    if not isinstance(exp.spec.get("argv"), list):
        raise ValueError(f"--resume: {exp.uri}/spec.json is missing or records no argv; it was not made by "
                         "tuning.search")
    parser = build_parser()
    saved = parser.parse_args(exp.spec["argv"])
    for key, value in vars(args).items():
        if key in SESSION_FLAGS:
            setattr(saved, key, value)
        elif value != parser.get_default(key) and value != getattr(saved, key, None):
            raise ValueError(f"--resume continues the search spec.json defines: {key}={value!r} differs from its "
                             f"{getattr(saved, key, None)!r}; drop it, or start a new --name")
    return saved


def resume_command(exp: Experiment) -> str:
    return shlex.join([sys.executable.rsplit("/", 1)[-1], "-m", "tuning.search", "--name", exp.name,
                       "--storage", exp.storage, "--resume"])


def resolve_space(args: argparse.Namespace) -> Space:
    """The named space with --set and the dedicated flags applied, checked."""
    overrides = dict(parse_assignment(text) for text in args.overrides)
    for flag in ("num_samples", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "dataset", "image_size",
                 "hierarchy_file"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag)
    space = search_spaces.get_space(args.space).with_overrides(overrides)
    check_settings(space.resolved_settings(), space.max_epochs)
    if args.budget == "pairs" and space.resolved_settings()["num_samples"] < len(space.pairs()):
        raise ValueError(f"num_samples={space.resolved_settings()['num_samples']} leaves some of the "
                         f"{len(space.pairs())} (arch, head) pairs without a trial: give at least "
                         f"{len(space.pairs())}, restrict the pairs (--set head=...) or use --budget joint")
    return space


def check_settings(s: dict, max_epochs: int) -> None:
    for key in ("num_samples", "max_concurrent", "grace_period", "reduction_factor"):
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 1:
            raise ValueError(f"{key}={s[key]!r} must be an integer >= 1")
    if 1 <= max_epochs < s["grace_period"]:  # (epochs < 1 is the config's own error)
        raise ValueError(f"grace_period={s['grace_period']} is more than the {max_epochs} epochs a trial runs: ASHA "
                         f"could never stop a trial; set grace_period <= epochs")
    if s["metric"] not in METRICS:
        raise ValueError(f"metric={s['metric']!r} is not one of the reported metrics {list(METRICS)}")
    if s["reduction_factor"] < 2:
        raise ValueError(f"reduction_factor={s['reduction_factor']} must be >= 2")
    if s["cpus_per_trial"] <= 0:
        raise ValueError(f"cpus_per_trial={s['cpus_per_trial']} must be > 0")
    if s["gpus_per_trial"] < 0:
        raise ValueError(f"gpus_per_trial={s['gpus_per_trial']} must be > 0 (or omitted for CPU trials)")
    if s["mode"] not in ("max", "min"):
        raise ValueError(f"mode={s['mode']!r} must be 'max' or 'min'")


def check_storage(storage: str) -> None:
    if "://" not in storage and Path(storage).expanduser().exists() and not Path(storage).expanduser().is_dir():
        raise ValueError(f"--storage {storage} is a file; it must be a folder (made if missing) or a URI")


def study_labels(space: Space, budget: str) -> dict[str, Pair | None]:
    """Label -> the pair its study searches (None: the joint study over all pairs)."""
    return {f"{a}/{h}": (a, h) for a, h in space.pairs()} if budget == "pairs" else {"joint": None}


def first_trials(space: Space, info: DataInfo, pair: Pair | None) -> list[dict]:
    """The enqueued first trial(s) of a study: the pair's recipe; for the joint study, every pair's."""
    if pair is not None:
        return [baseline(space, info, pair)]
    several = {"arch": len(space.archs) > 1, "head": len(space.pairs()) > len(space.archs)}
    return [{**{k: v for k, v in zip(("arch", "head"), p) if several[k]}, **baseline(space, info, p)}
            for p in space.pairs()]


def preview_configs(space: Space, info: DataInfo, pair: Pair | None, n: int, seed: int) -> list[dict]:
    """The first n configs a study proposes (its baseline first), each validated as a trial would be."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for params in first_trials(space, info, pair):
        study.enqueue_trial(params)
    configs = [sample_config(space, info, pair, study.ask()) for _ in range(n)]
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


def dataset_spec(ds: data.Dataset, data_dir: str | None) -> dict:
    """What the report needs to know of the data: its shape, its class names, whether its split is official."""
    return {"name": ds.name, "num_classes": ds.num_classes, "in_chans": ds.in_chans, "img_size": ds.img_size,
            "hierarchy": ds.class_to_group is not None, "classes": ds.classes, "groups": ds.group_names,
            "official_split": data.official_split(ds.name, data_dir) if data_dir else None,
            "class_counts_tie": bool(len(set(np.bincount(ds.y_train, minlength=ds.num_classes).tolist())) == 1)}


def make_spec(args: argparse.Namespace, space: Space, ds: data.Dataset) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "torchvision", "timm", "ray", "optuna", "headsweep"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"space": space.name, "description": space.description, "overrides": args.overrides,
            "constants": space.constants, "settings": space.resolved_settings(), "max_epochs": space.max_epochs,
            "budget": args.budget, "pairs": [list(p) for p in space.pairs()], "seed": args.seed,
            "dataset": dataset_spec(ds, None if space.resolved_settings()["fake_data"] else args.data_dir),
            "data_dir": str(args.data_dir), "argv": args.argv, "versions": {"python": platform.python_version(),
                                                                               **versions},
            "git_sha": _git_sha(), "host": platform.node(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------- Ray parts
def load_dataset(space: Space, data_dir: str) -> data.Dataset:
    return data.load_for(space.constants, data_dir, space.resolved_settings()["fake_data"])


def split_of(space: Space, ds: data.Dataset) -> data.Split:
    c, defaults = space.constants, TrainConfig()
    return data.split_train_val(ds, c.get("val_fraction", defaults.val_fraction), c.get("seed", defaults.seed),
                                c.get("train_limit"))


def make_searcher(space: Space, exp: Experiment, info: DataInfo, seed: int, budget: str):
    """One study per pair (PairedSearch) or one joint study, each seeded and starting from its recipe."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from tuning.optuna_pruned import PruningAwareOptunaSearch
    from tuning.pairs import PairedSearch

    s, studies = space.resolved_settings(), exp.studies()

    def study(label: str, pair: Pair | None):
        return PruningAwareOptunaSearch(
            space=functools.partial(define_by_run, space, info, pair), metric=s["metric"], mode=s["mode"],
            sampler=optuna.samplers.TPESampler(seed=seed), storage=exp.journal_storage(),
            study_name=studies[label], points_to_evaluate=first_trials(space, info, pair),
            max_epochs=space.max_epochs, experiment=exp.uri)

    labels = study_labels(space, budget)
    searcher = study("joint", None) if budget == "joint" else \
        PairedSearch({pair: study(label, pair) for label, pair in labels.items()}, s["metric"], s["mode"])
    return ConcurrencyLimiter(searcher, max_concurrent=s["max_concurrent"])


def make_trainable(space: Space, split: data.Split, gpus: float):
    from ray import tune

    from tuning.trainable import train_trial

    s = space.resolved_settings()
    return tune.with_resources(tune.with_parameters(train_trial, split=split),
                               {"cpu": s["cpus_per_trial"], "gpu": gpus})


def make_callbacks(space: Space, exp: Experiment, args: argparse.Namespace) -> list:
    """The search's Ray Tune callbacks: TensorBoard files, checkpoint removal, the console, trackers.
    (Tuner.restore keeps the pickled ones; `resume_callbacks` re-adds the console and trackers.)"""
    from ray.tune.logger import TBXLoggerCallback

    from tuning.callbacks import EndedTrialCheckpoints

    s = space.resolved_settings()
    return [TBXLoggerCallback(), EndedTrialCheckpoints(s["metric"], s["mode"], args.keep_best_weights),
            *resume_callbacks(space, exp, args)]


def resume_callbacks(space: Space, exp: Experiment, args: argparse.Namespace) -> list:
    """The callbacks made anew by every run, a resumed one too: the console, the trackers, and
    the manifest of the resume state (it holds no path of the folder it was made in)."""
    from tuning import console
    from tuning.callbacks import StateManifest

    s = space.resolved_settings()
    level = console.QUIET if args.quiet else console.VERBOSE if args.verbose else console.NORMAL
    rung_epochs = console.rungs(s["grace_period"], s["reduction_factor"], space.max_epochs)
    return [console.Console(s["metric"], s["mode"], space.max_epochs, s["num_samples"], set(space.constants),
                            rung_epochs, level),
            StateManifest(), *(tracker(name, exp) for name in args.callback)]


def check_trackers(names: list[str]) -> None:
    for name in names:
        if importlib.util.find_spec(TRACKERS[name][0]) is None:
            raise ValueError(f"--callback {name} needs the {TRACKERS[name][0]} package: pip install {TRACKERS[name][0]}")


def mlflow_uri(exp: Experiment) -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in the experiment folder (MLflow 3 refuses a bare
    ./mlruns folder store unless MLFLOW_ALLOW_FILE_STORE=true)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{exp.local / 'mlflow.db'}"


def check_mlflow(exp: Experiment) -> None:
    """Open the tracking store before Ray starts: a bad URI is one line, not a traceback mid-fit."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its "Creating initial MLflow database tables"
    try:
        mlflow.MlflowClient(tracking_uri=mlflow_uri(exp)).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds for a bad store
        raise ValueError(f"--callback mlflow: tracking URI {mlflow_uri(exp)} does not open: "
                         f"{str(exc).splitlines()[0][:200]}") from None


def tracker(name: str, exp: Experiment):
    """Ray's own WandbLoggerCallback or MLflowLoggerCallback, imported only when asked for."""
    import importlib

    module, cls = TRACKERS[name][1].rsplit(".", 1)
    callback = getattr(importlib.import_module(module), cls)
    if name == "mlflow":
        return callback(tracking_uri=mlflow_uri(exp), experiment_name=exp.name, save_artifact=False)
    return callback(project=os.environ.get("WANDB_PROJECT", "headsweep"), group=exp.name)


def restore_tuner(exp: Experiment, trainable, space: Space, args: argparse.Namespace):
    """Tuner.restore, with this run's console and trackers in place of the saved ones (Ray keeps
    the RunConfig it pickled at the start; -q/-v and --callback belong to this run)."""
    from ray import tune

    from tuning.callbacks import EndedTrialCheckpoints

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
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tuning.pairs import PerPairASHA, trial_dirname

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


def run_search(args: argparse.Namespace) -> int:
    if args.dry_run is not None and args.dry_run < 1:
        raise ValueError(f"--dry-run={args.dry_run} must be >= 1 (configs to preview per study)")
    check_storage(args.storage)
    check_trackers(args.callback)
    if args.resume:
        args = resumed_args(args)
    elif args.space is None:
        raise ValueError(f"--space is required (one of: {', '.join(search_spaces.list_spaces())}); or continue "
                         "an experiment with --name NAME --resume")
    space = resolve_space(args)
    exp = Experiment.at(os.path.expanduser(args.storage), args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    ds = load_dataset(space, args.data_dir)  # the classes, hierarchy and image size come from the data
    info = DataInfo.of(ds)
    labels = study_labels(space, args.budget)
    spec = exp.new_spec(make_spec(args, space, ds), labels)
    if args.dry_run is not None:
        print(json.dumps({**spec, "experiment": exp.uri}, indent=2, default=str))
        for label, pair in labels.items():
            print(f"study {spec['studies'][label]} ({label}; its first config is the recipe):")
            for i, config in enumerate(preview_configs(space, info, pair, args.dry_run, args.seed)):
                print(f"  config {i}: {json.dumps(config, default=str)}")
        return 0
    for pair in labels.values():  # bad --set values fail here, before anything is written or Ray starts
        preview_configs(space, info, pair, 2, args.seed)
    if args.resume and not exp.exists():
        raise ValueError(f"--resume: no experiment at {exp.uri}; give the --name of an existing one")
    if not args.resume and exp.exists():
        raise ValueError(f"experiment {exp.uri} exists: pass --resume to continue it or choose another --name")
    if args.trust_state and not args.resume:
        raise ValueError("--trust-state applies to --resume only")
    if args.resume and not args.trust_state and exp.has_ray_state():
        for name in exp.verify_state():  # before anything in the folder is unpickled (README, "Trust")
            print(f"headsweep: {name} was cut short when the search stopped; its previous save, kept in "
                  f"{manifest.BACKUP_DIR}/, is back in place")
    if not args.address:  # fail fast, before Ray starts
        check_gpus(args.gpus_per_trial, _local_gpus())
        check_cpus(space.resolved_settings()["cpus_per_trial"], os.cpu_count() or 1, "this machine")
    if "mlflow" in args.callback and os.environ.get("MLFLOW_TRACKING_URI"):
        check_mlflow(exp)  # (the default, a SQLite file in the experiment, opens wherever the folder can be made)
    exp.local.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        exp.write_spec(spec)
    return _run_with_ray(args, space, exp, split_of(space, ds))


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _run_with_ray(args, space: Space, exp: Experiment, split: data.Split) -> int:
    import ray
    from ray import tune

    try:
        context = ray.init(address=args.address, include_dashboard=args.dashboard if not args.address else None,
                           dashboard_host=args.dashboard_host, ignore_reinit_error=True, log_to_driver=True,
                           logging_level=logging.INFO if args.verbose else logging.WARNING)
        available = ray.cluster_resources().get("GPU", 0.0)
        gpus = check_gpus(args.gpus_per_trial, available)
        check_cpus(space.resolved_settings()["cpus_per_trial"], ray.cluster_resources().get("CPU", 0.0), "the cluster")
        if args.gpus_per_trial is None and available:
            gpus = space.resolved_settings()["gpus_per_trial"]
        print_views(exp, getattr(context, "dashboard_url", None), local=not args.address)
        trainable = make_trainable(space, split, gpus)
        # Ray saves its state every second, not every 10 s or more: a driver killed after a trial
        # ended but before the next save resumes that trial from an older checkpoint and trains its
        # last epochs again. (Every step would close that window, but a save of a 60-trial state
        # is ~1.3 MB of JSON, ~8 ms, and steps come ten a second. The user's value wins.)
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
        ended_before = exp.ended_trial_ids() if args.resume else set()
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


class _RayRestoreHint(logging.Filter):
    """Drops Ray's "Resume experiment with: Tuner.restore(...)": this tool prints its own command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def quiet_ray_logs() -> None:
    """Ray's driver-side warnings that repeat what the console says, or mislead a user of this CLI."""
    logging.getLogger("ray.tune.tune").addFilter(_RayRestoreHint())
    # "Failed to fetch metrics" for trials stopped before their first epoch: the summary counts them.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def interrupted(exp: Experiment, num_samples: int) -> bool:
    """Whether the search stopped before its end (Ctrl-C: Ray saves its state and returns)."""
    trials = exp.trials()
    return len(trials) < num_samples or bool(len(trials) and (trials["status"] == RUNNING).any())


def print_views(exp: Experiment, dashboard_url: str | None, local: bool) -> None:
    """The three live views, once, each a command or URL that works as printed."""
    token = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    lines = [f"experiment      {exp.uri}"]
    if dashboard_url:
        notes = (["token: `ray get-auth-token`"] if token else []) + (["closes when the search ends"] if local else [])
        lines.append(f"Ray dashboard   http://{dashboard_url}" + (f"  ({'; '.join(notes)})" if notes else ""))
    lines.append(f"Optuna          optuna-dashboard {shlex.quote(str(exp.journal))}")
    lines.append(f"TensorBoard     tensorboard --logdir {shlex.quote(exp.uri)}")
    print("\n".join(lines), flush=True)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def summarize(exp: Experiment, stopped: bool = False) -> int:
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
        print("no trial finished (every one failed or diverged); first error:",
              failed["error"].dropna().head(1).tolist() or "-", file=sys.stderr)
        return NOTHING_USABLE
    return 0


def _present(value) -> bool:
    return not (isinstance(value, float) and np.isnan(value)) and value is not None


@guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # spec.json keeps it: --resume re-reads it
    return run_search(args)


if __name__ == "__main__":
    # A checkpoint every epoch of short smoke trials trips this advisory warning constantly.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sys.exit(main())
