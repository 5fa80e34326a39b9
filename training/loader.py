"""Device-resident batches, as in airbench: the uint8 images go to the device once,
each epoch takes a `randperm`, and crop/flip/normalize run there on whole batches.
No DataLoader workers, no host-device copy per step.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

# Per-channel statistics (0-255 scale). Computed on CIFAR-100 train; close enough for
# any natural-image set, and normalisation only needs to be roughly right.
_MEAN_RGB = (129.3, 124.1, 112.4)
_STD_RGB = (68.2, 65.4, 70.4)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of uint8 images (N, C, H, W), on the 0-255 scale."""
    flat = images.reshape(images.shape[0], images.shape[1], -1)
    sample = flat[:: max(1, len(flat) // 5000)].astype(np.float64)  # a subsample is enough
    return tuple(sample.mean(axis=(0, 2))), tuple(sample.std(axis=(0, 2)) + 1e-6)


def _fold(index: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Indices outside [0, n) mapped back inside: `replicate` repeats the edge, `reflect` mirrors it."""
    if mode == "replicate":
        return index.clamp(0, n - 1)
    index = index.abs()  # reflect (the edge pixel once, as numpy's and torch's 'reflect')
    return torch.where(index > n - 1, 2 * (n - 1) - index, index)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None, flip: bool = True,
                     pad_mode: str = "constant") -> torch.Tensor:
    """Random crop with padding `pad` and (optionally) horizontal flip, per image, for a whole batch.

    With zero (`constant`) padding, the same result as torchvision's RandomCrop(size, padding=pad)
    + RandomHorizontalFlip; `reflect` / `replicate` read the padding from the image by index,
    so the uint8 batch is never copied into a padded one.
    """
    b, c, h, w = x.shape
    dev = x.device
    dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    flips = torch.rand(b, device=dev, generator=generator) < 0.5
    cols = torch.arange(w, device=dev)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) if flip else cols[None, :]  # a flip reads backwards
    cols = cols + dx[:, None]
    rows = torch.arange(h, device=dev)[None, :] + dy[:, None]
    if pad_mode == "constant":
        source = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    else:
        source, rows, cols = x, _fold(rows - pad, h, pad_mode), _fold(cols - pad, w, pad_mode)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return source[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """Iterates (images float, labels int64) batches already on `device`.

    train=True: a fresh permutation each epoch, crop+flip, last partial batch dropped
    (keeps shapes static for torch.compile). train=False: in order, every image.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device | str,
                 train: bool, mean=_MEAN_RGB, std=_STD_RGB, pad: int = 4, augment: bool = True,
                 seed: int = 0, channels_last: bool = True, flip: bool = True, pad_mode: str = "constant"):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.device = torch.device(device)
        # np.require copies only read-only arrays (Ray's object store hands those out); uint8 stays uint8.
        self.images = torch.from_numpy(np.require(images, requirements="W")).to(self.device)
        self.labels = torch.as_tensor(np.require(labels, requirements="W"), dtype=torch.long).to(self.device)
        n_ch = self.images.shape[1]
        mean, std = (mean[:1], std[:1]) if n_ch == 1 and len(mean) == 3 else (mean, std)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) / 255
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) / 255
        self.batch_size, self.train, self.pad, self.augment = batch_size, train, pad, augment
        self.flip, self.pad_mode = flip, pad_mode
        self.channels_last = channels_last
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.train:
            return max(1, n // self.batch_size)
        return (n + self.batch_size - 1) // self.batch_size

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def normalised(self, n: int) -> torch.Tensor:
        """The first `n` images, normalised and not augmented (a data-dependent init reads them)."""
        return (self.images[:n].float() / 255 - self.mean) / self.std

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.train and self.augment:
            x = random_crop_flip(x, self.pad, self.generator, self.flip, self.pad_mode)
        x = (x.float() / 255 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, device=self.device, generator=self.generator)
            bs = min(self.batch_size, n)
        else:
            order, bs = torch.arange(n, device=self.device), self.batch_size
        for i in range(len(self)):
            idx = order[i * bs:(i + 1) * bs]
            yield self._prepare(self.images[idx]), self.labels[idx]

    # Exposed so a checkpoint can resume the same sequence of permutations and crops.
    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
