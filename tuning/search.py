"""`python -m tuning.search --space NAME`: the hyperparameter search over (backbone, head).

    python -m tuning.search --space smoke                       # 32 s on 2 CPUs (measured), generated data
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
This module is the command line and needs no Ray: it parses, re-reads spec.json on --resume and
checks every input before anything starts; tuning.runner runs the search.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from common.cli import (ArgumentParser, check_cpus, check_gpus, check_host, check_name, check_out_dir, check_reachable,
                        guard, is_space_file)
from training.config import parse_assignment
from tuning import manifest
from tuning.experiment import Experiment
from tuning.folder import TRACKERS, mlflow_uri
from tuning.results import METRICS

# Only light imports above: `--help` answers in well under a second. The spaces (torch, timm, the heads),
# the experiment and the spec are imported once the arguments are parsed.


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tuning.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", help=f"a registered space: {', '.join(builtin_space_names())}; or your own, "
                   "path/to/file.py:function (examples/my_space.py) (with --resume: spec.json's)")
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
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=True,
                   help="the live page: every trial of every pair, its status and curves, in MLflow's store "
                        "(MLFLOW_TRACKING_URI, else <experiment>/mlflow.db) for the MLflow UI; the search prints "
                        "the command that opens it")
    p.add_argument("--callback", action="append", default=[], choices=sorted(TRACKERS),
                   help="also log every trial to Weights & Biases (wandb) or MLflow (mlflow: what --live does; "
                        "Ray's own logger callbacks; the package must be installed)")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")
    talk.add_argument("-v", "--verbose", action="store_true", help="also print every epoch's result and Ray's logs")
    p.add_argument("--dry-run", type=int, nargs="?", const=5, metavar="N",
                   help="print the resolved spec, the pairs and each pair's first N configs (default 5); train "
                        "nothing")
    return p


def builtin_space_names() -> list[str]:
    """The built-in spaces' names, read from search_spaces/spaces.py's source (`@register_space` functions):
    --help lists them without importing the spaces, which import torch (seconds)."""
    spec = importlib.util.find_spec("search_spaces")  # finds the package without running it
    tree = ast.parse(Path(spec.submodule_search_locations[0], "spaces.py").read_text())
    return sorted(f.name for f in tree.body if isinstance(f, ast.FunctionDef)
                  and any(isinstance(d, ast.Name) and d.id == "register_space" for d in f.decorator_list))


# Flags that say how this run of the search goes, not what it searches: a resume may change them.
SESSION_FLAGS = ("storage", "name", "resume", "trust_state", "address", "dashboard", "dashboard_host", "callback", "live",
                 "quiet",
                 "verbose", "dry_run", "argv")


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


def resolve_space(args: argparse.Namespace):
    """The named space (search_spaces.Space) with --set and the dedicated flags applied, checked."""
    import search_spaces

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
    from search_spaces._registry import SAMPLERS

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
    for key in ("cpus_per_trial", "gpus_per_trial"):  # `not x > 0` also refuses NaN; inf would wait forever
        if isinstance(s[key], bool) or not isinstance(s[key], (int, float)) or not 0 <= s[key] < math.inf:
            raise ValueError(f"{key}={s[key]!r} must be a finite number >= 0")
    if not s["cpus_per_trial"] > 0:
        raise ValueError(f"cpus_per_trial={s['cpus_per_trial']} must be > 0")
    if not isinstance(s["max_failures"], int) or isinstance(s["max_failures"], bool) or not 0 <= s["max_failures"] <= 10:
        raise ValueError(f"max_failures={s['max_failures']!r} must be an integer from 0 to 10 (retries of a trial "
                         "whose process died; -1, Ray's 'forever', would retry a crashing trial without end)")
    if s["sampler"] not in SAMPLERS:
        raise ValueError(f"sampler={s['sampler']!r} must be one of {list(SAMPLERS)}")
    if s["mode"] not in ("max", "min"):
        raise ValueError(f"mode={s['mode']!r} must be 'max' or 'min'")


def check_storage(storage: str) -> None:
    if "://" not in storage:
        check_out_dir(storage, "--storage")


def check_trackers(names: list[str]) -> None:
    for name in names:
        if importlib.util.find_spec(TRACKERS[name][0]) is None:
            raise ValueError(f"--callback {name} needs the {TRACKERS[name][0]} package: pip install {TRACKERS[name][0]}")


def check_mlflow(exp) -> None:
    """Open the tracking store before Ray starts: a bad URI is one line, not a traceback mid-fit."""
    import mlflow  # deferred: seconds to import, and only --callback mlflow needs it

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its "Creating initial MLflow database tables"
    try:
        mlflow.MlflowClient(tracking_uri=mlflow_uri(exp)).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds for a bad store
        raise ValueError(f"--callback mlflow: tracking URI {mlflow_uri(exp)} does not open: "
                         f"{str(exc).splitlines()[0][:200]}") from None


def run_search(args: argparse.Namespace) -> int:
    import search_spaces
    from search_spaces._registry import DataInfo
    from tuning.spec import (check_models, load_dataset, make_spec, preview_configs, split_of, study_labels,
                             trials_per_study)

    if args.dry_run is not None and args.dry_run < 1:
        raise ValueError(f"--dry-run={args.dry_run} must be >= 1 (configs to preview per study)")
    check_storage(args.storage)
    check_trackers(args.callback)
    if args.name is not None:
        check_name(args.name, "--name")
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
            for i, config in enumerate(preview_configs(space, info, pair, args.dry_run, args.seed,
                                                                  trials_per_study(space, args.budget))):
                print(f"  config {i}: {json.dumps(config, default=str)}")
        return 0
    for pair in labels.values():  # bad --set values fail here, before anything is written or Ray starts
        check_models(preview_configs(space, info, pair, 2, args.seed), ds)
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
    if args.address:  # an address nobody answers at would hang in Ray's connect
        check_reachable(args.address, "--address")
    elif args.dashboard:
        check_host(args.dashboard_host, "--dashboard-host")
    if not args.address:  # fail fast, before Ray starts
        check_gpus(args.gpus_per_trial, _local_gpus())
        check_cpus(space.resolved_settings()["cpus_per_trial"], os.cpu_count() or 1, "this machine")
    if args.live and importlib.util.find_spec("mlflow") is None:
        print("headsweep: no live page (pip install mlflow for it; --no-live silences this)", file=sys.stderr)
        args.live = False
    if ("mlflow" in args.callback or args.live) and os.environ.get("MLFLOW_TRACKING_URI"):
        check_mlflow(exp)  # (the default, a SQLite file in the experiment, opens wherever the folder can be made)
    exp.local.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        exp.write_spec(spec)
    from tuning import runner  # deferred: Ray and Optuna take seconds, and every check above needs neither

    return runner.run(args, space, exp, split_of(space, ds))


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


@guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # spec.json keeps it: --resume re-reads it
    if args.space and is_space_file(args.space):  # a space in a file:
        path, fn = args.space.rsplit(":", 1)  # kept absolute, so --resume finds it from any folder
        absolute = f"{Path(path).expanduser().resolve()}:{fn}"
        args.argv = [a.replace(args.space, absolute) if a in (args.space, f"--space={args.space}") else a
                     for a in args.argv]
        args.space = absolute
    return run_search(args)


if __name__ == "__main__":
    # A checkpoint every epoch of short smoke trials trips this advisory warning constantly.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sys.exit(main())
