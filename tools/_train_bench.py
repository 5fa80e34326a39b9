"""The work of `python -m tools.train_bench` (its command line and what it measures: tools/train_bench.py)."""
from __future__ import annotations

import json
import os
import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tools._heads_bench import cpu_settings, machine_rates, passive_openmp
from training import data, engine
from training.config import TrainConfig
from tools.train_bench_variants import FP32_CHANNELS_LAST, VARIANTS
from training.loader import channel_stats

PHASES = ("data", "forward", "backward", "optimizer")
# bf16 dense tensor-core peaks, TFLOP/s (vendor data sheets; no sparsity). Matched in order, by name.
GPU_PEAKS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("A100", 312.0),
             ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0),
             ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0))


@dataclass(frozen=True)
class Variant:
    name: str
    torchvision: bool
    precision: str  # "fp32" or "bf16" (autocast)
    channels_last: bool
    compile: bool


def variant(name: str, bf16: bool = True) -> Variant:
    """The variant `name`; `bf16`: whether this device has a fast bf16 path (else every variant is fp32)."""
    if name == FP32_CHANNELS_LAST:  # beside `channels_last`: bf16's own gain in the default layout
        return Variant(name, torchvision=False, precision="fp32", channels_last=True, compile=False)
    upto = VARIANTS.index(name)
    return Variant(name, torchvision=name == "recipe", precision="bf16" if bf16 and upto >= 2 else "fp32",
                   channels_last=upto >= 3, compile=upto >= 4)


def fast_bf16(device: torch.device) -> bool:
    return engine.precision("auto", device) == "bf16"


def skip_reason(v: Variant, device: torch.device) -> str | None:
    if v.name == "bf16" and not fast_bf16(device):
        return "this CPU has no AMX / AVX512-BF16, so bf16 would be emulated (the engine's amp=auto trains fp32 here)"
    return None


def gpu_peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in GPU_PEAKS if key in name), None)


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[dict[str, float], str]:
    """FLOP/s to measure MFU against, per precision ("fp32", "bf16"), and what they are."""
    if override_tflops:
        return dict.fromkeys(("fp32", "bf16"), override_tflops * 1e12), f"--peak-tflops {override_tflops:g}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_tflops(name)
        if peak is None:
            raise ValueError(f"no bf16 peak known for GPU {name!r}: pass --peak-tflops (its dense bf16 TFLOP/s)")
        return dict.fromkeys(("fp32", "bf16"), peak * 1e12), f"{name} bf16 dense peak {peak:g} TFLOP/s"
    rates = {"fp32": 2 * machine_rates("cpu")["madds_per_s"], "bf16": 2 * bf16_matmul_rate()}
    return rates, (f"measured matmul rate, fp32 {rates['fp32'] / 1e9:.1f} / bf16 {rates['bf16'] / 1e9:.1f} GFLOP/s "
                   f"({torch.get_num_threads()} threads)")


def bf16_matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Multiply-adds/s of a large bf16 matmul on the CPU (oneDNN: AMX tiles where the CPU has them)."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    a @ a  # the first call picks and packs the kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return n ** 3 / best


def train_flops_per_image(run, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one training step's forward and backward, per image (matmuls and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter:
        engine.train_step(run, x, y)
    return counter.get_total_flops() / len(y)


def torchvision_loader(x: np.ndarray, y: np.ndarray, batch_size: int, workers: int, stats):
    """The common recipe: PIL images, RandomCrop(size, padding=4), flip, ToTensor, Normalize."""
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


def _forever(loader):
    while True:
        yield from loader


class Contender:
    """One variant: the engine's run (model, optimizer, loader) and an endless stream of batches."""

    def __init__(self, v: Variant, args, split: data.Split):
        self.v, self.batch_size = v, args.batch_size
        cfg = TrainConfig.from_dict(dict(arch=args.arch, head=args.head, batch_size=args.batch_size,
                                         device=args.device, amp=v.precision, channels_last=v.channels_last,
                                         compile=v.compile, epochs=1000, seed=0))
        self.run = engine.build_run(cfg, split)
        self.run.trained.model.train()
        self.device = self.run.trained.device
        if v.torchvision:
            stats = channel_stats(split.x_train)
            self.batches = _forever(torchvision_loader(split.x_train, split.y_train, args.batch_size, args.workers,
                                                       stats))
        else:
            self.batches = _forever(self.run.train_loader)

    def next_batch(self):
        x, y = next(self.batches)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def images_per_s(self, steps: int) -> float:
        engine.sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            engine.train_step(self.run, *self.next_batch())
        engine.sync(self.device)
        return steps * self.batch_size / (time.perf_counter() - start)

    def phase_seconds(self, steps: int) -> dict:
        """Seconds per step in each phase, the device synced at each boundary."""
        spent = dict.fromkeys(PHASES, 0.0)
        clock = [0.0]

        def mark(phase):
            engine.sync(self.device)
            now = time.perf_counter()
            spent[phase] += now - clock[0]
            clock[0] = now

        for _ in range(steps):
            engine.sync(self.device)
            clock[0] = time.perf_counter()
            batch = self.next_batch()
            mark("data")
            engine.train_step(self.run, *batch, mark=mark)
        return {k: v / steps for k, v in spent.items()}


def measure(contenders: list[Contender], args) -> list[dict]:
    for c in contenders:  # warm-up: compilation, allocator, worker start
        c.images_per_s(args.warmup)
    rates = {c.v.name: [] for c in contenders}
    for r in range(args.repeats):
        for c in contenders:
            rates[c.v.name].append(c.images_per_s(args.steps))
        print(f"round {r + 1}/{args.repeats} done", flush=True)
    rows = []
    for c in contenders:
        phases = c.phase_seconds(max(2, args.steps // 2))
        total = sum(phases.values())
        rows.append({"variant": c.v.name, "images_per_s": statistics.median(rates[c.v.name]),
                     "spread": f"{min(rates[c.v.name]):.0f}-{max(rates[c.v.name]):.0f}",
                     **{f"{k}_share": v / total for k, v in phases.items()}})
    return rows


class _Barrier:
    """Packed trials start timing together (a Ray actor): each arrives after its warm-up, then waits."""

    def __init__(self):
        self.arrived = 0

    def arrive(self) -> None:
        self.arrived += 1

    def count(self) -> int:
        return self.arrived


def _packed_trial(split: data.Split, options: dict, threads: int, barrier, trials: int) -> dict:
    """One packed trial (a Ray task): the engine's default path (device loader, bf16 on CUDA,
    channels_last) on `threads` torch threads, its time window and images/s."""
    import ray

    torch.set_num_threads(threads)
    args = argparse.Namespace(**options)
    c = Contender(variant("channels_last", fast_bf16(engine.resolve_device(args.device))), args, split)
    c.images_per_s(max(1, args.warmup))
    ray.get(barrier.arrive.remote())
    while ray.get(barrier.count.remote()) < trials:
        time.sleep(0.01)
    start = time.time()
    rate = c.images_per_s(args.steps * args.repeats)
    return {"start": start, "end": time.time(), "images_per_s": rate, "threads": threads}


def pack(args, split: data.Split, device: torch.device) -> list[dict]:
    """One trial alone, then `args.trials` at once through Ray, each on its share of the CPUs
    (torch threads = that share) and 1/trials of a GPU: rows of (trials, trial, window, images/s)."""
    import logging

    import ray

    cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        remote, split_ref, rows = ray.remote(_packed_trial), ray.put(split), []
        for n in sorted({1, args.trials}):
            share = cpus / n
            barrier = ray.remote(num_cpus=0)(_Barrier).remote()
            refs = [remote.options(num_cpus=share, num_gpus=1 / n if gpus else 0).remote(
                split_ref, vars(args), max(1, int(share)), barrier, n) for _ in range(n)]
            rows += [{"trials": n, "trial": i, **r} for i, r in enumerate(ray.get(refs))]
            print(f"{n} trial(s) at once done", flush=True)
    finally:
        ray.shutdown()
    return rows


def pack_summary(df) -> str:
    """Per number of trials: each trial's images/s, their total, the total over one trial's, and
    whether their time windows overlapped (they ran at once)."""
    one = df.loc[df["trials"] == 1, "images_per_s"].sum()
    lines = []
    for n, g in df.groupby("trials"):
        overlap = n == 1 or g["start"].max() < g["end"].min()
        lines.append(f"{n} trial(s) at once: {' + '.join(f'{r:.0f}' for r in g['images_per_s'])} = "
                     f"{g['images_per_s'].sum():.0f} images/s, {g['images_per_s'].sum() / one:.2f}x one trial"
                     f"{'' if overlap else ' (WARNING: their time windows did not overlap)'}")
    return "\n".join(lines)


def check_args(args) -> None:
    for name in ("batch_size", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.warmup < 0 or args.workers < 0:
        raise ValueError(f"--warmup={args.warmup} and --workers={args.workers} must be >= 0")
    if args.trials < 0 or args.trials > (os.cpu_count() or 1):
        raise ValueError(f"--trials={args.trials} must be in [0, {os.cpu_count() or 1}] (a trial needs a CPU)")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise ValueError(f"--peak-tflops={args.peak_tflops} must be > 0")
    unknown = [v for v in args.variants.split(",") if v not in (*VARIANTS, FP32_CHANNELS_LAST)]
    if unknown:
        raise ValueError(f"--variants: {unknown[0]!r} is not one of {', '.join((*VARIANTS, FP32_CHANNELS_LAST))}")
    TrainConfig.from_dict(dict(arch=args.arch, head=args.head, batch_size=args.batch_size))  # names checked


def run(args, argv: list[str] | None) -> int:
    """The benchmark for parsed arguments (`argv` None: from the command line, which may re-run itself)."""
    import pandas as pd

    check_args(args)
    device = engine.resolve_device(args.device)
    passive_openmp(argv, device.type, "tools.train_bench")
    ds = data.load_for({"dataset": args.dataset, "image_size": args.image_size}, args.data_dir,
                       fake=args.fake_data, download=False)
    split = data.split_train_val(ds, TrainConfig().val_fraction, 0)
    if args.batch_size > len(split.y_train):
        raise ValueError(f"--batch-size={args.batch_size} is more than the {len(split.y_train)} training images")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.trials:
        print(f"{args.arch} + {args.head}, batch {args.batch_size}, {device}: 1 trial alone, then {args.trials} at "
              f"once ({os.cpu_count()} CPUs shared)", flush=True)
        df = pd.DataFrame(pack(args, split, device))
        df.to_csv(out / "pack_bench.csv", index=False)
        print(pack_summary(df))
        return 0
    chosen = []
    for v in (variant(name, fast_bf16(device)) for name in args.variants.split(",")):
        reason = skip_reason(v, device)
        if reason:
            print(f"{v.name}: skipped, {reason}")
        else:
            chosen.append(v)
    peak, peak_text = peak_flops(device, args.peak_tflops)
    print(f"{args.arch} + {args.head}, batch {args.batch_size}, {device}, {torch.get_num_threads()} threads "
          f"({cpu_settings()}); {ds.name} ({'generated' if args.fake_data else args.data_dir}); "
          f"{args.repeats} rounds of {args.steps} steps; MFU against the {peak_text}", flush=True)
    contenders = [Contender(v, args, split) for v in chosen]
    flops = train_flops_per_image(contenders[0].run, *contenders[0].next_batch())
    df = pd.DataFrame(measure(contenders, args))
    df.insert(1, "precision", [next(c.v.precision for c in contenders if c.v.name == n) for n in df["variant"]])
    df["mfu"] = df["images_per_s"] * flops / df["precision"].map(peak)
    if "recipe" in set(df["variant"]):
        df["vs_recipe"] = df["images_per_s"] / float(df.loc[df["variant"] == "recipe", "images_per_s"].iloc[0])
    df.insert(1, "gflops_per_image", flops / 1e9)
    df.to_csv(out / "train_bench.csv", index=False)
    print(df.to_markdown(index=False, floatfmt=".3g"))
    print(json.dumps({"arch": args.arch, "head": args.head, "batch_size": args.batch_size, "device": str(device),
                      "flops_per_image": flops, "peak_flops": peak, "rows": df.to_dict("records")}))
    return 0
