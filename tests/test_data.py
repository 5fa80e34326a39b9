import pickle
import urllib.error

import numpy as np
import pytest

from training import data


@pytest.mark.parametrize("name,shape,classes", [("cifar100", (3, 32, 32), 100), ("cifar10", (3, 32, 32), 10),
                                                ("fashion_mnist", (1, 28, 28), 10)])
def test_generated_official_formats_load(fake_dir, name, shape, classes):
    ds = data.load_dataset(name, fake_dir, download=False)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] == shape
    assert ds.y_train.dtype == np.int64 and ds.num_classes == classes
    assert (np.bincount(ds.y_test, minlength=classes) == len(ds.y_test) // classes).all()
    assert ds.in_chans == shape[0] and ds.img_size == shape[1]


def test_generated_cifar100_hierarchy(fake_dir):
    ds = data.load_dataset("cifar100", fake_dir, download=False)
    assert (ds.class_to_group == np.arange(100) // 5).all()
    assert len(ds.group_names) == 20


def test_real_cifar100(real_cifar100):
    ds = real_cifar100
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert (np.bincount(ds.y_test, minlength=100) == 100).all()
    assert ds.classes[:3] == ["apple", "aquarium_fish", "baby"]
    # 20 superclasses of exactly 5 fine classes each
    assert (np.bincount(ds.class_to_group, minlength=20) == 5).all()
    assert ds.group_names[ds.class_to_group[ds.classes.index("apple")]] == "fruit_and_vegetables"
    means = ds.x_train.reshape(50000, 3, -1).mean(axis=(0, 2))
    np.testing.assert_allclose(means, [129.4, 124.2, 112.6], atol=0.1)


def test_real_fashion_mnist_is_grayscale(real_dir):
    ds = data.load_dataset("fashion_mnist", real_dir, download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert (np.bincount(ds.y_test, minlength=10) == 1000).all()


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(data.CorruptDataError, match=f"{path}: .*refusing to load global .*system"):
        data.safe_unpickle(path)
    assert not (tmp_path / "pwned").exists()


def test_split_is_stratified_and_deterministic(fake_dir):
    ds = data.load_dataset("cifar100", fake_dir, download=False)
    a, b = data.split_train_val(ds, 0.2, seed=3), data.split_train_val(ds, 0.2, seed=3)
    assert np.array_equal(a.y_val, b.y_val) and np.array_equal(a.x_train, b.x_train)
    assert (np.bincount(a.y_val, minlength=100) == 2).all()  # 10 per class * 0.2
    assert len(a.y_train) + len(a.y_val) == len(ds.y_train)
    c = data.split_train_val(ds, 0.2, seed=4)
    assert not np.array_equal(a.x_val, c.x_val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_outside_unit_interval(fake_dir, fraction):
    ds = data.load_dataset("cifar10", fake_dir, download=False)
    with pytest.raises(ValueError, match=f"val_fraction={fraction} must be in \\(0, 1\\)"):
        data.split_train_val(ds, fraction)


def test_missing_data_offline_says_what_to_put_where(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data, "_fetch", offline)
    with pytest.raises(data.DataNotFoundError, match=r"download failed \(URLError.*: put the official train, test, meta in .*cifar-100-python"):
        data.load_dataset("cifar100", tmp_path)
    with pytest.raises(data.DataNotFoundError, match="downloading is off"):
        data.load_dataset("fashion_mnist", tmp_path, download=False)


def test_download_uses_official_archive_with_md5(tmp_path, monkeypatch, fake_dir):
    import shutil

    calls = []

    def fake_fetch(url, md5, root, extract):
        calls.append((url, md5))
        shutil.copytree(fake_dir / "cifar-100-python", root / "cifar-100-python")

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    ds = data.load_dataset("cifar100", tmp_path)
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")]
    assert ds.num_classes == 100


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid datasets: cifar10, cifar100, fashion_mnist"):
        data.load_dataset("mnist", tmp_path)


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / part / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / part / cls / f"{i}.png")
    ds = data.load_dataset(f"imagefolder:{tmp_path}", "unused")
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.classes == ["cat", "dog"] and ds.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(data.DataNotFoundError, match="train/ and test/"):
        data.load_dataset(f"imagefolder:{tmp_path / 'train'}", "unused")
