"""`python -m analysis.retrain EXPERIMENT --top-k 1 --seeds 3 [--epochs N]`

Selects the top-k configs of every (backbone, head) by validation accuracy (the search
never saw the test set), retrains each from scratch on train+validation once per seed as
Ray tasks with the search's (fractional) GPU resources, then evaluates each model once
on the test set. Writes `<experiment>/analysis/` (or `--out`): `chosen.json` (the configs x seeds: a
retrain can start again from it alone), `runs/<label>-seed<k>.json` as each run finishes (a stopped
retrain runs again only what has no file), then `final.parquet`, one row per (config, seed), and
the confusion matrices as .npy files. A progress line at least every 25 s of training (epoch, step, the
last finished epoch's training loss and its accuracy on 2,000 training images, since a retrain has no
validation split and reads the test set once; time in and left; `-q`: none, `-v`: after every epoch too).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from common.cli import ArgumentParser, check_cpus, check_gpus, check_out_dir, check_reachable, guard
from common.status import ERROR
from training import data
from tuning.results import Results

CHOSEN_FILE = "chosen.json"  # the selected configs x seeds: a retrain can start from it alone


def read_chosen(path: Path) -> dict:
    try:
        chosen = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable {CHOSEN_FILE} ({exc})") from None
    if not isinstance(chosen, dict) or not isinstance(chosen.get("jobs"), list) or not all(
            isinstance(j, dict) and {"config", "seed", "label"} <= set(j) for j in chosen["jobs"]):
        raise ValueError(f"{path}: expected {CHOSEN_FILE}'s layout, an object whose 'jobs' list holds "
                         "{config, seed, label} objects")
    return chosen


@guard
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m analysis.retrain", description=__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("experiment", help=f"the experiment folder (<storage>/<name>), or a {CHOSEN_FILE} a retrain wrote")
    p.add_argument("--top-k", type=int, default=1, help="configs per (backbone, head)")
    p.add_argument("--seeds", type=int, default=3, help="retrains per config, seeds 0..N-1")
    p.add_argument("--epochs", type=int, help="epochs per retrain (default: the config's)")
    p.add_argument("--data-dir", help="dataset folder (default: the one in spec.json)")
    p.add_argument("--out", help="where chosen.json, runs/ and final.parquet go (default: <experiment>/analysis)")
    p.add_argument("--cpus-per-task", type=float, help="default: the search's cpus_per_trial")
    p.add_argument("--gpus-per-task", type=float, help="default: the search's gpus_per_trial where GPUs exist")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                   help="an existing Ray cluster (default: $RAY_ADDRESS, which `ray job submit` sets)")
    p.add_argument("-q", "--quiet", action="store_true", help="only each run's result, no progress lines")
    p.add_argument("-v", "--verbose", action="store_true", help="a progress line after every epoch as well")
    args = p.parse_args(argv)
    for name in ("top_k", "seeds", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} must be >= 1")
    for name in ("cpus_per_task", "gpus_per_task"):
        value = getattr(args, name)
        if value is not None and not 0 <= value < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')}={value} must be a finite number >= 0")
    if args.out:
        check_out_dir(args.out, "--out")
    if args.address:
        check_reachable(args.address, "--address")
    return retrain(args)


def retrain(args) -> int:
    # Ray folds lines that differ only in numbers into "[repeated 2x across cluster]": each run's progress
    # line is its own (read when ray is first imported, below)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import pandas as pd  # the heavy imports once the arguments are known: --help answers at once
    import torch

    from analysis.results import to_parquet
    from analysis.runs import chosen_jobs, run_tasks

    source = Path(args.experiment)
    exp = None if source.is_file() else Results.open(args.experiment)
    given = read_chosen(source) if exp is None else None  # a chosen.json an earlier retrain wrote
    settings = given.get("settings", {}) if exp is None else exp.settings
    cpus = args.cpus_per_task or settings.get("cpus_per_trial", 1.0)
    if not args.address:  # more than this machine has would wait forever
        check_gpus(args.gpus_per_task, torch.cuda.device_count(), "--gpus-per-task")
        check_cpus(cpus, os.cpu_count() or 1, "this machine", "--cpus-per-task")
    if exp is None:
        chosen, out_dir = given, Path(args.out) if args.out else source.parent
    else:
        chosen, out_dir = chosen_jobs(exp, args.top_k, args.seeds), Path(args.out) if args.out else exp.analysis_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if exp is not None:
        (out_dir / CHOSEN_FILE).write_text(json.dumps(chosen, indent=1, default=str))
    ds = data.load_for(chosen.get("constants", {}), args.data_dir or chosen.get("data_dir") or "data",
                       chosen.get("fake_data", False))
    split = data.full_train_split(ds)  # all training images are training data
    gpus = args.gpus_per_task if args.gpus_per_task is not None else \
        (settings.get("gpus_per_trial", 0.0) if torch.cuda.is_available() else 0.0)
    jobs = chosen["jobs"]
    print(f"retraining {len({j['label'] for j in jobs})} configs x {len({j['seed'] for j in jobs})} seeds = "
          f"{len(jobs)} runs on "
          f"train+val ({len(split.y_train)} images); test set: {len(split.y_test)} images, evaluated once per run",
          flush=True)
    verbosity = 0 if args.quiet else 2 if args.verbose else 1
    rows = run_tasks(jobs, split, out_dir, args.epochs, cpus, gpus, args.address, verbosity)
    final = pd.DataFrame(rows)
    to_parquet(final, out_dir / "final.parquet")
    print(f"wrote {out_dir / 'final.parquet'} ({len(final)} rows)")
    return 0 if len(final) and (final["status"] != ERROR).any() else 1


if __name__ == "__main__":
    sys.exit(main())
