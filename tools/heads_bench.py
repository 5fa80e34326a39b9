"""Cost of every head against the number of classes: the whole training step, side by side in one run.

    python -m tools.heads_bench --classes 1000,10000,100000,1000000 [--device cuda] [--threads N]

For each C, the heads take turns (A B C A B C ...; `--repeats` rounds): each turn builds the
head with its optimizer (SGD, momentum 0.9, Nesterov, weight decay 5e-4: the engine's default,
lazy row updates for row-sparse heads) and times
- train: the head's whole training step (loss forward + backward + optimizer update),
- log_prob: the full (B, C) distribution, and
- predict.
It prints medians and the spread (min-max over rounds), the speed-up over softmax, and two
predictions of it from `complexity()`: by multiply-adds alone, and by a roofline that adds the
bytes each step moves at this machine's measured memory bandwidth. The rest of a head's time,
measured minus roofline, is overhead the model does not count (per-group kernels, sorting
the sparse gradient, Gumbel noise); the "where the gap comes from" lines say which. A head
whose memory would not fit is skipped with a message. On CPU the benchmark re-runs itself with
`CPU_ENV` (passive OpenMP waiting, freed memory kept in the process) and prints the thread
settings. Writes heads_bench.csv and heads_bench.png into --out.
"""
from __future__ import annotations

import argparse
import sys

from common.cli import ArgumentParser, guard


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tools.heads_bench", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="100,1000,10000,100000", help="comma-separated C values (1000000 works too)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension d")
    p.add_argument("--batch", type=int, default=256, help="examples per batch")
    p.add_argument("--heads", default="all", help="comma-separated head names, or all")
    p.add_argument("--num-sampled", type=int, default=64, help="k for the sampled head")
    p.add_argument("--with-dense", action="store_true", help="also time the row-sparse heads with dense=True")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's, one per core)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median and spread over them)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per measurement")
    p.add_argument("--out", default="bench_out", help="folder for heads_bench.csv and heads_bench.png")
    return p


@guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tools._heads_bench import run  # torch: seconds, which --help does without

    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
