"""Loader benchmark: training images/s of one model through (a) headsweep's device-resident
loader and (b) the usual torchvision DataLoader + transforms recipe, side by side in one run.

    python -m tuning.bench_loader --data-dir ../shared/data --arch cnn_base --batch-size 256 --steps 50

Both paths run the same model, optimizer and batch size for the same number of steps
after a warm-up; the printed ratio is (a) / (b).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

import heads
import models
from common.cli import ArgumentParser, guard
from tuning import data
from tuning.engine import resolve_device
from tuning.loader import DeviceLoader, channel_stats


def _step_fn(arch: str, ds: data.Dataset, device: torch.device):
    torch.manual_seed(0)
    backbone = models.create_model(arch, in_chans=ds.in_chans, img_size=ds.img_size).to(device)
    head = heads.create_head("softmax", backbone.num_features, ds.num_classes).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step(x, y):
        loss = head.loss(backbone(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _time(batches, step, steps: int, warmup: int, device: torch.device) -> float:
    """Images per second over `steps` steps after `warmup` steps; one sync at each end."""
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        step(x, y)
        images += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def _forever(loader):
    while True:
        yield from loader


def torchvision_loader(x: np.ndarray, y: np.ndarray, batch_size: int, workers: int, stats):
    """The common recipe: PIL images, RandomCrop(32, padding=4), flip, ToTensor, Normalize."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    mean, std = [m / 255 for m in stats[0]], [s / 255 for s in stats[1]]
    tf = transforms.Compose([transforms.RandomCrop(x.shape[2], padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])
    hwc = x.transpose(0, 2, 3, 1)
    mode = "L" if hwc.shape[3] == 1 else "RGB"

    class Images(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            img = hwc[i, :, :, 0] if mode == "L" else hwc[i]
            return tf(Image.fromarray(img, mode=mode)), int(y[i])

    return DataLoader(Images(), batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


@guard
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--image-size", type=int, default=32, help="ImageFolder images are resized to this (pixels)")
    p.add_argument("--arch", default="cnn_base")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=50, help="timed steps per loader")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes for (b)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1:
        raise ValueError(f"--batch-size={args.batch_size} and --steps={args.steps} must be >= 1")
    device = resolve_device(args.device)
    ds = data.load_dataset(args.dataset, args.data_dir, download=False, image_size=args.image_size)
    stats = channel_stats(ds.x_train)
    results = {}
    for name, make in (
        ("device_loader", lambda: DeviceLoader(ds.x_train, ds.y_train, args.batch_size, device, train=True,
                                               mean=stats[0], std=stats[1])),
        ("torchvision_dataloader", lambda: torchvision_loader(ds.x_train, ds.y_train, args.batch_size,
                                                              args.workers, stats)),
    ):
        step = _step_fn(args.arch, ds, device)
        results[name] = _time(_forever(make()), step, args.steps, args.warmup, device)
        print(f"{name:24s} {results[name]:10.0f} images/s", flush=True)
    results["ratio"] = results["device_loader"] / results["torchvision_dataloader"]
    print(f"ratio device_loader / torchvision_dataloader: {results['ratio']:.2f}x "
          f"({args.arch}, batch {args.batch_size}, {device}, {torch.get_num_threads()} threads)")
    print(json.dumps({**results, "arch": args.arch, "batch_size": args.batch_size, "device": str(device)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
