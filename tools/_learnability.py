"""The work of `python -m tools.learnability` (its command line: tools/learnability.py)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

import heads
from training import optim



def make_data(num_classes: int, dim: int, per_class: int, noise: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)

    def draw(n):
        y = torch.arange(num_classes).repeat(n)
        return centres[y] + noise * torch.randn(len(y), dim, generator=g), y

    return centres, draw(per_class), draw(2)


def train_head(name: str, dense: bool, data, args) -> dict:
    (centres, (x, y), (xt, yt)) = data
    c, d = centres.shape
    torch.manual_seed(0)
    hp = {"num_sampled": min(args.num_sampled, c - 1)} if name == "sampled" else {}
    head = heads.create_head(name, d, c, **hp, **({"dense": True} if dense else {}))
    opt = optim.build(head, args.optimizer, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    steps = args.epochs * (len(y) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1) \
        if args.optimizer == "sgd" else torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    head.train()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(y))
        for i in range(len(y) // args.batch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            opt.zero_grad(set_to_none=True)
            head.loss(x[idx], y[idx]).backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    head.eval()
    with torch.no_grad():
        pred = torch.cat([head.predict(b) for b in xt.split(4096)])
        full = torch.cat([head.log_prob(b).argmax(1) for b in xt.split(4096)])
    return {"classes": c, "head": f"{name}[dense]" if dense else name, "predict_acc": (pred == yt).float().mean().item(),
            "log_prob_acc": (full == yt).float().mean().item(), "train_s": seconds, "steps": steps}


def nearest_centre_acc(data) -> float:
    centres, _, (xt, yt) = data
    pred = torch.cat([torch.cdist(b, centres).argmin(1) for b in xt.split(4096)])
    return (pred == yt).float().mean().item()


def run(args) -> int:
    import pandas as pd

    try:
        classes = [int(c) for c in args.classes.split(",")]
    except ValueError:
        raise ValueError(f"--classes={args.classes!r}: expected comma-separated integers") from None
    if any(c < 2 for c in classes) or min(args.dim, args.per_class, args.epochs, args.batch) < 1 or args.lr <= 0:
        raise ValueError(f"--classes {classes} must be >= 2; --dim, --per-class, --epochs, --batch >= 1; --lr > 0")
    names = heads.list_heads() if args.heads == "all" else args.heads.split(",")
    for n in names:
        heads.head_class(n)
    rows = []
    for c in classes:
        data = make_data(c, args.dim, args.per_class, args.noise)
        print(f"C={c}: nearest-centre ceiling {nearest_centre_acc(data):.3f}", flush=True)
        for name in names:
            for dense in (False, True) if args.with_dense and "dense" in heads.HEADS.options(name) else (False,):
                rows.append(train_head(name, dense, data, args))
                r = rows[-1]
                print(f"C={c:>6d} {r['head']:20s} predict acc {r['predict_acc']:.3f}  log_prob acc "
                      f"{r['log_prob_acc']:.3f}  {r['train_s']:7.1f} s ({r['steps']} steps)", flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "learnability.csv", index=False)
    print(df.to_markdown(index=False, floatfmt=".3f"))
    return 0
