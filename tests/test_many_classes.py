"""The many-class ImageFolder built from CIFAR-100: classes are (fine class, quarter turn, channel
order), no source image is reused, and the imagefolder loader reads it back as that many classes."""

import numpy as np
import pytest
from clitest import assert_one_line
from PIL import Image

from training import fake_data, many_classes
from training.data import load_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    fake_data.write_cifar100(root, train_per_class=10, test_per_class=4)
    out = root / "set"
    assert many_classes.main(["--data-dir", str(root), "--out", str(out), "--rotations", "2",
                              "--channel-orders", "2", "--train-per-class", "2", "--test-per-class", "1"]) == 0
    return root, out


def test_every_variant_of_every_fine_class_is_a_class_with_its_own_images(built):
    root, out = built
    ds = load_dataset(f"imagefolder:{out}", root)
    assert ds.num_classes == 100 * 4 and ds.augment == {"flip": False}
    assert np.bincount(ds.y_train).tolist() == [2] * 400 and np.bincount(ds.y_test).tolist() == [1] * 400
    for part in ("train", "test"):
        sources = [p.stem for p in (out / part).glob("*/*.png")]
        assert len(sources) == len(set(sources))  # no CIFAR image is used twice within a part


def test_a_class_folder_holds_its_source_turned_and_with_channels_reordered(built):
    root, out = built
    cifar = load_dataset("cifar100", root, download=False)
    folder = next((out / "train").glob("*_r90_rbg"))
    png = next(folder.glob("*.png"))
    source = cifar.x_train[int(png.stem)].transpose(1, 2, 0)
    assert cifar.classes[cifar.y_train[int(png.stem)]] == folder.name.rsplit("_r90", 1)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(png)), np.rot90(source[..., [0, 2, 1]], k=1))


@pytest.mark.parametrize("args,message", [
    (["--rotations", "5"], r"rotations=5 must be in \[1, 4\]"),
    (["--train-per-class", "0"], r"--train-per-class 0 and --test-per-class 1 must be >= 1"),
    (["--train-per-class", "11"], r"class 0 has 10 images; 4 variants x 11 per class need 44"),
    (["--test-per-class", "2"], r"class 0 has 4 images; 4 variants x 2 per class need 8"),
])
def test_bad_input_is_one_line_and_exit_2(built, tmp_path, capsys, args, message):
    root, _ = built
    base = ["--data-dir", str(root), "--out", str(tmp_path / "new"), "--rotations", "2", "--channel-orders", "2",
            "--train-per-class", "2", "--test-per-class", "1"]
    assert_one_line(many_classes.main(base + args), capsys.readouterr().err, message, regex=True)
    assert not (tmp_path / "new").exists()  # checked before anything is written
