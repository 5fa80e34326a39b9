"""What a search is asked, Ray-free: its provenance (spec.json: argv, space, settings, versions, git
sha, host, data), its plan (one Optuna study per pair, each starting from the family recipe), the
previewed configs of --dry-run, and the trackers --callback names.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import zlib
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

import models
from search_spaces._registry import DataInfo, Pair, Space, sample_config
from search_spaces.spaces import baseline
from training import data, engine
from training.config import TrainConfig


# --callback NAME -> (package it needs, Ray's logger callback class)
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


def trials_per_study(space: Space, budget: str) -> int:
    """Each study's share of num_samples (the smallest, where they differ by one)."""
    return max(1, space.resolved_settings()["num_samples"] // len(study_labels(space, budget)))


def make_sampler(name: str, seed: int, label: str, trials: int):
    """The study's Optuna sampler, seeded per study: pairs do not share random draws (before, every pair
    drew the same learning-rate sequence, so one unlucky sequence hit every head alike and the heads'
    differences were partly that sequence's). TPE's random start-up is a third of the study's trials
    (at least 2, at most Optuna's default 10): with Optuna's 10, a pair of 8 trials never left it."""
    import optuna

    pair_seed = (seed * 1_000_003 + zlib.crc32(label.encode())) % 2 ** 31
    if name == "random":
        return optuna.samplers.RandomSampler(seed=pair_seed)
    return optuna.samplers.TPESampler(seed=pair_seed, n_startup_trials=max(2, min(10, trials // 3)))


def preview_configs(space: Space, info: DataInfo, pair: Pair | None, n: int, seed: int,
                    trials: int | None = None) -> list[dict]:
    """The first n configs a study of `trials` trials proposes (its baseline first), each validated as a
    trial would be."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    label = "joint" if pair is None else f"{pair[0]}/{pair[1]}"
    sampler = make_sampler(space.resolved_settings()["sampler"], seed, label, trials or n)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params in first_trials(space, info, pair):
        study.enqueue_trial(params)
    configs = [sample_config(space, info, pair, study.ask()) for _ in range(n)]
    for config in configs:
        TrainConfig.from_dict(config)
    return configs


def check_models(configs: list[dict], dataset) -> None:
    """Build each config's backbone on the meta device (no memory, no compute): an option the model refuses
    (widths=[0,8], too many pools for the image size) is one line before Ray starts, not a failed trial."""
    for config in configs:
        cfg = TrainConfig.from_dict(config)
        try:
            with torch.device("meta"):
                models.create_model(cfg.arch, in_chans=dataset.in_chans, img_size=dataset.img_size,
                                    **cfg.model_kwargs)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"model {cfg.arch!r} with {cfg.model_kwargs or 'its defaults'}: {exc}") from None


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
            "git_sha": _git_sha(), "host": platform.node(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "precision": precision_spec(space.constants.get("amp", "auto"))}


def precision_spec(amp: str) -> dict:
    """The amp setting and what it resolves to on this host's devices (each trial records its own too)."""
    on = {"cpu": engine.precision(amp, torch.device("cpu"))}
    if torch.cuda.is_available():
        on["cuda"] = engine.precision(amp, torch.device("cuda"))
    return {"amp": amp, "on_this_host": on}


def load_dataset(space: Space, data_dir: str) -> data.Dataset:
    return data.load_for(space.constants, data_dir, space.resolved_settings()["fake_data"])


def split_of(space: Space, ds: data.Dataset) -> data.Split:
    c, defaults = space.constants, TrainConfig()
    return data.split_train_val(ds, c.get("val_fraction", defaults.val_fraction), c.get("seed", defaults.seed),
                                c.get("train_limit"))
