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

from analysis import report, retrain, study
from tools import heads_bench as bench
from tools import train_bench
from training import fake_data, many_classes, train
from tuning import search

from test_trust import Crafted  # a pickle that writes a marker file when loaded

CLIS = {"train": train.main, "search": search.main, "retrain": retrain.main, "report": report.main,
        "tools.heads_bench": bench.main, "tools.train_bench": train_bench.main, "many_classes": many_classes.main,
        "study": study.main}
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


def _folder_set(root: Path) -> Path:
    fake_data.write_imagefolder(root / "set")
    return root / "set"


def declaration_is_a_list(root):
    (_folder_set(root) / "headsweep.json").write_text("[1, 2]")
    return f"imagefolder:{root / 'set'}", "headsweep.json holds list; it must be a JSON object"


def declaration_is_null(root):
    (_folder_set(root) / "headsweep.json").write_text("null")
    return f"imagefolder:{root / 'set'}", "headsweep.json holds null; it must be a JSON object"


def declaration_is_a_folder(root):
    (_folder_set(root) / "headsweep.json").mkdir()
    return f"imagefolder:{root / 'set'}", "headsweep.json is a folder; it must be a JSON file"


def declaration_is_not_text(root):
    (_folder_set(root) / "headsweep.json").write_bytes(b"\xff\xfe{")
    return f"imagefolder:{root / 'set'}", "headsweep.json is not valid JSON ('utf-8' codec can't decode"


def huge_image(root):
    from PIL import Image

    cls = sorted((_folder_set(root) / "train").iterdir())[0]
    Image.new("1", (14000, 14000)).save(cls / "huge.png")  # 196 Mpixel, a few kB on disk
    return f"imagefolder:{root / 'set'}", "huge.png: too large to decode (Image size (196000000 pixels) exceeds"


def class_without_training_images(root):
    s = _folder_set(root)
    (s / "train" / "zzz").mkdir()
    (s / "test" / "zzz").mkdir()
    shutil.copy(next((s / "test" / "c0").iterdir()), s / "test" / "zzz" / "a.png")
    return f"imagefolder:{root / 'set'}", "every class needs at least 2 images (one may go to validation); 1 have " \
                                          "fewer: zzz (0)"


def one_image_class(root):
    cls = _folder_set(root) / "train" / "c0"
    for f in sorted(cls.iterdir())[1:]:
        f.unlink()
    return f"imagefolder:{root / 'set'}", "every class needs at least 2 images (one may go to validation); 1 have " \
                                          "fewer: c0 (1)"


def class_name_not_utf8(root):
    import os

    s = _folder_set(root)
    for part in ("train", "test"):
        os.rename(bytes(s / part / "c0"), bytes(s / part) + b"/\xff\xfe")
    return f"imagefolder:{root / 'set'}", "the folder name '\\xff\\xfe' is not UTF-8"


CORRUPT = [declaration_is_a_list, declaration_is_null, declaration_is_a_folder, declaration_is_not_text, huge_image,
           class_without_training_images, one_image_class, class_name_not_utf8,
           truncated_train, meta_without_keys, labels_out_of_range, images_and_labels_differ, not_a_dict,
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


def _space_file(root: Path, text: str) -> str:
    (root / "space.py").write_text(text)
    return str(root / "space.py")


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
    ("search", lambda t: ["--storage", str(t)], "--space is required (one of: airnet_heads, all_heads,"),
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
    # paths: escape from --storage, a folder where a file belongs, a file in the way
    ("search", lambda t: SMOKE + ["--name", "../../x"], "--name='../../x': use letters, digits"),
    ("search", lambda t: SMOKE + ["--name", "/abs/x"], "--name='/abs/x': use letters, digits"),
    ("search", lambda t: SMOKE + ["--name", "ünï"], "--name='ünï': use letters, digits"),
    ("search", lambda t: SMOKE + ["--hierarchy-file", str(t)], "is a folder; it must be a file"),
    ("search", lambda t: SMOKE + ["--storage", str(_file(t) / "sub")], "afile is a file, so nothing can be made in it"),
    ("train", lambda t: ["--smoke", "--hierarchy-file", str(t)], "is a folder; it must be a file"),
    ("train", lambda t: ["--smoke", "--summary-json", str(t)], "--summary-json " + "{}: is a folder"),
    ("train", lambda t: ["--smoke", "--summary-json", str(_file(t) / "s.json")], "afile is a file, so nothing can be made"),
    ("retrain", lambda t: [str(_experiment(t)), "--out", str(_file(t))], "--out {}/afile: is a file"),
    ("tools.heads_bench", lambda t: ["--out", str(_file(t))], "--out {}/afile: is a file"),
    ("study", lambda t: ["--scale", "tiny", "--work", str(_file(t))], "--work {}/afile: is a file"),
    ("study", lambda t: ["--scale", "tiny", "--work", str(t / "w"), "--out", str(_file(t))], "--out {}/afile: is a"),
    # addresses that would hang: nothing listens there, a host that does not resolve
    ("search", lambda t: SMOKE + ["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nothing answers there"),
    ("retrain", lambda t: [str(_experiment(t)), "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nothing answers"),
    ("search", lambda t: ["--space", "smoke", "--storage", str(t), "--dashboard-host", "nosuch.invalid"],
     "--dashboard-host nosuch.invalid: the name does not resolve"),
    # values that would allocate terabytes, loop forever or run as something else
    ("search", lambda t: SMOKE + ["--image-size", "100000"], "'image_size'=100000 is out of range: must be <= 1024"),
    ("search", lambda t: SMOKE + ["--set", "crop_pad=100000"], "'crop_pad'=100000 is out of range: must be <= image_size"),
    ("search", lambda t: SMOKE + ["--set", "model_widths=[0,8]"], "widths=[0, 8]: every entry must be in 1..8192"),
    ("search", lambda t: SMOKE + ["--set", "warmup_epochs=inf"], "'warmup_epochs'='inf'"),
    ("search", lambda t: SMOKE + ["--set", "cpus_per_trial=nan"], "cpus_per_trial='nan' must be a finite number"),
    ("search", lambda t: SMOKE + ["--set", "max_failures=-1"], "max_failures=-1 must be an integer from 0 to 10"),
    ("search", lambda t: SMOKE + ["--set", "sampler=grid"], "sampler='grid' must be one of ['tpe', 'random']"),
    ("search", lambda t: SMOKE + ["--set", "pad_mode=wrap"], "'pad_mode'='wrap' is out of range"),
    ("train", lambda t: ["--smoke", "--warmup-epochs", "inf"], "'warmup_epochs'=inf is out of range: must be a finite"),
    ("train", lambda t: ["--smoke", "--lr", "nan"], "'lr'=nan is out of range: must be a finite number"),
    ("train", lambda t: ["--smoke", "--weight-decay", "inf"], "'weight_decay'=inf is out of range"),
    ("train", lambda t: ["--smoke", "--image-size", "100000"], "'image_size'=100000 is out of range"),
    ("train", lambda t: ["--smoke", "--crop-pad", "100000"], "'crop_pad'=100000 is out of range"),
    ("train", lambda t: ["--smoke", "--arch", "cnn", "--model-opt", "widths=[0,8]"], "every entry must be in 1..8192"),
    ("tools.heads_bench", lambda t: ["--classes", "1000000000000"], "--classes 1000000000000 with --dim 512 and "
                                                                   "--batch 256 needs ~"),
    ("tools.heads_bench", lambda t: ["--min-time", "nan"], "--min-time=nan must be a number of seconds in (0, 3600)"),
    # a space of your own in a file (--space path/to/file.py:function)
    ("search", lambda t: ["--space", f"{t}/none.py:f"], "none.py:f: no such file"),
    ("search", lambda t: ["--space", f"{_space_file(t, 'def f(:')}:f"], "space.py:1: SyntaxError"),
    ("search", lambda t: ["--space", f"{_space_file(t, 'import nosuchmodule')}:f"],
     "raised ModuleNotFoundError: No module named 'nosuchmodule' (line 1)"),
    ("search", lambda t: ["--space", f"{_space_file(t, 'def g(): pass')}:f"], "has no function 'f'; it defines ['g']"),
    ("search", lambda t: ["--space", f"{_space_file(t, 'def f(trial): pass')}:f"],
     "f() must take no arguments and return a search_spaces.Space; it takes ['trial']"),
    ("search", lambda t: ["--space", f"{_space_file(t, 'def f(): return 3')}:f"],
     "f() returned int; it must return a search_spaces.Space"),
    ("search", lambda t: ["--space", _space_file(t, "from search_spaces import Space\n"
                                                    "def f(): return Space('x', lambda trial, a, h: None, ('resnet9',))")
                          + ":f"], "unknown model 'resnet9'"),
]


@pytest.mark.parametrize("cli,argv,expected", COMMANDS,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(COMMANDS)])
def test_a_bad_command_line_is_one_line_and_exit_2(cli, argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing an accident writes lands in the checkout
    code = CLIS[cli](argv(tmp_path))
    assert_one_line(code, capsys.readouterr().err, expected.replace("{}", str(tmp_path)))


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


def test_a_16_bit_image_keeps_its_range(tmp_path):
    """PIL's convert('RGB') clips 16-bit gray to white; the reader scales it to 8 bits instead."""
    from PIL import Image

    from training.imagefolder import _decode

    path = tmp_path / "ramp16.png"
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # a 16-bit PNG, as PIL opens it
    out = _decode(path, 8)
    assert out.dtype == np.uint8 and out.min() < 20 and out.max() > 235 and 100 < out.mean() < 155


def test_the_corpus_is_big_enough():
    assert len(COMMANDS) + len(CORRUPT) >= 110
