"""fp32 against bf16 test accuracy from the runs of run.sh: means, std over seeds, the paired difference."""
import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78}  # Student's t, two-sided 95%, by degrees of freedom


def main() -> None:
    runs = {}
    for f in HERE.glob("cnn_bn4-*-seed*.json"):
        _, amp, seed = f.stem.split("-")
        runs.setdefault(int(seed[4:]), {})[amp] = json.loads(f.read_text())
    seeds = sorted(s for s, r in runs.items() if {"fp32", "bf16"} <= set(r))
    print(f"cnn_bn4 + softmax, CIFAR-100 (shared split, not the official one), 5 epochs, seeds {seeds}")
    print("| precision | test acc, mean +- std | per seed | s / epoch (mean) |")
    print("| --- | --- | --- | --- |")
    for amp in ("fp32", "bf16"):
        acc = [runs[s][amp]["test_acc"] for s in seeds]
        sec = [runs[s][amp]["epoch_time_s_mean"] for s in seeds]
        spread = statistics.stdev(acc) if len(acc) > 1 else float("nan")
        print(f"| {amp} | {statistics.mean(acc):.2%} +- {spread:.2%} | {', '.join(f'{a:.2%}' for a in acc)} | "
              f"{statistics.mean(sec):.0f} |")
    diff = [runs[s]["bf16"]["test_acc"] - runs[s]["fp32"]["test_acc"] for s in seeds]
    if len(diff) > 1:
        half = T95[len(diff) - 1] * statistics.stdev(diff) / len(diff) ** 0.5
        print(f"bf16 - fp32, paired over seeds: {statistics.mean(diff):+.2%} (95% CI [{statistics.mean(diff) - half:+.2%}, "
              f"{statistics.mean(diff) + half:+.2%}]); per seed {', '.join(f'{d:+.2%}' for d in diff)}")


if __name__ == "__main__":
    main()
