"""`python -m training.train`: one training run without Ray, one line per epoch, a JSON summary.

    python -m training.train --dataset cifar100 --data-dir ../shared/data --arch resnet18 --head softmax --epochs 30
    python -m training.train --smoke      # tiny generated data, 1 epoch, any machine
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path

from common.cli import ArgumentParser, check_out_file, guard
from training import data
from training.config import TrainConfig, field_help, parse_assignment


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, docstring examples kept as written."""


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m training.train", description=__doc__, formatter_class=HelpFormatter)
    helps, hints = field_help(), typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model_kwargs", "head_kwargs"):
            continue
        base = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]  # X | None -> X
        kind = {bool: _bool, int: int, float: float}.get(base[0], str)
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=f.default,
                       help=helps.get(f.name, ""))
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option, e.g. batch_norm=True act=elu (repeatable)")
    p.add_argument("--head-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="head option, e.g. tau=0.5 hard=True cutoffs=[20,60] num_sampled=32 (repeatable)")
    p.add_argument("--data-dir", default="data", help="folder holding the official dataset files")
    p.add_argument("--no-download", action="store_true", help="never try to download missing files")
    p.add_argument("--summary-json", help="also write the final summary to this file")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run on generated CIFAR-100-format data: cnn_base, 1 epoch (checks an install)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    flat = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if f.name not in ("model_kwargs", "head_kwargs")}
    flat.update({f"model_{k}": v for k, v in map(parse_assignment, args.model_opt)})
    flat.update({f"head_{k}": v for k, v in map(parse_assignment, args.head_opt)})
    TrainConfig.from_dict(flat)  # the values as given are checked before --smoke replaces some
    if args.smoke:
        defaults = TrainConfig()
        given = [f"--{k}" for k in ("epochs", "dataset") if getattr(args, k) != getattr(defaults, k)]
        if given:
            raise ValueError(f"--smoke runs 1 epoch of generated CIFAR-100 data, which contradicts "
                             f"{' and '.join(given)}: drop one or the other")
        flat.update(dataset="cifar100", epochs=1, batch_size=min(args.batch_size, 64))
    return TrainConfig.from_dict(flat)


def _print_epoch(metrics: dict, _state) -> None:
    print(f"epoch {metrics['epoch']:3d}  train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
          f"val_acc {metrics['val_acc']:.4f}  val_top5 {metrics['val_top5']:.4f}  "
          f"time {metrics['epoch_time_s']:.1f}s  {metrics['images_per_s']:.0f} img/s", flush=True)


def run(args: argparse.Namespace) -> dict:
    from training import engine  # deferred: torch and timm take seconds, and --help needs neither

    cfg = config_from_args(args)
    if args.summary_json:  # checked now: a path that cannot be written would lose the run at its end
        check_out_file(args.summary_json, "--summary-json")
    engine.resolve_device(cfg.device)  # a device this machine lacks fails before the data loads
    started = time.perf_counter()
    ds = data.load_for(cfg.to_flat(), args.data_dir, fake=args.smoke, download=not args.no_download)
    if args.smoke:
        print("smoke: tiny generated CIFAR-100-format data (not real images)")
    split = data.split_train_val(ds, cfg.val_fraction, cfg.seed, cfg.train_limit)
    print(f"{ds.name}: {len(split.y_train)} train / {len(split.y_val)} val / {len(split.y_test)} test images, "
          f"{ds.num_classes} classes; {cfg.arch} + {cfg.head} head", flush=True)
    result = engine.fit(cfg, split, on_epoch=_print_epoch)
    trained = result.trained
    test = engine.evaluate(trained, trained.loader(split.x_test, split.y_test))
    times = [h["epoch_time_s"] for h in result.history]
    summary = {"status": result.status, "reason": result.reason, "config": cfg.to_flat(),
               "epochs_run": len(result.history), **{k: result.last.get(k) for k in ("val_acc", "val_top5", "val_loss")},
               "test_acc": test["acc"], "test_top5": test["top5"], "test_loss": test["loss"],
               "test_acc_without_tta": test["acc_without_tta"],  # the flip TTA's effect
               "precision": trained.precision,
               "epoch_time_s_mean": sum(times) / len(times), "images_per_s": result.last.get("images_per_s"),
               "classes": ds.classes, "wall_s": time.perf_counter() - started, "device": str(trained.device),
               "params": sum(p.numel() for p in trained.model.parameters()), "history": result.history}
    # One line for the console: the class names (1600 of them for some datasets) go to --summary-json only.
    print(json.dumps({**{k: v for k, v in summary.items() if k not in ("classes", "history")},
                      "num_classes": ds.num_classes},
                     default=str))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2, default=str))
    return summary


@guard
def main(argv: list[str] | None = None) -> int:
    summary = run(build_parser().parse_args(argv))
    return 0 if summary["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
