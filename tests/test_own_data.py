"""Own data as a first-class citizen: ImageFolder sets of any size, gray or colour, one or two
levels, with their own augmentation defaults, a hierarchy from folders or a mapping file,
decoded in parallel and cached."""
import json

import numpy as np
import pytest
import torch

from training import data, engine, imagefolder, train
from training.config import TrainConfig
from training.fake_data import write_imagefolder
from training.loader import random_crop_flip


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # tests never share decoded arrays


def test_image_size_and_gray_sets_keep_one_channel(tmp_path):
    write_imagefolder(tmp_path / "gray", gray=True, size=40)
    write_imagefolder(tmp_path / "rgb", size=40)
    gray = data.load_dataset(f"imagefolder:{tmp_path / 'gray'}", "unused", image_size=64)
    rgb = data.load_dataset(f"imagefolder:{tmp_path / 'rgb'}", "unused")
    assert gray.x_train.shape == (24, 1, 64, 64) and gray.img_size == 64 and gray.in_chans == 1
    assert rgb.x_train.shape == (24, 3, 32, 32) and rgb.x_test.shape == (12, 3, 32, 32)


def test_two_levels_give_the_hierarchy(tmp_path):
    write_imagefolder(tmp_path, classes=6, groups=2)
    ds = data.load_dataset(f"imagefolder:{tmp_path}", "unused")
    assert ds.group_names == ["g0", "g1"] and ds.classes[:2] == ["g0/c0", "g0/c2"]
    assert ds.class_to_group.tolist() == [0, 0, 0, 1, 1, 1]
    split = data.split_train_val(ds, 0.25, 0)
    result = engine.fit(TrainConfig(arch="cnn", model_kwargs={"widths": [8], "fc_widths": [16]}, head="hierarchical",
                                    epochs=1, batch_size=8, head_kwargs={"tree": "dataset"}), split)
    assert result.trained.model.head.groups == [[0, 1, 2], [3, 4, 5]]  # the folders' groups became the tree


def test_a_mapping_file_gives_any_dataset_a_hierarchy(tmp_path, fake_dir):
    ds = data.load_dataset("cifar10", fake_dir, download=False)
    mapping = {c: ("even" if i % 2 == 0 else "odd") for i, c in enumerate(ds.classes)}
    (tmp_path / "h.json").write_text(json.dumps(mapping))
    tree = data.load_for({"dataset": "cifar10", "hierarchy_file": str(tmp_path / "h.json")}, fake_dir)
    assert tree.group_names == ["even", "odd"] and tree.class_to_group.tolist() == [0, 1] * 5
    (tmp_path / "bad.json").write_text(json.dumps({"class0": "a", "zebra": "b"}))
    with pytest.raises(ValueError, match=r"must name every class of cifar10 once: missing \['class1', "
                                         r".*unknown \['zebra'\]"):
        data.load_for({"dataset": "cifar10", "hierarchy_file": str(tmp_path / "bad.json")}, fake_dir)


def test_declared_augmentation_defaults_and_the_config_overriding_them(tmp_path):
    write_imagefolder(tmp_path)
    (tmp_path / "headsweep.json").write_text(json.dumps({"flip": False, "pad_mode": "replicate"}))
    ds = data.load_dataset(f"imagefolder:{tmp_path}", "unused")
    assert engine.augmentation(TrainConfig(), ds) == {"augment": True, "pad": 4, "flip": False,
                                                     "pad_mode": "replicate"}
    assert engine.augmentation(TrainConfig(flip=True, pad_mode="reflect", crop_pad=2), ds)["flip"] is True
    cifar = data.Dataset("x", *(np.zeros((1, 3, 8, 8), np.uint8), np.zeros(1))[::1] * 2, ["a"])
    assert engine.augmentation(TrainConfig(), cifar) == {"augment": True, "pad": 4, "flip": True,
                                                        "pad_mode": "constant"}
    (tmp_path / "headsweep.json").write_text(json.dumps({"flip": "no"}))
    with pytest.raises(ValueError, match=r"headsweep.json: flip='no' is not allowed; it may declare"):
        data.load_dataset(f"imagefolder:{tmp_path}", "unused", image_size=31)


def test_crop_padding_modes_and_no_flip():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    for mode in ("replicate", "reflect"):
        for _ in range(20):
            out = random_crop_flip(x, 2, gen, flip=False, pad_mode=mode)
            padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode=mode)
            windows = {tuple(padded[0, 0, i:i + 4, j:j + 4].flatten().tolist()) for i in range(5) for j in range(5)}
            assert tuple(out[0, 0].float().flatten().tolist()) in windows, mode  # a window of torch's own padding
    flips = [random_crop_flip(x, 0, gen, flip=True)[0, 0, 0, 0].item() for _ in range(40)]
    assert set(flips) == {0, 3}  # flipped and not
    assert {random_crop_flip(x, 0, gen, flip=False)[0, 0, 0, 0].item() for _ in range(20)} == {0}


def test_decoding_is_cached_by_content_and_size(tmp_path, monkeypatch, capsys):
    write_imagefolder(tmp_path / "set")
    first = data.load_dataset(f"imagefolder:{tmp_path / 'set'}", "unused")
    assert "decoded 24/24 images" in capsys.readouterr().err  # progress
    def refuse(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imagefolder, "_decode", refuse)
    again = data.load_dataset(f"imagefolder:{tmp_path / 'set'}", "unused")
    assert np.array_equal(first.x_train, again.x_train)
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another cache entry
        data.load_dataset(f"imagefolder:{tmp_path / 'set'}", "unused", image_size=16)


def test_an_imagefolder_given_as_data_dir_says_what_to_pass(tmp_path):
    write_imagefolder(tmp_path)
    with pytest.raises(data.DataNotFoundError, match=rf"looks like an ImageFolder .* pass --dataset "
                                                     rf"imagefolder:{tmp_path}"):
        data.load_dataset("cifar100", tmp_path)


def test_train_cli_on_own_data_reports_class_names(tmp_path, capsys):
    write_imagefolder(tmp_path / "chars", gray=True, classes=3)
    (tmp_path / "chars" / "headsweep.json").write_text(json.dumps({"flip": False}))
    assert train.main(["--dataset", f"imagefolder:{tmp_path / 'chars'}", "--image-size", "16", "--arch", "cnn",
                       "--model-opt", "widths=[8]", "--model-opt", "fc_widths=[16]", "--epochs", "1",
                       "--batch-size", "8", "--val-fraction", "0.3", "--flip", "false", "--pad-mode", "replicate",
                       "--no-download", "--summary-json", str(tmp_path / "summary.json")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["num_classes"] == 3 and "classes" not in printed  # the console line stays short
    summary = json.loads((tmp_path / "summary.json").read_text())  # the file has the names
    assert summary["classes"] == ["c0", "c1", "c2"] and summary["config"]["image_size"] == 16
    assert summary["config"]["flip"] is False and summary["config"]["pad_mode"] == "replicate"


def test_a_validation_split_too_small_for_the_classes_says_so(tmp_path):
    write_imagefolder(tmp_path, classes=3)
    ds = data.load_dataset(f"imagefolder:{tmp_path}", "unused")
    with pytest.raises(ValueError, match=r"val_fraction=0.1 of 18 training images is 2 images, fewer than the 3 "
                                         "classes: a stratified validation split needs one per class"):
        data.split_train_val(ds, 0.1)
