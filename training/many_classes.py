"""A real many-class image set from CIFAR-100, written as an ImageFolder: `--dataset imagefolder:PATH`.

    python -m training.many_classes --data-dir ../shared/data --out data/cifar1600

A class is a CIFAR-100 fine class seen through one of `rotations` quarter turns and one of
`channel_orders` orders of its RGB channels: 100 x 4 x 4 = 1,600 classes by default, with
`--train-per-class` images each from CIFAR-100's train part and `--test-per-class` from its
test part. No source image is used twice, so train and test never share one. The set declares
`flip: false` (a mirror image would turn one quarter turn into the opposite one). The images are
real and the classes learnable (a backbone must tell the object, its orientation and its
colours apart), which is what checking heads at about 1,600 classes needs and what no
download-free set here has. Accuracy on it inherits the caveat of this CIFAR-100 copy: its
train/test split is not the official one.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, guard
from training.data import load_dataset
from training.imagefolder import DECLARATION

CHANNEL_ORDERS = list(itertools.permutations(range(3)))  # identity first


def variants(rotations: int, channel_orders: int) -> list[tuple[int, tuple[int, ...]]]:
    if not 1 <= rotations <= 4 or not 1 <= channel_orders <= len(CHANNEL_ORDERS):
        raise ValueError(f"rotations={rotations} must be in [1, 4] and channel_orders={channel_orders} "
                         f"in [1, {len(CHANNEL_ORDERS)}]")
    return [(r, p) for r in range(rotations) for p in CHANNEL_ORDERS[:channel_orders]]


def pick_sources(labels: np.ndarray, num_variants: int, per_class: int, rng) -> dict[int, np.ndarray]:
    """For each fine class, num_variants x per_class distinct image indices (shuffled), or an error."""
    out = {}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < num_variants * per_class:
            raise ValueError(f"class {c} has {len(idx)} images; {num_variants} variants x {per_class} per class "
                             f"need {num_variants * per_class}")
        out[int(c)] = idx[:num_variants * per_class].reshape(num_variants, per_class)
    return out


def write_part(root: Path, images: np.ndarray, names: list[str], vs: list, sources: dict[int, np.ndarray]) -> int:
    """Write each (fine class, variant)'s source images, turned and with channels reordered (HWC)."""
    from PIL import Image

    written = 0
    for c, picked in sources.items():
        for (rot, order), idx in zip(vs, picked):
            folder = root / f"{names[c]}_r{rot * 90}_{''.join('rgb'[i] for i in order)}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx:
                img = np.rot90(images[i][..., list(order)], k=rot)
                Image.fromarray(np.ascontiguousarray(img)).save(folder / f"{i}.png")
                written += 1
    return written


@guard
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m training.many_classes", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder holding cifar-100-python/")
    p.add_argument("--out", required=True, help="the ImageFolder to write (must not exist)")
    p.add_argument("--rotations", type=int, default=4)
    p.add_argument("--channel-orders", type=int, default=4)
    p.add_argument("--train-per-class", type=int, default=15)
    p.add_argument("--test-per-class", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise ValueError(f"--out {out} exists; give a new folder")
    if min(args.train_per_class, args.test_per_class) < 1:
        raise ValueError(f"--train-per-class {args.train_per_class} and --test-per-class {args.test_per_class} "
                         "must be >= 1")
    vs = variants(args.rotations, args.channel_orders)
    rng = np.random.default_rng(args.seed)
    ds = load_dataset("cifar100", args.data_dir, download=False)
    parts = {"train": (ds.x_train, ds.y_train, args.train_per_class), "test": (ds.x_test, ds.y_test,
                                                                              args.test_per_class)}
    picks = {part: pick_sources(y, len(vs), n, rng) for part, (_, y, n) in parts.items()}  # all checked first
    counts = {part: write_part(out / part, x.transpose(0, 2, 3, 1), ds.classes, vs, picks[part])
              for part, (x, _, _) in parts.items()}
    # A horizontal flip turns a quarter turn into the opposite one: flipping would merge classes.
    (out / DECLARATION).write_text(json.dumps({"flip": False}))
    print(f"{out}: {len(vs) * ds.num_classes} classes, {counts['train']} train and {counts['test']} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
