"""The work of `python -m tools.heads_bench` (its command line and what it does: tools/heads_bench.py)."""
from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import heads
from common.cli import check_out_dir
from training import optim
from heads.speed import kernels
from heads.hierarchical import fastest_num_groups

OPS = ("train", "log_prob", "predict")
SGD = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)  # the engine's default optimizer
GAP_NOTES = {  # what the roofline does not count, by head
    "softmax": "the (B, C) logits and their softmax passes beyond the byte model's four",
    "gumbel": "C Gumbel draws per example (rand, two logs) on top of softmax",
    "sampled": "a few dozen small ops of ~100 us each (run on one thread, heads.speed.sparse.one_thread), "
               "gathers/scatters of scattered rows, sorting (coalescing) the row gradient",
    "hierarchical": "with the CPU kernels, the lazy update run by run of the groups present and the K-way group "
                    "layer's small ops; with batched matmuls (CUDA, no compiler), also the gather of the present "
                    "groups' blocks and the batch padded by group",
    "adaptive": "PyTorch's per-cluster loop, its index_copy_ of targets, and the full update of every weight",
}


TAGS = {  # variants beside each head's default, by the tag in their label
    "dense": {"dense": True},  # today's dense update (--with-dense), for the row-sparse heads
    "k only": {"batch_negatives": False},  # sampled's plain k-sample loss, d*(k+1), beside its default d*(B+k)
    "fast K": {"tree": "balanced"},  # hierarchical with the group count fastest for the batch (head_options)
    "matmuls": {"cpu_kernels": False},  # hierarchical on the batched matmuls, beside its CPU kernels
}


def head_options(name: str, num_classes: int, tag: str | None, args) -> dict:
    hp = {"num_sampled": min(args.num_sampled, num_classes - 1)} if name == "sampled" else {}
    if tag == "fast K":  # the K that complexity() predicts fastest at this batch and machine
        hp["num_groups"] = fastest_num_groups(num_classes, args.dim, args.batch, args.madds_per_byte)
    return {**hp, **TAGS.get(tag, {})}


def variants(names: list[str], with_dense: bool, on_kernels: bool = False) -> list[tuple[str, str | None]]:
    """(head, tag) pairs: every head as it comes, sampled also with k samples only, hierarchical
    also with the group count fastest for the batch and, when it runs on the CPU kernels
    (`on_kernels`), on the batched matmuls; and the row-sparse heads also dense when asked
    (today's update, for comparison)."""
    out = [(n, None) for n in names] + [("sampled", "k only")] * ("sampled" in names)
    out += [("hierarchical", "fast K")] * ("hierarchical" in names)
    out += [("hierarchical", "matmuls")] * ("hierarchical" in names and on_kernels)
    if with_dense:
        out += [(n, "dense") for n in names if "dense" in heads.HEADS.options(n)]
    return out


def label(name: str, tag: str | None) -> str:
    return f"{name}[{tag}]" if tag else name


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _seconds(fn, device: str, min_time: float) -> float:
    """Mean seconds per call over at least `min_time` (and 1 call)."""
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def machine_rates(device: str) -> dict:
    """Measured peak-ish fp32 matmul rate (multiply-adds/s) and memory bandwidth (bytes/s, read + write)."""
    a = torch.randn(2048, 2048, device=device)
    big = torch.empty(64 * 2 ** 20, device=device)  # 256 MB, beyond any cache
    out = torch.empty_like(big)
    mm = min(_seconds(lambda: a @ a, device, 0.2) for _ in range(3))
    copy = min(_seconds(lambda: out.copy_(big), device, 0.2) for _ in range(3))
    return {"madds_per_s": 2048 ** 3 / mm, "bytes_per_s": 2 * big.numel() * 4 / copy}


def memory_needed(name: str, num_classes: int, dim: int, batch: int, tag: str | None) -> float:
    """Bytes a turn holds at once: weights, gradient, momentum, and a few (B, C) activations."""
    weights = num_classes * dim * 4
    rows_sparse = "dense" in heads.HEADS.options(name) and tag != "dense"  # a row-sparse head, as `variants` reads it
    grad = weights * (0.3 if rows_sparse else 1)
    return 3 * weights + grad + 6 * batch * num_classes * 4


def memory_available(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def one_turn(name: str, tag: str | None, num_classes: int, args) -> dict:
    """Build the head and its optimizer, warm up, and time train, log_prob and predict (seconds per call)."""
    torch.manual_seed(0)
    dim, batch, device, min_time = args.dim, args.batch, args.device, args.min_time
    head = heads.create_head(name, dim, num_classes, **head_options(name, num_classes, tag, args)).to(device)
    opt = optim.build(head, "sgd", **SGD)
    x = torch.randn(batch, dim, device=device, requires_grad=True)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        head.loss(x, y).backward()
        opt.step()

    def no_grad(fn):
        def call():
            with torch.no_grad():
                fn(x)
        return call

    head.train()
    train_step()  # warm-up: allocates the optimizer state
    seconds = {"train": _seconds(train_step, device, min_time)}
    head.eval()
    for op in ("log_prob", "predict"):
        no_grad(getattr(head, op))()
        seconds[op] = _seconds(no_grad(getattr(head, op)), device, min_time)
    return seconds


def measure(classes: list[int], names: list[str], args) -> list[dict]:
    """Every variant at every C, interleaved over `args.repeats` rounds; one row per (C, variant)."""
    rows = []
    for c in classes:
        todo = []
        for name, tag in variants(names, args.with_dense, args.on_kernels):
            need, have = memory_needed(name, c, args.dim, args.batch, tag), memory_available(args.device)
            if need > 0.8 * have:
                print(f"C={c:>8d} {label(name, tag):21s} skipped: needs about {need / 2**30:.1f} GiB, "
                      f"{have / 2**30:.1f} GiB free", flush=True)
            else:
                todo.append((name, tag))
        times = {v: {op: [] for op in OPS} for v in todo}
        for round_ in range(args.repeats):
            for name, tag in todo:
                for op, s in one_turn(name, tag, c, args).items():
                    times[(name, tag)][op].append(s)
                gc.collect()
            print(f"C={c:>8d} round {round_ + 1}/{args.repeats} done", flush=True)
        for (name, tag), t in times.items():
            cost = heads.head_complexity(name, args.dim, c, batch=args.batch, states=1,
                                         **head_options(name, c, tag, args))
            row = {"classes": c, "head": label(name, tag), "family": name}
            for op in OPS:
                row.update({f"{op}_ms": 1e3 * statistics.median(t[op]), f"{op}_ms_min": 1e3 * min(t[op]),
                            f"{op}_ms_max": 1e3 * max(t[op]), f"{op}_madds": cost[f"{op}_madds"],
                            f"{op}_bytes": cost[f"{op}_bytes"]})
            rows.append(row)
            print(f"C={c:>8d} {row['head']:21s} " + "  ".join(f"{op} {row[f'{op}_ms']:10.3f} ms" for op in OPS),
                  flush=True)
    return rows


def add_predictions(df, rates: dict, batch: int):
    """Speed-up over softmax at the same C: measured, by multiply-adds, and by the roofline."""
    for op in OPS:
        passes = 3 if op == "train" else 1  # backward: two more matmuls of the forward's size
        compute = df[f"{op}_madds"] * batch * passes / rates["madds_per_s"]
        memory = df[f"{op}_bytes"] / rates["bytes_per_s"]
        df[f"{op}_roofline_ms"] = 1e3 * (compute + memory)
        df[f"{op}_memory_share"] = memory / (compute + memory)
    base = df[df["head"] == "softmax"].set_index("classes")
    for op in OPS:
        df[f"{op}_speedup"] = df.classes.map(base[f"{op}_ms"]) / df[f"{op}_ms"]
        df[f"{op}_speedup_madds"] = df.classes.map(base[f"{op}_madds"]) / df[f"{op}_madds"]
        df[f"{op}_speedup_roofline"] = df.classes.map(base[f"{op}_roofline_ms"]) / df[f"{op}_roofline_ms"]
    return df


def gap_lines(df) -> list[str]:
    """Per head and C, where the training step's time goes against the roofline."""
    lines = []
    for _, r in df.iterrows():
        over = r.train_ms - r.train_roofline_ms
        share = max(0.0, over) / r.train_ms
        lines.append(f"C={r.classes:>8d} {r['head']:21s} train {r.train_ms:9.2f} ms, roofline "
                     f"{r.train_roofline_ms:9.2f} ms ({100 * r.train_memory_share:3.0f}% of it memory traffic); "
                     f"{100 * share:3.0f}% of the step beyond the roofline: {GAP_NOTES.get(r.family, '')}")
    return lines


def plot(df, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, op in zip(axes, OPS):
        for name, rows in df.groupby("head"):
            ax.loglog(rows.classes, rows[f"{op}_ms"], marker="o", label=name)
        ax.set(title=f"{op}" + (" (forward + backward + optimizer)" if op == "train" else ""),
               xlabel="classes C", ylabel="ms per batch")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(df) -> str:
    table = df.assign(train_spread=df.train_ms_min.map("{:.3g}".format) + "-" + df.train_ms_max.map("{:.3g}".format))
    cols = ["classes", "head", "train_ms", "train_spread", "train_speedup", "train_speedup_madds",
            "train_speedup_roofline", "log_prob_ms", "log_prob_speedup", "predict_ms", "predict_speedup",
            "predict_speedup_madds", "predict_speedup_roofline"]
    return table[cols].to_markdown(index=False, floatfmt=".3g")


# The CPU settings a benchmark runs under; they are read when the process starts.
CPU_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",  # spinning OpenMP threads distort short steps
    # glibc hands every block over 32 MB back to the OS when freed, so each large tensor of a
    # step (a C x d gradient, a gathered block) page-faults anew; keeping freed memory in the
    # process measures the kernels, not the page faults, and applies to every head alike.
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2 ** 40),
}


def passive_openmp(argv: list[str] | None, device: str, module: str = "tools.heads_bench") -> None:
    """Re-run the command line with `CPU_ENV` on CPU (a setting the user gave is kept, except that
    OpenMP waits passively). Only from the command line (argv None): a caller's process is not replaced."""
    if argv is not None or device != "cpu":
        return
    missing = {k: v for k, v in CPU_ENV.items() if k not in os.environ}
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        missing["OMP_WAIT_POLICY"] = "PASSIVE"
    if missing:
        os.environ.update(missing)
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])


def cpu_settings() -> str:
    return ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in CPU_ENV)


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def run(args, argv: list[str] | None) -> int:
    """The benchmark for parsed arguments (`argv` None: from the command line, which may re-run itself)."""
    import pandas as pd

    try:
        classes = [int(c) for c in args.classes.split(",")]
    except ValueError:
        raise ValueError(f"--classes={args.classes!r}: expected comma-separated integers") from None
    if any(c < 2 for c in classes) or args.dim < 1 or args.batch < 1 or args.repeats < 1 or args.num_sampled < 1:
        raise ValueError(f"--classes {classes} must all be >= 2; --dim {args.dim}, --batch {args.batch}, --repeats "
                f"{args.repeats} and --num-sampled {args.num_sampled} >= 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads={args.threads} must be >= 1")
    if not 0 < args.min_time < 3600:  # NaN too: a timing loop `while elapsed < nan` would never end
        raise ValueError(f"--min-time={args.min_time} must be a number of seconds in (0, 3600)")
    # The largest tensors: the softmax weight and its gradient and optimizer state (d x C, fp32, ~4 copies)
    # and the batch's logits (B x C): refuse what cannot fit rather than swap or die mid-run.
    need = max(classes) * (4 * args.dim + 2 * args.batch) * 4
    free = _available_bytes(args.device)
    if need > free:
        raise ValueError(f"--classes {max(classes)} with --dim {args.dim} and --batch {args.batch} needs ~"
                         f"{need / 2**30:.1f} GiB for the softmax baseline; {free / 2**30:.1f} GiB are free here")
    check_out_dir(args.out, "--out")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise ValueError(f"--device={args.device!r}: expected cpu or cuda")
    if args.device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"--device={args.device!r} but CUDA is not available here")
    names = heads.list_heads() if args.heads == "all" else args.heads.split(",")
    for n in names:
        heads.head_class(n)  # unknown names fail here (one line, exit 2), before any timing
    if "softmax" not in names:
        names.insert(0, "softmax")  # the baseline of every ratio
    passive_openmp(argv, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, {torch.get_num_threads()} threads, {cpu_settings()}, d={args.dim}, "
          f"batch={args.batch}, {args.repeats} interleaved rounds", flush=True)
    args.on_kernels = "hierarchical" in names and args.device == "cpu" and kernels.compiled() is not None
    if "hierarchical" in names:
        print("hierarchical: " + ("the CPU kernels of heads/speed/kernels.cpp (hierarchical[matmuls]: the batched "
                                  "matmuls, side by side)" if args.on_kernels else "batched matmuls"), flush=True)
    rates = machine_rates(args.device)
    args.madds_per_byte = rates["madds_per_s"] / rates["bytes_per_s"]
    print(f"measured: {rates['madds_per_s'] / 1e9:.1f} G multiply-adds/s (fp32 matmul), "
          f"{rates['bytes_per_s'] / 1e9:.1f} GB/s (copy)", flush=True)
    if "hierarchical" in names:
        print("hierarchical[fast K]: the balanced tree with K groups (heads.hierarchical.fastest_num_groups at "
              f"{args.madds_per_byte:.1f} multiply-adds a byte): " + ", ".join(
                  f"K={head_options('hierarchical', c, 'fast K', args)['num_groups']} at C={c} (sqrt(C) "
                  f"{round(c ** 0.5)})" for c in classes), flush=True)
    df = add_predictions(pd.DataFrame(measure(classes, names, args)), rates, args.batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "heads_bench.csv", index=False)
    plot(df, out / "heads_bench.png")
    print(markdown_table(df))
    print("Where the training step's time goes (roofline = multiply-adds at the measured matmul rate + bytes "
          "at the measured bandwidth):")
    print("\n".join(gap_lines(df)))
    print(f"wrote {out / 'heads_bench.csv'} and {out / 'heads_bench.png'}")
    return 0
