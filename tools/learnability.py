"""Can every head learn many classes? A synthetic but learnable check, same budget for all.

    python -m tools.learnability --classes 1000,10000 --dim 64 --per-class 20 --epochs 8

C class centres in d dimensions (unit Gaussian), examples = centre + noise (--noise); the
nearest-centre rule is the ceiling. Every head (sparse and, with --with-dense, dense=True)
trains on the same examples with the same optimizer, learning rate and number of steps, then
is scored on fresh examples: accuracy of predict and of the full log_prob's argmax, and seconds
of training. Writes learnability.csv into --out.
"""
from __future__ import annotations

import argparse
import sys

from common.cli import ArgumentParser, guard

OPTIMIZERS = ("sgd", "adamw")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tools.learnability", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="1000,10000")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--per-class", type=int, default=20, help="training examples per class")
    p.add_argument("--noise", type=float, default=0.5, help="std of the noise around each centre")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--num-sampled", type=int, default=64)
    p.add_argument("--heads", default="all", help="comma-separated head names, or all")
    p.add_argument("--with-dense", action="store_true", help="also the row-sparse heads with dense=True")
    p.add_argument("--out", default="bench_out")
    return p


@guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tools._learnability import run  # torch: seconds, which --help does without

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
