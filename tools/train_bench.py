"""Training speed of one backbone + head: images/s of whole training steps, side by side in one run.

    python -m tools.train_bench --data-dir ../shared/data --arch resnet18 --batch-size 128   # --device cuda

Variants, each adding to the one before (one that does not apply here is skipped, with the reason):
  recipe         the usual Ray Tune CIFAR recipe: torchvision DataLoader with workers and PIL
                 transforms (crop, flip, ToTensor, Normalize), fp32, NCHW
  device_loader  headsweep's device-resident loader (augmentation on the device), fp32, NCHW
  bf16           + bf16 autocast (CUDA, and CPUs with AMX / AVX512-BF16; elsewhere skipped and the
                 variants after it stay fp32)
  channels_last  + NHWC memory layout
  compile        + torch.compile of the backbone
  fp32_channels_last  (by name only) channels_last in fp32: beside `channels_last`, bf16's own gain
Every variant runs the engine's own training step (`engine.train_step`: the head's loss, the
backward, the config's optimizer and lr schedule) on the same model, batch size and data. The
variants take turns (A B C A B C ...) over --repeats rounds of --steps timed steps; the table
gives medians and the min-max spread of images/s, the ratio to the recipe, the share of a
step spent in data, forward, backward and optimizer (a separate pass that syncs between
phases), and the model FLOP utilisation: FLOPs per image of a training step (forward +
backward, counted by `torch.utils.flop_counter`) x images/s / peak. The peak is the device's
bf16 dense peak on CUDA (a table of common GPUs; --peak-tflops overrides) and, on CPU, this
machine's measured matmul rate in the variant's precision (fp32, or bf16 for the bf16 variants).
On CPU the command re-runs itself with passive OpenMP waiting. Writes train_bench.csv into --out.

`--trials N` packs instead: one trial alone, then N identical trials at once through Ray, each
on its share of the CPUs (and 1/N of the GPU), the engine's default path; it prints each
trial's images/s, their total against one trial's, and checks that they ran at once
(pack_bench.csv).
"""
from __future__ import annotations

import argparse
import sys

from common.cli import ArgumentParser, guard
from tools.train_bench_variants import VARIANTS


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tools.train_bench", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--fake-data", action="store_true", help="tiny generated data in the dataset's format")
    p.add_argument("--image-size", type=int, default=32, help="ImageFolder images are resized to this (pixels)")
    p.add_argument("--arch", default="cnn_base")
    p.add_argument("--head", default="softmax")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the variants take turns in each")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes for the recipe")
    p.add_argument("--device", default="auto")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: table or measured)")
    p.add_argument("--trials", type=int, default=0,
                   help="instead of the variants: N identical trials at once through Ray vs one alone")
    p.add_argument("--out", default="bench_out")
    return p


@guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tools._train_bench import run  # torch: seconds, which --help does without

    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
