import json
import subprocess
import sys

import pytest
from clitest import assert_one_line

import models
from training import train
from training.config import parse_assignment


def test_smoke_run_prints_epochs_and_summary(capsys, tmp_path):
    assert train.main(["--smoke", "--summary-json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "epoch   1  train_loss" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "completed" and 0 <= summary["test_acc"] <= 1 and summary["epoch_time_s_mean"] > 0
    assert json.loads((tmp_path / "s.json").read_text())["test_acc"] == summary["test_acc"]


def test_head_options_reach_the_head(capsys):
    assert train.main(["--smoke", "--head", "adaptive", "--head-opt", "cutoffs=[10,50]", "--head-opt",
                       "div_value=2.0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["config"]["head_cutoffs"] == [10, 50]


@pytest.mark.parametrize("text,value", [("dense=true", True), ("dense=False", False), ("act=relu", "relu"),
                                        ("widths=[32,64]", [32, 64])])
def test_an_assignment_reads_booleans_as_the_command_line_writes_them(text, value):
    assert parse_assignment(text) == (text.split("=")[0], value)


@pytest.mark.parametrize("argv,message", [
    (["--arch", "nope"], f"unknown model 'nope'; valid models: {', '.join(models.list_models())}"),
    (["--head", "nope"], "unknown head 'nope'; valid heads: adaptive"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid datasets: cifar10, cifar100"),
    (["--val-fraction", "1.0"], "'val_fraction'=1.0 is out of range: must be in (0, 1)"),
    (["--batch-size", "0"], "'batch_size'=0 is out of range: must be >= 1"),
    (["--head-opt", "tau"], "malformed assignment 'tau': expected KEY=VALUE"),
])
def test_bad_input_exits_2_with_message(capsys, argv, message, tmp_path):
    code = train.main(argv + ["--data-dir", str(tmp_path), "--no-download"])
    assert_one_line(code, capsys.readouterr().err, message.rstrip("\n"))


def test_missing_data_offline(capsys, tmp_path):
    assert train.main(["--data-dir", str(tmp_path), "--no-download"]) == 2
    assert "CIFAR-100 files are missing" in capsys.readouterr().err


@pytest.mark.slow
def test_help_shows_units():
    out = subprocess.run([sys.executable, "-m", "training.train", "--help"], capture_output=True, text=True).stdout
    assert "images per optimizer step" in out and "--head-opt KEY=VALUE" in out
