"""The retrain's work: select the configs, train each (config, seed) from scratch on train+val as Ray
tasks, evaluate each model once on the test set, keep each finished run's row in its own file.
`analysis.retrain` (the command line) imports this only after its checks.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.metrics import classification_metrics
from common.cli import check_cpus, check_gpus
from common.status import ERROR, FINISHED
from training import data, engine
from training.config import TrainConfig
from training.loader import DeviceLoader
from tuning.results import Results

# Keys a config inherits from the search that make no sense for a retrain on train+val.
_DROP = ("val_fraction", "train_limit")
RUNS_DIR = "runs"  # one JSON per finished (config, seed)


def select(exp: Results, top_k: int) -> pd.DataFrame:
    """Top-k trials per (arch, head) by the search's validation metric: the test set plays no part."""
    trials = exp.trials()
    if trials.empty or not trials["status"].isin(FINISHED).any():
        raise ValueError(f"{exp.uri}: no trial finished, nothing to retrain")
    return exp.best(trials, k=top_k)


def head_time_share(trained: engine.Trained, split: data.Split, steps: int = 10, rounds: int = 3) -> float:
    """Share of a training step's time spent in the head (its loss forward + backward).

    Times `steps` full steps (backbone + head, forward + backward) and the head alone on the
    same batches' features, taking turns for `rounds` rounds; the fastest pass of each (the one least
    disturbed by whatever shares the cores: one pass of a small model is milliseconds, and a single
    preempted pass made the head's share 1.6). No optimizer step is applied.
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
    total, head = float("inf"), float("inf")
    for _ in range(rounds):
        total = min(total, timed(lambda i, x: trained.forward(x)))
        head = min(head, timed(lambda i, x: features[i]))
    share = head / total
    model.zero_grad(set_to_none=True)
    return share


def retrain_one(config: dict, seed: int, split: data.Split, out_dir: Path, label: str,
                epochs: int | None = None, on_step=None, on_epoch=None) -> dict:
    """Train one config with one seed on train+val, then evaluate it once on the test set."""
    flat = {k: v for k, v in config.items() if k not in _DROP}
    flat.update(seed=seed, **({"epochs": epochs} if epochs else {}))
    cfg = TrainConfig.from_dict(flat)
    fit = engine.fit(cfg, split, on_step=on_step, on_epoch=on_epoch)
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


class Progress:
    """A run's progress lines: one at least every `every` seconds of training (epoch, step, time in, time
    left by the pace so far), and with `verbose` one per epoch too."""

    def __init__(self, label: str, seed: int, epochs: int, every: float = 25.0, verbose: bool = False):
        self.name, self.epochs, self.every, self.verbose = f"{label} seed {seed}", epochs, every, verbose
        self.start = self.last = time.perf_counter()
        self.epoch = 0
        self.scores = ""  # the last finished epoch's: a retrain has no validation set, so training images

    def epoch_done(self, metrics: dict, _state=None) -> None:
        acc = metrics.get("train_acc")
        self.scores = (f", epoch {metrics.get('epoch')} train loss {metrics.get('train_loss'):.3f}"
                       + (f" acc {acc:.3f} ({metrics.get('train_acc_images')} training images)" if acc is not None else ""))

    def step(self, step: int, steps: int) -> None:
        now = time.perf_counter()
        if step == steps:
            self.epoch += 1
        if now - self.last < self.every and not (self.verbose and step == steps):
            return
        self.last = now
        done = (self.epoch + (0 if step == steps else step / steps)) / self.epochs
        left = (now - self.start) * (1 - done) / done if done >= 0.05 else float("nan")  # no guess off a first step
        where = f"epoch {self.epoch}/{self.epochs} done" if step == steps else \
            f"epoch {self.epoch + 1}/{self.epochs}, step {step}/{steps}"
        print(f"  {self.name}: {where}{self.scores}, {_minutes(now - self.start)} in, ~{_minutes(left)} left", flush=True)


def _minutes(seconds: float) -> str:
    return "?" if seconds != seconds else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _retrain_task(job: dict, split, out_dir: Path, epochs: int | None, verbosity: int) -> dict:
    """retrain_one inside a Ray task, with torch threads set from the task's CPU share (tasks packed
    on one machine then use the cores they were given, not all of them each)."""
    from tuning.trainable import trial_threads

    torch.set_num_threads(trial_threads())
    progress = Progress(job["label"], job["seed"], epochs or job["config"].get("epochs", 1), verbose=verbosity > 1)
    import ray

    row = retrain_one(job["config"], job["seed"], split, out_dir, job["label"], epochs,
                      on_step=progress.step if verbosity > 0 else None, on_epoch=progress.epoch_done)
    return {**row, "node_id": ray.get_runtime_context().get_node_id()}  # which machine of a cluster trained it


def run_file(out_dir: Path, job: dict) -> Path:
    """Where a finished (config, seed) keeps its row: a re-run skips it."""
    return out_dir / RUNS_DIR / f"{job['label']}-seed{job['seed']}.json"


def run_tasks(jobs: list[dict], split, out_dir: Path, epochs: int | None, cpus: float, gpus: float,
              address: str | None, verbosity: int = 1) -> list[dict]:
    """Every (config, seed) without a run file as a Ray task; each finished one writes its run file at
    once (a stop loses only the runs in progress); progress printed as each finishes."""
    todo = [j for j in jobs if not run_file(out_dir, j).exists()]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs finished before (in {out_dir / RUNS_DIR}): skipped",
              flush=True)
    if todo:
        _run_on_ray(todo, split, out_dir, epochs, cpus, gpus, address, verbosity)
    return [json.loads(run_file(out_dir, j).read_text()) for j in jobs if run_file(out_dir, j).exists()] + \
        [{"label": j["label"], "seed": j["seed"], "status": ERROR, "error": j["error"]} for j in todo if "error" in j]


def _run_on_ray(jobs: list[dict], split, out_dir: Path, epochs: int | None, cpus: float, gpus: float,
                address: str | None, verbosity: int) -> None:
    import ray

    from tuning.runner import calm_ray_auth

    calm_ray_auth()
    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=verbosity > 0)
    try:
        resources = ray.cluster_resources()
        check_cpus(cpus, resources.get("CPU", 0.0), "the cluster", "--cpus-per-task")
        if gpus:
            check_gpus(gpus, resources.get("GPU", 0.0), "--gpus-per-task")
        split_ref = ray.put(split)  # the arrays go to the object store once
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(_retrain_task)
        pending = {task.remote(j, split_ref, out_dir, epochs, verbosity): j for j in jobs}
        finished, start = 0, time.perf_counter()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            finished += 1
            try:
                row = ray.get(done[0])
            except Exception as exc:  # one failed retrain must not lose the others
                print(f"{job['label']} seed {job['seed']} failed: {exc}", file=sys.stderr)
                job["error"] = str(exc)
                continue
            path = run_file(out_dir, job)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(row, default=str))
            tmp.replace(path)  # whole or absent: a kill mid-write leaves no half row
            print(f"[{finished}/{len(jobs)}] {job['label']} seed {job['seed']}: test accuracy {row['accuracy']:.4f} "
                  f"({_minutes(time.perf_counter() - start)})", flush=True)
    finally:
        ray.shutdown()


def chosen_jobs(exp: Results, top_k: int, seeds: int) -> dict:
    """What the retrain trains: the selected configs x seeds, and what it needs to load their data."""
    chosen = select(exp, top_k)
    return {"experiment": exp.uri, "constants": exp.spec.get("constants", {}), "data_dir": exp.spec.get("data_dir"),
            "fake_data": exp.settings.get("fake_data", False), "settings": exp.settings,
            # seed-major: a stopped retrain has every config's first seed before any config's second
            "jobs": [{"config": exp.trial_config(row["path"]), "seed": seed,
                      "label": f"{row['arch']}-{row['head']}-{row['trial_id']}"}
                     for seed in range(seeds) for _, row in chosen.iterrows()]}


