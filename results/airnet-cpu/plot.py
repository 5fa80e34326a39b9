"""The airnet accuracy-vs-minutes figure of the README, from the run summaries in this folder.

    .venv/bin/python results/airnet-cpu/plot.py     # writes curve.png and prints the table
Each airnet-e<N>.json is one `training.train` run of N epochs (cosine schedule to zero at its end). The
line is the 10-epoch run's validation accuracy after each epoch against its cumulative training time;
the markers are each run's test accuracy (flip TTA) against its wall time (reported in its .log).
"""
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def wall_minutes(run: Path) -> float | None:
    log = run.with_suffix(".log")
    found = re.search(r"wall (\d+) s", log.read_text()) if log.exists() else None
    return int(found.group(1)) / 60 if found else None


def main() -> None:
    runs = sorted(HERE.glob("airnet-e*.json"), key=lambda p: int(re.search(r"e(\d+)", p.stem).group(1)))
    fig, ax = plt.subplots(figsize=(6, 4))
    print("| epochs | test acc (flip TTA) | without TTA | wall min | s / epoch (train) |")
    print("| --- | --- | --- | --- | --- |")
    for run in runs:
        s = json.loads(run.read_text())
        hist, wall = s["history"], wall_minutes(run)
        per_epoch = sum(h["epoch_time_s"] for h in hist) / len(hist)
        print(f"| {len(hist)} | {s['test_acc']:.2%} | {s.get('test_acc_without_tta', float('nan')):.2%} | "
              f"{wall if wall is None else round(wall, 1)} | {per_epoch:.0f} |")
        if len(hist) == 10:
            minutes, t = [], 0.0
            for h in hist:
                t += h["epoch_time_s"] / 60
                minutes.append(t)
            ax.plot(minutes, [h["val_acc"] for h in hist], "o-", label="10-epoch run: validation after each epoch")
        if wall:
            ax.plot([wall], [s["test_acc"]], "s", label=f"{len(hist)}-epoch run: test accuracy at its wall time")
    ax.axhline(0.61, color="gray", ls="--", lw=1)
    ax.axvline(25, color="gray", ls=":", lw=1)
    ax.set(xlabel="minutes on the 2-core CPU", ylabel="accuracy", title="airnet + softmax, CIFAR-100 (shared split)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(HERE / "curve.png", dpi=120)


if __name__ == "__main__":
    main()
