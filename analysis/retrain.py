"""`python -m analysis.retrain EXPERIMENT --top-k 1 --seeds 3 [--epochs N]`

Selects the top-k configs of every (backbone, head) by validation accuracy (the search
never saw the test set), retrains each from scratch on train+validation once per seed as
Ray tasks with the search's (fractional) GPU resources, then evaluates each model once
on the test set. Writes `<experiment>/analysis/final.parquet`, one row per (config, seed),
and the confusion matrices as .npy files beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.metrics import classification_metrics
from analysis.results import to_parquet
from common.cli import ArgumentParser, check_cpus, check_gpus, guard
from common.status import ERROR, FINISHED
from training import data, engine
from training.config import TrainConfig
from tuning.results import Results
from training.loader import DeviceLoader

# Keys a config inherits from the search that make no sense for a retrain on train+val.
_DROP = ("val_fraction", "train_limit")


def select(exp: Results, top_k: int) -> pd.DataFrame:
    """Top-k trials per (arch, head) by the search's validation metric: the test set plays no part."""
    trials = exp.trials()
    if trials.empty or not trials["status"].isin(FINISHED).any():
        raise ValueError(f"{exp.uri}: no trial finished, nothing to retrain")
    return exp.best(trials, k=top_k)


def head_time_share(trained: engine.Trained, split: data.Split, steps: int = 10) -> float:
    """Share of a training step's time spent in the head (its loss forward + backward).

    Times `steps` full steps (backbone + head, forward + backward) and the head alone on the
    same batches' features, side by side; no optimizer step is applied.
    """
    model, cfg, device = trained.model, trained.cfg, trained.device
    loader = DeviceLoader(split.x_train, split.y_train, cfg.batch_size, device, train=True,
                                 mean=trained.stats[0], std=trained.stats[1], channels_last=cfg.channels_last)
    batches = [b for _, b in zip(range(steps), loader)]
    model.train()

    def timed(loss_of) -> float:
        engine.sync(device)
        start = time.perf_counter()
        for i, (x, y) in enumerate(batches):
            with engine.autocast(cfg, device):
                loss = model.head.loss(loss_of(i, x), y)
            loss.backward()
        engine.sync(device)
        return time.perf_counter() - start

    with torch.no_grad(), engine.autocast(cfg, device):
        features = [trained.forward(x).detach().requires_grad_() for x, _ in batches]
    total = timed(lambda i, x: trained.forward(x))
    share = timed(lambda i, x: features[i]) / total
    model.zero_grad(set_to_none=True)
    return share


def retrain_one(config: dict, seed: int, split: data.Split, out_dir: Path, label: str,
                epochs: int | None = None) -> dict:
    """Train one config with one seed on train+val, then evaluate it once on the test set."""
    flat = {k: v for k, v in config.items() if k not in _DROP}
    flat.update(seed=seed, **({"epochs": epochs} if epochs else {}))
    cfg = TrainConfig.from_dict(flat)
    fit = engine.fit(cfg, split)
    trained = fit.trained
    share = head_time_share(trained, split)
    test = engine.evaluate(trained, trained.loader(split.x_test, split.y_test),
                           return_log_probs=True)  # the one evaluation on the test set
    metrics = classification_metrics(split.y_test, test["log_probs"], split.dataset.class_to_group)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for key in ("confusion", "confusion_coarse"):
        if key in metrics:
            files[f"{key}_file"] = f"{key}_{label}_seed{seed}.npy"
            np.save(out_dir / files[f"{key}_file"], metrics.pop(key))
    times = [h["epoch_time_s"] for h in fit.history]
    model = trained.model
    cost = model.head.cost()
    return {"label": label, "arch": cfg.arch, "head": cfg.head, "seed": seed, "status": fit.status,
            "epochs": len(fit.history), **metrics, "test_loss": test["loss"],
            "epoch_time_s_mean": float(np.mean(times)), "epoch_time_s_std": float(np.std(times)),
            "images_per_s": float(np.mean([h["images_per_s"] for h in fit.history])),
            "head_time_share": share, "params": sum(p.numel() for p in model.parameters()),
            "head_train_madds": cost["train_madds"], "head_log_prob_madds": cost["log_prob_madds"],
            "head_predict_madds": cost["predict_madds"], "head_formula": cost["formula"],
            "softmax_madds": model.backbone.num_features * split.dataset.num_classes,  # d*C, the baseline
            "num_classes": split.dataset.num_classes, "class_names": json.dumps(split.dataset.classes),
            "device": str(trained.device), "config": json.dumps(cfg.to_flat(), default=str), **files}


def _retrain_task(*args) -> dict:
    """retrain_one inside a Ray task, with torch threads set from the task's CPU share (tasks packed
    on one machine then use the cores they were given, not all of them each)."""
    from tuning.trainable import trial_threads

    torch.set_num_threads(trial_threads())
    return retrain_one(*args)


def run_tasks(jobs: list[dict], split, out_dir: Path, epochs: int | None, cpus: float, gpus: float,
              address: str | None) -> list[dict]:
    """Every (config, seed) as a Ray task; progress printed as each finishes."""
    import ray

    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    try:
        resources = ray.cluster_resources()
        check_cpus(cpus, resources.get("CPU", 0.0), "the cluster", "--cpus-per-task")
        if gpus:
            check_gpus(gpus, resources.get("GPU", 0.0), "--gpus-per-task")
        split_ref = ray.put(split)  # the arrays go to the object store once
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(_retrain_task)
        pending = {task.remote(j["config"], j["seed"], split_ref, out_dir, j["label"], epochs): j for j in jobs}
        rows, start = [], time.perf_counter()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                rows.append(ray.get(done[0]))
                print(f"[{len(rows)}/{len(jobs)}] {job['label']} seed {job['seed']}: "
                      f"test accuracy {rows[-1]['accuracy']:.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
            except Exception as exc:  # one failed retrain must not lose the others
                print(f"{job['label']} seed {job['seed']} failed: {exc}", file=sys.stderr)
                rows.append({"label": job["label"], "seed": job["seed"], "status": ERROR, "error": str(exc)})
        return rows
    finally:
        ray.shutdown()


@guard
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m analysis.retrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="the experiment folder (<storage>/<name>)")
    p.add_argument("--top-k", type=int, default=1, help="configs per (backbone, head)")
    p.add_argument("--seeds", type=int, default=3, help="retrains per config, seeds 0..N-1")
    p.add_argument("--epochs", type=int, help="epochs per retrain (default: the config's)")
    p.add_argument("--data-dir", help="dataset folder (default: the one in spec.json)")
    p.add_argument("--cpus-per-task", type=float, help="default: the search's cpus_per_trial")
    p.add_argument("--gpus-per-task", type=float, help="default: the search's gpus_per_trial where GPUs exist")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                   help="an existing Ray cluster (default: $RAY_ADDRESS, which `ray job submit` sets)")
    args = p.parse_args(argv)
    for name in ("top_k", "seeds", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} must be >= 1")
    exp = Results.open(args.experiment)
    settings = exp.settings
    cpus = args.cpus_per_task or settings.get("cpus_per_trial", 1.0)
    if not args.address:  # more than this machine has would wait forever
        check_gpus(args.gpus_per_task, torch.cuda.device_count(), "--gpus-per-task")
        check_cpus(cpus, os.cpu_count() or 1, "this machine", "--cpus-per-task")
    chosen = select(exp, args.top_k)
    split = data.full_train_split(exp.load_dataset(args.data_dir))  # all training images are training data
    gpus = args.gpus_per_task if args.gpus_per_task is not None else \
        (settings.get("gpus_per_trial", 0.0) if torch.cuda.is_available() else 0.0)
    jobs = [{"config": exp.trial_config(row["path"]), "seed": seed,
             "label": f"{row['arch']}-{row['head']}-{row['trial_id']}"}
            for _, row in chosen.iterrows() for seed in range(args.seeds)]
    print(f"retraining {len(chosen)} configs x {args.seeds} seeds = {len(jobs)} runs on train+val "
          f"({len(split.y_train)} images); test set: {len(split.y_test)} images, evaluated once per run", flush=True)
    out_dir = exp.analysis_dir
    rows = run_tasks(jobs, split, out_dir, args.epochs, cpus, gpus, args.address)
    final = pd.DataFrame(rows)
    to_parquet(final, out_dir / "final.parquet")
    print(f"wrote {out_dir / 'final.parquet'} ({len(final)} rows)")
    return 0 if (final["status"] != ERROR).any() else 1


if __name__ == "__main__":
    sys.exit(main())
