"""Datasets as in-memory uint8 arrays (N, C, H, W) with labels, class names and,
where the dataset has one, a two-level class hierarchy (or one given by a mapping file).

Readers take the official on-disk formats (CIFAR python pickles, Fashion-MNIST idx
files, an ImageFolder tree: training/imagefolder.py). Missing official files are downloaded (md5 checked)
when the network is reachable; offline the error says which files to put where.
Pickles are read with a restricted unpickler: a crafted file cannot run code.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import os
import pickle
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.cli import check_in_file
from common.registry import Registry
from training.config import TrainConfig
from training.imagefolder import read as read_image_folder
from training.fake_data import write_all

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

# Official archives; used only when the files are missing and the network answers.
_CIFAR100_URL = ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")
_CIFAR10_URL = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
_FASHION_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# md5 of the official train/test files, as torchvision lists them: a copy whose sums differ holds
# another split, and results on it compare with published ones only approximately.
_OFFICIAL_SPLIT = {
    "cifar100": {"cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
                 "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
    "cifar10": {"cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e"},
    "fashion_mnist": {f"fashion-mnist/{f}": md5 for f, md5 in _FASHION_FILES.items()},
}
FASHION_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are absent and could not be downloaded."""


class CorruptDataError(ValueError):
    """A dataset file is there but cannot be what it should be: the message names the file."""


@contextlib.contextmanager
def reading(path: Path, what: str):
    """Any failure while reading `path` as `what` becomes one CorruptDataError naming the file."""
    try:
        yield
    except (CorruptDataError, DataNotFoundError):
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CorruptDataError(f"{path}: not a readable {what} ({type(exc).__name__}: {reason}); "
                               "replace it with the official file") from None


def check_labels(path: Path, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    if len(x) != len(y):
        raise CorruptDataError(f"{path}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise CorruptDataError(f"{path}: labels must be in [0, {num_classes}); found {y.min()}..{y.max()}")


@dataclass
class Dataset:
    """Train and test images as uint8 (N, C, H, W); labels int64; optional superclasses."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    class_to_group: np.ndarray | None = None  # fine class -> superclass id, (C,)
    group_names: list[str] | None = None
    augment: dict = field(default_factory=dict)  # the set's own defaults: flip (bool), pad_mode (str)

    def metadata(self) -> "Dataset":
        """A copy without the images (labels and names kept): what a Split carries along."""
        return dataclasses.replace(self, x_train=self.x_train[:0], x_test=self.x_test[:0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def img_size(self) -> int:
        return int(self.x_train.shape[2])


@dataclass
class Split:
    """Arrays for one run: train, validation (held out of train) and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    dataset: Dataset


def load_dataset(name: str, data_dir: str | Path, download: bool = True, image_size: int = 32) -> Dataset:
    """`cifar100`, `cifar10`, `fashion_mnist` or `imagefolder:PATH` (PATH has train/ and test/;
    its images are resized to `image_size`)."""
    if name.startswith("imagefolder"):
        folder = name.split(":", 1)[1] if ":" in name else ""
        if not folder:
            raise ValueError(f"dataset={name!r} needs its folder: imagefolder:PATH (PATH holds train/ and test/)")
        return DATASETS.get("imagefolder")(Path(folder).expanduser(), image_size=image_size)
    entry = DATASETS.get(name)
    if (Path(data_dir) / "train").is_dir() and any(p.is_dir() for p in (Path(data_dir) / "train").iterdir()):
        raise DataNotFoundError(f"--data-dir {data_dir} looks like an ImageFolder (train/<class>/...), not the "
                                f"official {name} files: pass --dataset imagefolder:{data_dir}")
    return entry(Path(data_dir), download=download)


def load_for(config: dict, data_dir: str | Path, fake: bool = False, download: bool = True) -> Dataset:
    """The dataset a trial config (or a space's constants) names, with its `image_size` and
    `hierarchy_file`: the files in `data_dir`, or, with `fake`, tiny generated data in the same
    format (deterministic, so a retrain regenerates the same)."""
    defaults = TrainConfig()
    name, size = config.get("dataset", defaults.dataset), config.get("image_size", defaults.image_size)
    if fake:
        with tempfile.TemporaryDirectory(prefix="headsweep-fake-") as tmp:
            write_all(Path(tmp))
            ds = load_dataset(name, tmp, download=False, image_size=size)
    else:
        ds = load_dataset(name, data_dir, download=download, image_size=size)
    return with_hierarchy(ds, config["hierarchy_file"]) if config.get("hierarchy_file") else ds


def with_hierarchy(ds: Dataset, path: str | Path) -> Dataset:
    """The dataset with the class -> group mapping of a JSON file `{"class name": "group name", ...}`."""
    try:
        mapping = json.loads(check_in_file(path, "hierarchy_file").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"hierarchy_file={path}: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"hierarchy_file={path}: expected an object {{class name: group name}}")
    missing, unknown = [c for c in ds.classes if c not in mapping], [c for c in mapping if c not in ds.classes]
    if missing or unknown:
        def few(names):
            return f"{names[:5]}{'...' if len(names) > 5 else ''}"

        raise ValueError(f"hierarchy_file={path} must name every class of {ds.name} once: missing {few(missing)}, "
                         f"unknown {few(unknown)}")
    groups = sorted(set(mapping.values()))
    return dataclasses.replace(ds, class_to_group=np.array([groups.index(mapping[c]) for c in ds.classes]),
                               group_names=groups)


def official_split(name: str, data_dir: str | Path) -> bool | None:
    """True when the files are the official ones (md5), False when they differ, None when the
    dataset has no official split (an ImageFolder)."""
    from torchvision.datasets.utils import check_integrity

    files = _OFFICIAL_SPLIT.get(name)
    return None if files is None else all(check_integrity(str(Path(data_dir) / f), md5) for f, md5 in files.items())


def list_datasets() -> list[str]:
    return [n if n != "imagefolder" else "imagefolder:PATH" for n in DATASETS.list()]


def split_train_val(ds: Dataset, val_fraction: float = 0.1, seed: int = 0,
                    train_limit: int | None = None) -> Split:
    """Stratified, seeded train/validation split; the test set is passed through untouched.

    `train_limit` keeps a stratified subset of the training part (quick runs).
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    idx = np.arange(len(ds.y_train))
    n_val = int(np.ceil(len(idx) * val_fraction))
    if n_val < ds.num_classes:
        raise ValueError(f"val_fraction={val_fraction} of {len(idx)} training images is {n_val} images, fewer than "
                         f"the {ds.num_classes} classes: a stratified validation split needs one per class; raise "
                         "val_fraction or add images")
    if train_limit is not None and train_limit < ds.num_classes:
        raise ValueError(f"train_limit={train_limit} is fewer than the {ds.num_classes} classes: a stratified subset "
                         "needs one image per class")
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=ds.y_train)
    if train_limit is not None and train_limit < len(tr):
        tr, _ = train_test_split(tr, train_size=train_limit, random_state=seed, stratify=ds.y_train[tr])
        n_val = max(int(round(len(tr) * val_fraction / (1 - val_fraction))), ds.num_classes)
        if n_val < len(va):
            va, _ = train_test_split(va, train_size=n_val, random_state=seed, stratify=ds.y_train[va])
    tr, va = np.sort(tr), np.sort(va)
    return Split(ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va], ds.x_test, ds.y_test, ds.metadata())


def full_train_split(ds: Dataset) -> Split:
    """All training images (train + validation) for a final retrain; no validation part."""
    return Split(ds.x_train, ds.y_train, ds.x_train[:0], ds.y_train[:0], ds.x_test, ds.y_test, ds.metadata())


# ---------------------------------------------------------------- restricted unpickling
class _RestrictedUnpickler(pickle.Unpickler):
    """Allows only the globals that the official CIFAR pickles reference (numpy arrays)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed in dataset pickles"
            )
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> dict:
    with reading(path, "pickle of numpy arrays"), open(path, "rb") as f:
        d = _RestrictedUnpickler(f, encoding="bytes").load()
    if not isinstance(d, dict):
        raise CorruptDataError(f"{path}: holds a {type(d).__name__}, not the dict of the official file")
    return d


# ---------------------------------------------------------------- downloading
def _fetch(url: str, md5: str, root: Path, extract: bool) -> None:
    """Download (and unpack) one official file; any network failure becomes OSError."""
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    root.mkdir(parents=True, exist_ok=True)
    if extract:
        download_and_extract_archive(url, str(root), md5=md5)
    else:
        download_url(url, str(root), md5=md5)


def _ensure(files: list[Path], what: str, fetch, download: bool) -> None:
    if all(f.is_file() for f in files):
        return
    if download:
        try:
            fetch()
        except Exception as exc:  # offline, DNS, HTTP error, md5 mismatch
            reason = f"download failed ({type(exc).__name__}: {exc})"
        else:
            if all(f.is_file() for f in files):
                return
            reason = "download did not produce them"
    else:
        reason = "downloading is off"
    missing = [f for f in files if not f.is_file()]
    folder = os.path.commonpath([str(f.parent) for f in missing])
    raise DataNotFoundError(f"{what} files are missing and {reason}: put the official "
                            f"{', '.join(os.path.relpath(f, folder) for f in missing)} in {folder}")


# ---------------------------------------------------------------- readers
def _read_cifar_batch(path: Path, label_key: bytes,
                      num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    d = safe_unpickle(path)
    with reading(path, f"CIFAR batch (keys data, {label_key.decode()})"):
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[label_key], dtype=np.int64)
        coarse = np.asarray(d[b"coarse_labels"], dtype=np.int64) if b"coarse_labels" in d else None
    check_labels(path, x, y, num_classes)
    return x, y, coarse


def _meta_names(path: Path, key: bytes) -> list[str]:
    d = safe_unpickle(path)
    with reading(path, f"CIFAR meta file (key {key.decode()})"):
        return _names(d[key])


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


@register_dataset
def cifar100(data_dir: Path, download: bool = True) -> Dataset:
    root = data_dir / "cifar-100-python"
    files = [root / "train", root / "test", root / "meta"]
    _ensure(files, "CIFAR-100", lambda: _fetch(*_CIFAR100_URL, data_dir, extract=True), download)
    classes = _meta_names(root / "meta", b"fine_label_names")
    x_tr, y_tr, c_tr = _read_cifar_batch(root / "train", b"fine_labels", len(classes))
    x_te, y_te, _ = _read_cifar_batch(root / "test", b"fine_labels", len(classes))
    if c_tr is None:
        raise CorruptDataError(f"{root / 'train'}: no coarse_labels, which the official CIFAR-100 file has")
    # Every fine class sits in exactly one superclass; read the map off the training labels.
    class_to_group = np.full(len(classes), -1, dtype=np.int64)
    class_to_group[y_tr] = c_tr
    return Dataset("cifar100", x_tr, y_tr, x_te, y_te, classes, class_to_group,
                   _meta_names(root / "meta", b"coarse_label_names"))


@register_dataset
def cifar10(data_dir: Path, download: bool = True) -> Dataset:
    root = data_dir / "cifar-10-batches-py"
    train_files = [root / f"data_batch_{i}" for i in range(1, 6)]
    _ensure(train_files + [root / "test_batch", root / "batches.meta"], "CIFAR-10",
            lambda: _fetch(*_CIFAR10_URL, data_dir, extract=True), download)
    classes = _meta_names(root / "batches.meta", b"label_names")
    parts = [_read_cifar_batch(f, b"labels", len(classes)) for f in train_files]
    x_te, y_te, _ = _read_cifar_batch(root / "test_batch", b"labels", len(classes))
    return Dataset("cifar10", np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   x_te, y_te, classes)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip): magic (0, 0, dtype 0x08 = uint8, ndim), big-endian dims, data."""
    with reading(path, "gzipped idx file"):
        with gzip.open(path, "rb") as f:
            raw = f.read()
        if raw[:3] != b"\x00\x00\x08":
            raise CorruptDataError(f"{path} is not a uint8 idx file (magic {raw[:4]!r})")
        ndim = raw[3]
        dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@register_dataset
def fashion_mnist(data_dir: Path, download: bool = True) -> Dataset:
    root = data_dir / "fashion-mnist"

    def fetch():
        for fname, md5 in _FASHION_FILES.items():
            _fetch(_FASHION_BASE + fname, md5, root, extract=False)

    _ensure([root / f for f in _FASHION_FILES], "Fashion-MNIST", fetch, download)
    x_tr = _read_idx(root / "train-images-idx3-ubyte.gz")[:, None]
    x_te = _read_idx(root / "t10k-images-idx3-ubyte.gz")[:, None]
    y_tr = _read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64)
    y_te = _read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    check_labels(root / "train-labels-idx1-ubyte.gz", x_tr, y_tr, len(FASHION_CLASSES))
    check_labels(root / "t10k-labels-idx1-ubyte.gz", x_te, y_te, len(FASHION_CLASSES))
    return Dataset("fashion_mnist", x_tr, y_tr, x_te, y_te, list(FASHION_CLASSES))


@register_dataset
def imagefolder(path: Path, image_size: int = 32) -> Dataset:
    """`PATH/train/<class>/*` and `PATH/test/<class>/*` (or `<group>/<class>/*`): training/imagefolder.py."""
    try:
        d = read_image_folder(path, image_size)
    except FileNotFoundError as exc:
        raise DataNotFoundError(str(exc)) from None
    return Dataset(f"imagefolder:{path}", d["x_train"], d["y_train"], d["x_test"], d["y_test"], d["classes"],
                   d["class_to_group"], d["groups"], d["augment"])
