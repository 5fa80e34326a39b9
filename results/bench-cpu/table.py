"""The README's fp32 / bf16 table from the train_bench.csv files of run.sh and run-nhwc.sh."""
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent


def cell(df: pd.DataFrame, variant: str) -> str:
    row = df[df["variant"] == variant]
    if not len(row):
        return "-"
    r = row.iloc[0]
    return f"{r['images_per_s']:.0f} ({r['spread']}), MFU {r['mfu']:.2f}"


def main() -> None:
    print("| backbone (GFLOP/img, batch) | fp32 NCHW | bf16 NCHW | bf16 / fp32 | fp32 NHWC | bf16 NHWC | bf16 / fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arch in ("cnn_base", "cnn_bn4", "airnet", "resnet18", "vit_tiny", "efficientnet_b0"):
        f = HERE / arch / "train_bench.csv"
        if not f.exists():
            continue
        df = pd.read_csv(f)
        nhwc_f = HERE / "nhwc" / arch / "train_bench.csv"
        nhwc = pd.read_csv(nhwc_f) if nhwc_f.exists() else df.iloc[:0]
        ips = lambda d, v: float(d.loc[d["variant"] == v, "images_per_s"].iloc[0])  # noqa: E731
        ratio = f"{ips(df, 'bf16') / ips(df, 'device_loader'):.2f}x"
        ratio_nhwc = f"{ips(nhwc, 'channels_last') / ips(nhwc, 'fp32_channels_last'):.2f}x" if len(nhwc) else "-"
        print(f"| {arch} ({df['gflops_per_image'].iloc[0]:.3g}) | {cell(df, 'device_loader')} | {cell(df, 'bf16')} | "
              f"{ratio} | {cell(nhwc, 'fp32_channels_last')} | {cell(nhwc, 'channels_last') if len(nhwc) else cell(df, 'channels_last')} | {ratio_nhwc} |")


if __name__ == "__main__":
    main()
