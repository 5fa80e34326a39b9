"""Tiny datasets written in exactly the official on-disk formats, for tests and smoke runs.

Each class gets its own colour and stripe pattern plus noise, so a small model can
learn it in an epoch or two. `python -m training.fake_data --out DIR` writes all of them.
"""
from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, check_out_dir, guard


def _images(labels: np.ndarray, num_classes: int, shape: tuple[int, int, int], rng) -> np.ndarray:
    c, h, w = shape
    base = np.random.default_rng(1234).integers(40, 216, size=(num_classes, c, 1, 1))
    stripes = (np.arange(w)[None, :] * (1 + np.arange(num_classes)[:, None] % 5) // 4) % 2  # (C, W)
    img = base[labels] + 30 * stripes[labels][:, None, None, :] + rng.normal(0, 20, (len(labels), c, h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def _balanced_labels(per_class: int, num_classes: int, rng) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_cifar100(root: Path, train_per_class: int = 10, test_per_class: int = 4, seed: int = 0) -> Path:
    """`root/cifar-100-python/{train,test,meta}`; superclass of fine class f is f // 5."""
    rng = np.random.default_rng(seed)
    out = Path(root) / "cifar-100-python"
    out.mkdir(parents=True, exist_ok=True)
    for part, per in (("train", train_per_class), ("test", test_per_class)):
        y = _balanced_labels(per, 100, rng)
        x = _images(y, 100, (3, 32, 32), rng).reshape(len(y), -1)
        d = {b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(y))], b"batch_label": part.encode(),
             b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(), b"data": x}
        (out / part).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (out / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def write_cifar10(root: Path, train_per_class: int = 10, test_per_class: int = 4, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`."""
    rng = np.random.default_rng(seed)
    out = Path(root) / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    y_all = _balanced_labels(train_per_class, 10, rng)
    for i, y in enumerate(np.array_split(y_all, 5), start=1):
        d = {b"labels": y.tolist(), b"data": _images(y, 10, (3, 32, 32), rng).reshape(len(y), -1)}
        (out / f"data_batch_{i}").write_bytes(pickle.dumps(d, protocol=2))
    y = _balanced_labels(test_per_class, 10, rng)
    d = {b"labels": y.tolist(), b"data": _images(y, 10, (3, 32, 32), rng).reshape(len(y), -1)}
    (out / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (out / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, train_per_class: int = 20, test_per_class: int = 5, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(root) / "fashion-mnist"
    out.mkdir(parents=True, exist_ok=True)
    for prefix, per in (("train", train_per_class), ("t10k", test_per_class)):
        y = _balanced_labels(per, 10, rng)
        _write_idx(out / f"{prefix}-images-idx3-ubyte.gz", _images(y, 10, (1, 28, 28), rng)[:, 0])
        _write_idx(out / f"{prefix}-labels-idx1-ubyte.gz", y)
    return out


def write_imagefolder(root: Path, classes: int = 4, per_class: tuple[int, int] = (6, 3), size: int = 40,
                      gray: bool = False, groups: int | None = None, seed: int = 0) -> Path:
    """`root/{train,test}/<class>/*.png` (or `<group>/<class>/` with `groups`), learnable like the rest."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for part, per in zip(("train", "test"), per_class):
        y = _balanced_labels(per, classes, rng)
        images = _images(y, classes, (1 if gray else 3, size, size), rng)
        for i, (label, img) in enumerate(zip(y, images)):
            folder = Path(root) / part / (f"g{label % groups}/c{label}" if groups else f"c{label}")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0] if gray else img.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    return Path(root)


def write_all(root: Path, seed: int = 0) -> Path:
    write_cifar100(root, seed=seed)
    write_cifar10(root, seed=seed)
    write_fashion_mnist(root, seed=seed)
    return Path(root)


@guard
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m training.fake_data", description=__doc__)
    p.add_argument("--out", required=True, help="folder to write cifar-100-python/, cifar-10-batches-py/, fashion-mnist/")
    p.add_argument("--seed", type=int, default=0, help="seeds the generated pixels and labels")
    args = p.parse_args(argv)
    check_out_dir(args.out, "--out")
    print(f"wrote tiny datasets under {write_all(Path(args.out), args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
