"""tools.train_bench: whole training steps per variant, FLOPs and MFU, at tiny size on CPU; CUDA where there is one."""
import os

import pandas as pd
import pytest
import torch

from tools import _train_bench as bench
from tools import train_bench as cli
from training import data, engine, fake_data
from training.config import TrainConfig


def _split(tmp_path):
    fake_data.write_cifar100(tmp_path)
    return data.split_train_val(data.load_dataset("cifar100", tmp_path, download=False), 0.1, 0)


@pytest.mark.parametrize("fast", [True, False], ids=["bf16 cpu", "no bf16 cpu"])
def test_the_benchmark_runs_every_cpu_variant_and_writes_its_table(tmp_path, capsys, monkeypatch, fast):
    monkeypatch.setattr(engine, "cpu_has_fast_bf16", lambda: fast)
    argv = ["--fake-data", "--batch-size", "16", "--steps", "2", "--repeats", "2", "--warmup", "1", "--workers", "0",
            "--variants", "recipe,device_loader,bf16,channels_last", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "MFU against the measured matmul rate, fp32 " in out and " / bf16 " in out
    df = pd.read_csv(tmp_path / "train_bench.csv")
    if fast:
        assert list(df["variant"]) == ["recipe", "device_loader", "bf16", "channels_last"]
        assert list(df["precision"]) == ["fp32", "fp32", "bf16", "bf16"]
    else:
        assert "bf16: skipped, this CPU has no AMX / AVX512-BF16" in out
        assert list(df["variant"]) == ["recipe", "device_loader", "channels_last"]
        assert list(df["precision"]) == ["fp32", "fp32", "fp32"]
    assert (df["images_per_s"] > 0).all() and df.loc[0, "vs_recipe"] == pytest.approx(1.0)
    shares = df[[f"{p}_share" for p in bench.PHASES]].sum(axis=1)
    assert shares.to_numpy() == pytest.approx([1.0] * len(df))
    # MFU against one measured rate per precision; not "< 1": the rate measured on a loaded machine can be
    # lower than the steps' own (a speed fact, which belongs in a benchmark, not a test)
    assert (df["mfu"] > 0).all()
    rates = df["images_per_s"] * df["gflops_per_image"] * 1e9 / df["mfu"]
    for _, same in rates.groupby(df["precision"]):
        assert same.to_numpy() == pytest.approx([same.iloc[0]] * len(same), rel=1e-9)
    assert df["gflops_per_image"].nunique() == 1 and df.loc[0, "gflops_per_image"] > 0


def test_resnet18_training_flops_match_the_hand_count(tmp_path):
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool) at 32x32: 555.4 M multiply-adds in its
    convolutions (conv1 1.77 M, layer1 4 x 37.7 M, layers 2-4 each 18.9 + 3 x 37.7 + 2.1 M), the
    softmax head 512 x 100; a training step is forward + backward = 3 x forward, 2 FLOPs a multiply-add."""
    split = _split(tmp_path)
    run = engine.build_run(TrainConfig.from_dict(dict(arch="resnet18", batch_size=4, device="cpu")), split)
    x, y = next(iter(run.train_loader))
    hand = 3 * 2 * (555_417_600 + 512 * 100)
    assert bench.train_flops_per_image(run, x, y) == pytest.approx(hand, rel=0.05)


def test_gpu_peaks_are_read_from_the_device_name():
    assert bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.gpu_peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    assert bench.gpu_peak_tflops("Some New GPU") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the accelerator machine runs it")
def test_cuda_paths_train_and_benchmark(tmp_path):
    """bf16 autocast, channels_last, torch.compile and the device-resident loader on a GPU."""
    split = _split(tmp_path)
    cfg = TrainConfig.from_dict(dict(arch="cnn_base", batch_size=32, epochs=2, device="cuda", amp="bf16",
                                     channels_last=True, compile=True))
    result = engine.fit(cfg, split)
    assert result.status == "completed" and len(result.history) == 2
    assert result.trained.device.type == "cuda"
    argv = ["--fake-data", "--device", "cuda", "--batch-size", "32", "--steps", "3", "--repeats", "1",
            "--workers", "0", "--out", str(tmp_path / "b")]
    assert cli.main(argv) == 0
    df = pd.read_csv(tmp_path / "b" / "train_bench.csv")
    assert list(df["variant"]) == list(bench.VARIANTS) and (df["mfu"] > 0).all()


@pytest.mark.slow
def test_packed_trials_run_at_once_and_are_both_reported(tmp_path, capsys):
    argv = ["--fake-data", "--batch-size", "16", "--steps", "3", "--repeats", "1", "--warmup", "1", "--trials", "2",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    df = pd.read_csv(tmp_path / "pack_bench.csv")
    assert list(df["trials"]) == [1, 2, 2] and (df["images_per_s"] > 0).all()
    both = df[df["trials"] == 2]
    assert both["start"].max() < both["end"].min()  # their time windows overlap: they ran at once
    assert list(both["threads"]) == [max(1, (os.cpu_count() or 1) // 2)] * 2  # each on its own CPU share
    out = capsys.readouterr().out
    assert "2 trial(s) at once: " in out and "x one trial" in out and "WARNING" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_check_refuses_to_start_without_cuda(capsys, tmp_path):
    from clitest import assert_one_line
    from tools import gpu_check

    assert_one_line(gpu_check.main(["--out", str(tmp_path / "g")]), capsys.readouterr().err,
                    "the GPU check needs CUDA, and this machine has none")
    assert not (tmp_path / "g").exists()  # refused before anything is written


def test_the_gpu_check_plan_covers_what_the_issue_asks_within_its_budget(tmp_path):
    from tools import gpu_check

    plan = gpu_check.steps(tmp_path)
    names = [name for name, _, _ in plan]
    assert names == ["cuda", "bench_resnet18", "bench_vit_tiny", "bench_airnet", "pack_2", "pack_4", "search"]
    assert sum(seconds for _, _, seconds in plan) <= 8 * 60
    search = plan[-1][1]
    assert search[search.index("--gpus-per-trial") + 1] == "0.25" and {"num_samples=8", "epochs=2"} <= set(search)


def test_the_fp32_channels_last_variant_is_channels_last_without_bf16():
    v = bench.variant("fp32_channels_last")
    assert (v.precision, v.channels_last, v.compile, v.torchvision) == ("fp32", True, False, False)
    assert bench.variant("channels_last").precision == "bf16" and bench.variant("channels_last", False).precision == "fp32"
