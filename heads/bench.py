"""Cost of every head against the number of classes, side by side in one run.

    python -m heads.bench --classes 100,1000,10000,100000 --dim 512 --batch 256 [--device cuda]

For each C and head: time of a training step of the head alone (loss forward + backward),
of the full log_prob, and of predict; the speed-up over softmax for each; and next to it
the speed-up that `complexity()` predicts from multiply-adds. Writes a CSV and a log-log
plot (time vs C) into --out. Hierarchical uses the balanced sqrt(C) tree; adaptive its
default cutoffs (20% / 60% of C); sampled k = --num-sampled.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils import benchmark

import heads
from common.cli import guard

OPS = ("train", "log_prob", "predict")


def head_options(name: str, num_classes: int, num_sampled: int) -> dict:
    """Only sampled needs one (k < C); the others run on their defaults."""
    return {"num_sampled": min(num_sampled, num_classes - 1)} if name == "sampled" else {}


def _time(fn, min_run_time: float) -> float:
    """Median seconds per call; torch.utils.benchmark warms up and syncs CUDA."""
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def measure(name: str, num_classes: int, dim: int, batch: int, device: str, num_sampled: int,
            min_run_time: float) -> dict:
    torch.manual_seed(0)
    hp = head_options(name, num_classes, num_sampled)
    head = heads.create_head(name, dim, num_classes, **hp).to(device)
    x = torch.randn(batch, dim, device=device, requires_grad=True)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def train_step():
        head.zero_grad(set_to_none=True)
        head.loss(x, y).backward()

    def no_grad(fn):
        def call():
            with torch.no_grad():
                fn(x)
        return call

    head.train()
    seconds = {"train": _time(train_step, min_run_time)}
    head.eval()
    seconds["log_prob"] = _time(no_grad(head.log_prob), min_run_time)
    seconds["predict"] = _time(no_grad(head.predict), min_run_time)
    cost = heads.head_complexity(name, dim, num_classes, **hp)
    return {"head": name, "classes": num_classes, **{f"{op}_ms": 1e3 * s for op, s in seconds.items()},
            **{f"{op}_madds": cost[f"{op}_madds"] for op in OPS}, "formula": cost["formula"]}


def add_speedups(df):
    """Speed-up over softmax at the same C, measured and predicted by complexity()."""
    base = df[df["head"] == "softmax"].set_index("classes")
    for op in OPS:
        df[f"{op}_speedup"] = df.classes.map(base[f"{op}_ms"]) / df[f"{op}_ms"]
        df[f"{op}_speedup_predicted"] = df.classes.map(base[f"{op}_madds"]) / df[f"{op}_madds"]
    return df


def plot(df, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, op in zip(axes, OPS):
        for name, rows in df.groupby("head"):
            ax.loglog(rows.classes, rows[f"{op}_ms"], marker="o", label=name)
        ax.set(title=f"{op}", xlabel="classes C", ylabel="ms per batch")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(df) -> str:
    cols = ["classes", "head", "train_ms", "train_speedup", "train_speedup_predicted", "log_prob_ms",
            "predict_ms", "predict_speedup", "predict_speedup_predicted"]
    return df[cols].to_markdown(index=False, floatfmt=".3g")


@guard
def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="100,1000,10000,100000", help="comma-separated C values (1000000 works too)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension d")
    p.add_argument("--batch", type=int, default=256, help="examples per batch")
    p.add_argument("--heads", default=",".join(heads.list_heads()))
    p.add_argument("--num-sampled", type=int, default=64, help="k for the sampled head")
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds of timing per measurement")
    p.add_argument("--out", default="bench_out", help="folder for heads_bench.csv and heads_bench.png")
    args = p.parse_args(argv)
    try:
        classes = [int(c) for c in args.classes.split(",")]
    except ValueError:
        p.error(f"--classes={args.classes!r}: expected comma-separated integers")
    if any(c < 2 for c in classes) or args.dim < 1 or args.batch < 1:
        p.error(f"--classes {classes} must all be >= 2, --dim and --batch >= 1")
    names = args.heads.split(",")
    for n in names:
        heads.head_class(n)  # unknown names fail here (one line, exit 2), before any timing
    if "softmax" not in names:
        names.insert(0, "softmax")  # the baseline of every ratio
    rows = []
    for c in classes:
        for name in names:
            rows.append(measure(name, c, args.dim, args.batch, args.device, args.num_sampled, args.min_run_time))
            r = rows[-1]
            print(f"C={c:>8d} {name:13s} train {r['train_ms']:9.3f} ms  log_prob {r['log_prob_ms']:9.3f} ms  "
                  f"predict {r['predict_ms']:9.3f} ms", flush=True)
    df = add_speedups(pd.DataFrame(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "heads_bench.csv", index=False)
    plot(df, out / "heads_bench.png")
    print(markdown_table(df))
    print(f"wrote {out / 'heads_bench.csv'} and {out / 'heads_bench.png'} "
          f"(d={args.dim}, batch={args.batch}, {args.device}, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
