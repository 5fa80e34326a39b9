import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.loader import DeviceLoader, random_crop_flip


def test_crop_flip_takes_a_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).reshape(2, 3, 8, 8)
    out = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_and_crop_vary_per_image():
    x = torch.arange(64 * 16, dtype=torch.uint8).reshape(1, 1, 16, 64).repeat(256, 1, 1, 1)
    out = random_crop_flip(x, pad=4, generator=torch.Generator().manual_seed(0))
    assert len({o.numpy().tobytes() for o in out}) > 50


def test_epoch_is_a_permutation_and_normalised():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (100, 3, 8, 8), dtype=np.uint8)
    labels = np.arange(100)
    loader = DeviceLoader(images, labels, 10, "cpu", train=True, augment=False, mean=(127.5,) * 3, std=(73.9,) * 3)
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == list(range(100)) and seen.tolist() != list(range(100))
    x = torch.cat([x for x, _ in loader])
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_eval_loader_keeps_order_and_partial_batch():
    images = np.zeros((25, 1, 4, 4), dtype=np.uint8)
    loader = DeviceLoader(images, np.arange(25), 10, "cpu", train=False)
    assert [len(y) for _, y in loader] == [10, 10, 5]
    assert torch.cat([y for _, y in loader]).tolist() == list(range(25))


def test_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        DeviceLoader(np.zeros((4, 3, 8, 8), np.uint8), np.zeros(4), 0, "cpu", train=True)
