"""`python -m tuning.search --space NAME`: the hyperparameter search over (backbone, head).

    python -m tuning.search --space smoke                       # ~1 min on 2 CPUs, generated data
    python -m tuning.search --space vit_heads --data-dir /data --gpus-per-trial 0.25
    python -m tuning.search --space vit_heads --name my-run --resume   # after a crash or Ctrl-C
    python -m tuning.search --space resnet_heads --address auto --storage /shared/exp   # a Ray cluster

Per-pair budgets (the default, `--budget pairs`): every (backbone, head) pair gets an equal
share of the trials (+-1), its own Optuna study (TPE, seeded; all in the experiment's one
journal) whose first trial is the family's known-good recipe, and its own ASHA; all pairs
run in one Ray Tune experiment. `--budget joint`: one study and one ASHA over all pairs, for
the best model overall rather than a comparison. ASHA-stopped trials reach Optuna as PRUNED;
every trial gets the dataset from the object store (loaded once by the driver) and
checkpoints each epoch. Writes spec.json; exit codes: 0 done, 1 no trial finished (all failed or
diverged), 2 bad input, 130 interrupted.
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

import numpy as np

import search_spaces
from common.cli import ArgumentParser, NOTHING_USABLE, check_cpus, check_gpus, guard
from common.status import DIVERGED, ERROR, FINISHED, RUNNING
from search_spaces._registry import DataInfo, Pair, Space, define_by_run, sample_config
from search_spaces.spaces import baseline
from tuning import data
from tuning.config import TrainConfig, parse_assignment
from tuning.experiment import METRICS, Experiment, config_columns


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tuning.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, help=f"one of: {', '.join(search_spaces.list_spaces())}")
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
    p.add_argument("--resume", action="store_true", help="continue the experiment --name after a crash or stop")
    p.add_argument("--address", help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT")
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
    p.add_argument("--dry-run", type=int, nargs="?", const=5, metavar="N",
                   help="print the resolved spec, the pairs and each pair's first N configs (default 5); train "
                        "nothing")
    return p


# ----------------------------------------------------------------------------- the spec
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
            "data_dir": str(args.data_dir), "argv": sys.argv[1:], "versions": {"python": platform.python_version(),
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
            max_epochs=space.max_epochs)

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


def make_tuner(space: Space, trainable, exp: Experiment, info: DataInfo, seed: int, budget: str,
               keep_best: bool = False):
    """A new search. (A resumed one is Tuner.restore: building searchers here would enqueue the
    recipes into the existing studies again.)"""
    from ray import tune
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from tuning.callbacks import EndedTrialCheckpoints
    from tuning.pairs import PerPairASHA

    s = space.resolved_settings()
    asha = functools.partial(ASHAScheduler, time_attr="training_iteration", max_t=space.max_epochs,
                             grace_period=s["grace_period"], reduction_factor=s["reduction_factor"])
    scheduler = PerPairASHA(asha) if budget == "pairs" else asha()
    run_config = tune.RunConfig(
        name=exp.name, storage_path=exp.storage,
        callbacks=[TBXLoggerCallback(), EndedTrialCheckpoints(s["metric"], s["mode"], keep_best)],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=s["max_failures"]))
    tune_config = tune.TuneConfig(search_alg=make_searcher(space, exp, info, seed, budget), scheduler=scheduler,
                                  num_samples=s["num_samples"], metric=s["metric"], mode=s["mode"],
                                  reuse_actors=True)  # a new trial skips the worker's torch import
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def run_search(args: argparse.Namespace) -> int:
    if args.dry_run is not None and args.dry_run < 1:
        raise ValueError(f"--dry-run={args.dry_run} must be >= 1 (configs to preview per study)")
    check_storage(args.storage)
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
    if not args.address:  # fail fast, before Ray starts
        check_gpus(args.gpus_per_trial, _local_gpus())
        check_cpus(space.resolved_settings()["cpus_per_trial"], os.cpu_count() or 1, "this machine")
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

    context = ray.init(address=args.address, include_dashboard=args.dashboard if not args.address else None,
                       dashboard_host=args.dashboard_host, ignore_reinit_error=True, log_to_driver=True)
    try:
        available = ray.cluster_resources().get("GPU", 0.0)
        gpus = check_gpus(args.gpus_per_trial, available)
        check_cpus(space.resolved_settings()["cpus_per_trial"], ray.cluster_resources().get("CPU", 0.0), "the cluster")
        if args.gpus_per_trial is None and available:
            gpus = space.resolved_settings()["gpus_per_trial"]
        if getattr(context, "dashboard_url", None):
            print(f"Ray dashboard: http://{context.dashboard_url}")
        print(f"experiment: {exp.uri}\noptuna-dashboard {exp.journal}\n"
              f"tensorboard --logdir {exp.uri}", flush=True)
        trainable = make_trainable(space, split, gpus)
        if args.resume and tune.Tuner.can_restore(exp.uri):
            tuner = tune.Tuner.restore(exp.uri, trainable=trainable, resume_errored=True)
        else:
            tuner = make_tuner(space, trainable, exp, DataInfo.of(split.dataset), args.seed,
                               exp.spec.get("budget", args.budget), args.keep_best_weights)
        tuner.fit()
        orphans = exp.fail_orphans()
        if orphans:
            print(f"{orphans} Optuna trial(s) left RUNNING by a killed driver marked FAIL (not results)")
        exp.sync_journal()
        return summarize(exp)
    finally:
        ray.shutdown()


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def summarize(exp: Experiment) -> int:
    """The end-of-run summary: trial counts by status and the best trial per (backbone, head),
    diverged and failed trials left out (their scores mislead); exit 1 when none finished."""
    import pandas as pd

    trials = exp.trials()
    failed = trials[trials["status"] == ERROR] if len(trials) else trials
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    print(f"\n{len(trials)} trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in (*FINISHED, DIVERGED, ERROR))
          + (f", {counts[RUNNING]} not finished" if counts.get(RUNNING) else ""))
    if len(trials):
        counts = trials.groupby(["arch", "head"]).size()
        print(f"trials per (backbone, head) ({exp.spec.get('budget', 'joint')} budget): "
              + ", ".join(f"{a}/{h} {n}" for (a, h), n in counts.items()))
    best = exp.best(trials) if len(trials) and trials["status"].isin(FINISHED).any() else trials[:0]
    if len(best):
        searched = [c for c in config_columns(trials) if c not in ("arch", "head")
                    and trials[c].astype(str).nunique() > 1]
        best = best[["arch", "head", f"best_{exp.settings.get('metric', 'val_acc')}", "epochs_run", "trial_id"]
                    + searched]
    if "path" in trials and not exp.is_uri:
        sizes = [folder_bytes(Path(p)) for p in trials["path"]]
        print(f"disk: {np.mean(sizes) / 2**10:.0f} KB per trial, {sum(sizes) / 2**20:.1f} MB in all (checkpoints of "
              "ended trials removed)")
    with pd.option_context("display.max_columns", 30, "display.width", 200):
        print("best trial per (backbone, head):")
        print(best.to_string(index=False) if len(best) else "(none)")
    if len(trials) and not trials["status"].isin(FINISHED).any():
        print("no trial finished (every one failed or diverged); first error:",
              failed["error"].dropna().head(1).tolist() or "-", file=sys.stderr)
        return NOTHING_USABLE
    return 0


@guard
def main(argv: list[str] | None = None) -> int:
    return run_search(build_parser().parse_args(argv))


if __name__ == "__main__":
    # A checkpoint every epoch of short smoke trials trips this advisory warning constantly.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sys.exit(main())
