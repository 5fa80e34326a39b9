"""`python -m tools.gpu_check`: what a lent GPU must show, in one run that fits a ten-minute window.

    make gpu-check          # on the GPU machine; writes results/gpu-check/gpu-check.json

Steps, each with its own time limit (the whole run stays under `--budget-s`, 8 minutes by default):
1. cuda     the engine on CUDA: bf16 autocast, channels_last and torch.compile train the smoke run;
2. bench    `tools.train_bench` for resnet18, vit_tiny and airnet: device loader, bf16, channels_last,
            compile, side by side (images/s, MFU against the GPU's bf16 peak);
3. pack     `tools.train_bench --trials 2` and `--trials 4`: 1, 2 and 4 trials sharing the GPU;
4. search   a 2-epoch `vit_heads` search of 8 trials at 0.25 GPU each.
Everything runs on generated CIFAR-100-format data (the real files do not travel to the GPU
machine, and speed does not depend on the pixels). Steps 3-4 need Ray and Optuna: without them
they are recorded as skipped, with the reason. Without CUDA the command refuses to start (exit 2).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from common.cli import ArgumentParser, guard

ARCHS = ("resnet18", "vit_tiny", "airnet")


def steps(out: Path) -> list[tuple[str, list[str], int]]:
    """(name, command, seconds allowed) of each step, in order."""
    py = [sys.executable, "-m"]
    bench = [*py, "tools.train_bench", "--fake-data", "--device", "cuda", "--steps", "20", "--repeats", "2"]
    plan = [("cuda", [*py, "training.train", "--smoke", "--device", "cuda", "--amp", "bf16", "--compile", "true",
                      "--summary-json", str(out / "cuda.json")], 90)]
    plan += [(f"bench_{arch}", [*bench, "--arch", arch, "--batch-size", "256", "--variants",
                                "device_loader,bf16,channels_last,compile", "--out", str(out / f"bench_{arch}")], 60)
             for arch in ARCHS]
    plan += [(f"pack_{n}", [*bench, "--arch", "resnet18", "--batch-size", "128", "--trials", str(n),
                            "--out", str(out / f"pack_{n}")], 45) for n in (2, 4)]
    plan += [("search", [*py, "tuning.search", "--space", "vit_heads", "--set", "fake_data=true", "--set", "epochs=2",
                         "--set", "num_samples=8", "--set", "max_concurrent=4", "--set", "grace_period=1",
                         "--gpus-per-trial", "0.25", "--storage", str(out / "experiments"), "--name", "vit",
                         "--no-dashboard", "-q"], 120)]
    return plan


def run_step(name: str, cmd: list[str], seconds: int) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
        code, tail = done.returncode, (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired as exc:
        code, tail = "timeout", ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes)
                                 else exc.stdout or "")[-4000:]
    return {"step": name, "command": cmd, "exit": code, "seconds": round(time.perf_counter() - start, 1),
            "output_tail": tail}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tools.gpu_check", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/gpu-check", help="folder for gpu-check.json and each step's files")
    p.add_argument("--budget-s", type=float, default=480.0, help="seconds for all steps together (default 480)")
    return p


@guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch  # deferred: --help answers without it

    if not torch.cuda.is_available():
        raise ValueError("the GPU check needs CUDA, and this machine has none: run `make gpu-check` on the GPU "
                         "machine")
    if not args.budget_s > 0:
        raise ValueError(f"--budget-s={args.budget_s} must be > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    have_ray = all(importlib.util.find_spec(m) for m in ("ray", "optuna"))
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": []}
    started = time.perf_counter()
    for name, cmd, seconds in steps(out):
        left = args.budget_s - (time.perf_counter() - started)
        if name.startswith(("pack", "search")) and not have_ray:
            report["steps"].append({"step": name, "exit": "skipped", "reason": "ray / optuna not installed here"})
        elif left < 10:
            report["steps"].append({"step": name, "exit": "skipped", "reason": "the time budget is spent"})
        else:
            result = run_step(name, cmd, int(min(seconds, left)))
            report["steps"].append(result)
            print(f"{name}: exit {result['exit']} in {result['seconds']} s", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'gpu-check.json'} ({report['seconds']} s)")
    return 0 if all(s["exit"] in (0, "skipped") for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
