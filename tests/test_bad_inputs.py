"""The bad-input corpus: every case, across the command lines and the dataset readers, must end
with exit code 2 and one `error: ...` line on stderr that names the bad value, no traceback,
before anything expensive starts. Corrupt files are made here, from the tiny official-format
sets of `training.fake_data`."""
from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from clitest import assert_one_line

from analysis import report, retrain
from tools import heads_bench as bench
from tools import train_bench
from training import fake_data, many_classes, train
from tuning import search

from test_trust import Crafted  # a pickle that writes a marker file when loaded

CLIS = {"train": train.main, "search": search.main, "retrain": retrain.main, "report": report.main,
        "tools.heads_bench": bench.main, "tools.train_bench": train_bench.main, "many_classes": many_classes.main}
SMOKE = ["--space", "smoke", "--no-dashboard"]


# ----------------------------------------------------------------------------- corrupt files
def _cifar(root: Path) -> Path:
    fake_data.write_cifar100(root)
    return root / "cifar-100-python"


def _dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _load(path: Path) -> dict:
    return pickle.loads(path.read_bytes())


def truncated_train(root):
    f = _cifar(root) / "train"
    f.write_bytes(f.read_bytes()[:1000])
    return "cifar100", "cifar-100-python/train: not a readable"


def meta_without_keys(root):
    _dump(_cifar(root) / "meta", {b"something": [b"else"]})
    return "cifar100", "cifar-100-python/meta: not a readable CIFAR meta file (key fine_label_names)"


def labels_out_of_range(root):
    f = _cifar(root) / "train"
    d = _load(f)
    d[b"fine_labels"] = [0] * (len(d[b"fine_labels"]) - 1) + [100]
    _dump(f, d)
    return "cifar100", "cifar-100-python/train: labels must be in [0, 100); found 0..100"


def images_and_labels_differ(root):
    f = _cifar(root) / "test"
    d = _load(f)
    d[b"fine_labels"] = d[b"fine_labels"][:-3]
    _dump(f, d)
    return "cifar100", "images but"


def not_a_dict(root):
    _dump(_cifar(root) / "train", [1, 2, 3])
    return "cifar100", "cifar-100-python/train: holds a list"


def crafted_pickle(root):
    _dump(_cifar(root) / "meta", Crafted(root / "marker"))
    return "cifar100", ("cifar-100-python/meta: not a readable pickle of numpy arrays (UnpicklingError: refusing "
                        "to load global")


def no_coarse_labels(root):
    f = _cifar(root) / "train"
    d = _load(f)
    del d[b"coarse_labels"]
    _dump(f, d)
    return "cifar100", "no coarse_labels"


def cifar10_truncated_meta(root):
    fake_data.write_cifar10(root)
    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(b"\x80\x02}q")
    return "cifar10", "batches.meta: not a readable"


def fashion_truncated_gz(root):
    out = fake_data.write_fashion_mnist(root)
    f = out / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:200])
    return "fashion_mnist", "train-images-idx3-ubyte.gz: not a readable gzipped idx file"


def fashion_not_gzip(root):
    out = fake_data.write_fashion_mnist(root)
    (out / "t10k-labels-idx1-ubyte.gz").write_bytes(b"plain text, not gzip")
    return "fashion_mnist", "t10k-labels-idx1-ubyte.gz: not a readable gzipped idx file"


def fashion_wrong_magic(root):
    out = fake_data.write_fashion_mnist(root)
    with gzip.open(out / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    return "fashion_mnist", "train-labels-idx1-ubyte.gz is not a uint8 idx file"


def fashion_labels_short(root):
    out = fake_data.write_fashion_mnist(root)
    fake_data._write_idx(out / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    return "fashion_mnist", "train-labels-idx1-ubyte.gz: 200 images but 7 labels"


def fashion_label_11(root):
    out = fake_data.write_fashion_mnist(root)
    fake_data._write_idx(out / "t10k-labels-idx1-ubyte.gz", np.full(50, 11, np.uint8))
    return "fashion_mnist", "labels must be in [0, 10); found 11..11"


def broken_image(root):
    fake_data.write_imagefolder(root / "set")
    bad = next((root / "set" / "train" / "c1").glob("*.png"))
    bad.write_bytes(b"not a png")
    return f"imagefolder:{root / 'set'}", f"{bad.name}: not a readable image"


def classes_differ(root):
    fake_data.write_imagefolder(root / "set")
    shutil.move(root / "set" / "test" / "c3", root / "set" / "test" / "c9")
    return f"imagefolder:{root / 'set'}", "only in train/: ['c3'], only in test/: ['c9']"


def no_test_folder(root):
    fake_data.write_imagefolder(root / "set")
    shutil.rmtree(root / "set" / "test")
    return f"imagefolder:{root / 'set'}", "needs sub-folders train/ and test/"


def empty_imagefolder(root):
    (root / "set" / "train" / "a").mkdir(parents=True)
    (root / "set" / "test" / "a").mkdir(parents=True)
    return f"imagefolder:{root / 'set'}", "holds no images"


def bad_declaration(root):
    fake_data.write_imagefolder(root / "set")
    (root / "set" / "headsweep.json").write_text('{"flip": "sometimes"}')
    return f"imagefolder:{root / 'set'}", "flip='sometimes' is not allowed"


CORRUPT = [truncated_train, meta_without_keys, labels_out_of_range, images_and_labels_differ, not_a_dict,
           crafted_pickle, no_coarse_labels, cifar10_truncated_meta, fashion_truncated_gz, fashion_not_gzip,
           fashion_wrong_magic, fashion_labels_short, fashion_label_11, broken_image, classes_differ,
           no_test_folder, empty_imagefolder, bad_declaration]


# ----------------------------------------------------------------------------- command lines
def _experiment(root: Path) -> Path:
    """A minimal experiment folder: what Experiment.open accepts (no trial)."""
    exp = root / "exp"
    exp.mkdir()
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    (exp / "spec.json").write_text(json.dumps({"settings": {"cpus_per_trial": 1}}))
    return exp


def _saved(root: Path, argv: list[str] | None = ["--space", "smoke", "--set", "epochs=2"]) -> Path:
    """An experiment's storage whose `e` has only spec.json, recording the command line `argv`."""
    (root / "e").mkdir()
    (root / "e" / "spec.json").write_text(json.dumps({"argv": argv} if argv is not None else {}))
    return root


def _ray_saved(root: Path) -> Path:
    """`_saved`, plus a tuner.pkl as Ray writes it (here: one that would run code), no manifest."""
    _saved(root)
    (root / "e" / "tuner.pkl").write_bytes(pickle.dumps(Crafted(root / "marker")))
    return root


def _file(root: Path) -> Path:
    (root / "afile").write_text("x")
    return root / "afile"


COMMANDS = [  # (cli, argv (a function of the tmp folder), the text the one line must contain)
    ("train", lambda t: ["--device", "tpu"], "'device'='tpu' is out of range: must be auto, cpu, cuda or cuda:N"),
    ("train", lambda t: ["--smoke", "--epochs", "-3"], "'epochs'=-3 is out of range"),
    ("train", lambda t: ["--smoke", "--epochs", "3"], "--smoke runs 1 epoch of generated CIFAR-100 data, which "
                                                      "contradicts --epochs"),
    ("train", lambda t: ["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    ("train", lambda t: ["--nosuch"], "unrecognized arguments: --nosuch"),
    ("train", lambda t: ["--smoke", "--head", "hierarchical", "--head-opt", "num_groups=0", "--head-opt",
                         "tree=balanced"], "num_groups=0 must be in [1, num_classes=100]"),
    ("train", lambda t: ["--data-dir", str(fake_data.write_cifar100(t).parent), "--no-download", "--batch-size",
                         "2000", "--epochs", "1"], "batch_size=2000 is more than the 900 training images"),
    ("train", lambda t: ["--smoke", "--train-limit", "40"], "train_limit=40 is fewer than the 100 classes"),
    ("train", lambda t: ["--smoke", "--head", "hierarchical", "--head-opt", "num_groups=5"],
     "num_groups=5 sets the balanced tree's size, but this head uses the dataset's hierarchy"),
    ("train", lambda t: ["--dataset", "imagefolder"],
     "'dataset'='imagefolder' is out of range: must be imagefolder:PATH"),
    ("train", lambda t: ["--dataset", f"imagefolder:{t}/nothing"], "/nothing needs sub-folders train/ and test/"),
    ("train", lambda t: ["--dataset", "mnist"], "unknown dataset 'mnist'"),
    ("train", lambda t: ["--lr", "-1", "--smoke"], "'lr'=-1.0 is out of range: must be > 0"),
    ("train", lambda t: ["--smoke", "--head", "adaptive", "--head-opt", "cutoffs=[500]"], "cutoffs=[500]"),
    ("train", lambda t: ["--smoke", "--model-opt", "nosuch=1"], "nosuch"),
    ("train", lambda t: ["--smoke", "--head-opt", "novalue"], "malformed assignment 'novalue'"),
    ("train", lambda t: ["--smoke", "--hierarchy-file", str(_file(t))], "not valid JSON"),
    ("search", lambda t: SMOKE + ["--cpus-per-trial", "64"], "cpus_per_trial=64 is more than the"),
    ("search", lambda t: SMOKE + ["--set", "epochs=1", "--set", "grace_period=2"],
     "grace_period=2 is more than the 1 epochs a trial runs"),
    ("search", lambda t: SMOKE + ["--set", "metric=nosuch"], "metric='nosuch' is not one of the reported metrics"),
    ("search", lambda t: SMOKE + ["--storage", str(_file(t))], "is a file; it must be a folder"),
    ("search", lambda t: SMOKE + ["--dry-run", "-1"], "--dry-run=-1 must be >= 1"),
    ("search", lambda t: SMOKE + ["--gpus-per-trial", "1"], "--gpus-per-trial=1.0 is more than there are (0 GPUs)"),
    ("search", lambda t: SMOKE + ["--num-samples", "0"], "num_samples=0 must be an integer >= 1"),
    ("search", lambda t: SMOKE + ["--set", "reduction_factor=1"], "reduction_factor=1 must be >= 2"),
    ("search", lambda t: ["--space", "nosuch"], "unknown space 'nosuch'"),
    ("search", lambda t: SMOKE + ["--set", "lr=-1"], "'lr'=-1 is out of range"),
    ("search", lambda t: SMOKE + ["--name", "x", "--storage", str(t), "--resume"], "--resume: no experiment at"),
    ("search", lambda t: SMOKE + ["--budget", "some"], "argument --budget: invalid choice: 'some'"),
    ("search", lambda t: ["--storage", str(t)], "--space is required (one of: all_heads,"),
    ("search", lambda t: ["--resume", "--storage", str(t)], "--resume needs --name"),
    ("search", lambda t: ["--storage", str(_saved(t)), "--name", "e", "--resume", "--set", "epochs=3"],
     "--resume continues the search spec.json defines: overrides=['epochs=3'] differs from its ['epochs=2']"),
    ("search", lambda t: ["--storage", str(_saved(t)), "--name", "e", "--resume", "--space", "vit_heads"],
     "space='vit_heads' differs from its 'smoke'"),
    ("search", lambda t: ["--storage", str(_saved(t, None)), "--name", "e", "--resume"],
     "spec.json is missing or records no argv"),
    ("search", lambda t: SMOKE + ["--callback", "comet"], "argument --callback: invalid choice: 'comet'"),
    ("search", lambda t: SMOKE + ["-q", "-v"], "argument -v/--verbose: not allowed with argument -q/--quiet"),
    ("search", lambda t: SMOKE + ["--trust-state"], "--trust-state applies to --resume only"),
    ("search", lambda t: ["--storage", str(_ray_saved(t)), "--name", "e", "--resume"],
     "headsweep-manifest.json is missing: this experiment's resume state was not recorded by headsweep"),
    ("retrain", lambda t: [str(_experiment(t)), "--gpus-per-task", "1"],
     "--gpus-per-task=1.0 is more than there are (0 GPUs)"),
    ("retrain", lambda t: [str(_experiment(t)), "--cpus-per-task", "64"], "--cpus-per-task=64 is more than the"),
    ("retrain", lambda t: [str(_experiment(t)), "--top-k", "0"], "--top-k=0 must be >= 1"),
    ("retrain", lambda t: [str(t / "nothing")], "is not a headsweep experiment"),
    ("report", lambda t: [str(t)], "is not a headsweep experiment"),
    ("report", lambda t: ["s3://bucket/exp"], "analysis reads an experiment folder on this machine"),
    ("tools.heads_bench", lambda t: ["--classes", "1"], "--classes [1] must all be >= 2"),
    ("tools.heads_bench", lambda t: ["--classes", "ten"], "--classes='ten': expected comma-separated integers"),
    ("tools.heads_bench", lambda t: ["--heads", "nope"], "unknown head 'nope'"),
    ("tools.heads_bench", lambda t: ["--device", "tpu"], "--device='tpu': expected cpu or cuda"),
    ("tools.train_bench", lambda t: ["--steps", "0"], "--steps=0 must be >= 1"),
    ("tools.train_bench", lambda t: ["--variants", "recipe,fast"], "--variants: 'fast' is not one of recipe, device_loader"),
    ("tools.train_bench", lambda t: ["--arch", "resnet1000"], "resnet1000"),
    ("tools.train_bench", lambda t: ["--peak-tflops", "-1"], "--peak-tflops=-1.0 must be > 0"),
    ("many_classes", lambda t: ["--data-dir", str(t), "--out", str(t / "o"), "--rotations", "5"], "rotations"),
]


@pytest.mark.parametrize("cli,argv,expected", COMMANDS,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(COMMANDS)])
def test_a_bad_command_line_is_one_line_and_exit_2(cli, argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing an accident writes lands in the checkout
    code = CLIS[cli](argv(tmp_path))
    assert_one_line(code, capsys.readouterr().err, expected)


@pytest.mark.parametrize("make", CORRUPT, ids=[f.__name__ for f in CORRUPT])
def test_a_corrupt_dataset_file_is_named_in_one_line(make, tmp_path, capsys):
    dataset, expected = make(tmp_path)
    code = train.main(["--dataset", dataset, "--data-dir", str(tmp_path), "--no-download", "--epochs", "1",
                       "--device", "cpu"])
    assert_one_line(code, capsys.readouterr().err, expected)
    assert not (tmp_path / "marker").exists()


def test_a_tracker_without_its_package_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = search.main(SMOKE + ["--storage", str(tmp_path), "--callback", "wandb"])
    assert_one_line(code, capsys.readouterr().err, "--callback wandb needs the wandb package: pip install wandb")


def test_an_mlflow_store_that_does_not_open_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")  # MLflow 3 refuses a folder store
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    code = search.main(SMOKE + ["--storage", str(tmp_path), "--callback", "mlflow"])
    assert_one_line(code, capsys.readouterr().err, f"--callback mlflow: tracking URI file://{tmp_path}/mlruns "
                                                    "does not open")
    assert [f.name for f in tmp_path.iterdir()] == ["mlruns"] or not list(tmp_path.iterdir())  # no experiment


def test_the_corpus_is_big_enough():
    assert len(COMMANDS) + len(CORRUPT) >= 40
