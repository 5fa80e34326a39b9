"""A small CNN built to converge in few epochs on 32x32 images, after airbench (Jordan, arXiv 2404.00498).

What it takes from airbench94: a 2x2 first convolution whose filters are set from the
training images' patch statistics (whitening: the eigenvectors of the patch covariance,
scaled by 1/sqrt(eigenvalue), each with its negation) and then frozen; three conv groups
(conv -> max-pool -> BatchNorm -> GELU, then conv -> BatchNorm -> GELU); global max-pooling.
Its recipe (registered with it): label smoothing 0.2, Nesterov SGD with a short warmup,
2-pixel reflect-padded crops and flips; flip test-time augmentation is an evaluation option.
What it leaves out: the lookahead/EMA, the alternating flip, the logit scaling and the
summed loss (our heads own the output layer and its loss).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models._registry import register_model
from models.cnn import MAX_WIDTH

# The family recipe (a search's first trial): Nesterov SGD, batch 512 at lr 0.2 (0.05 per 128
# images), label smoothing 0.2 as airbench; train it with crop_pad=2, pad_mode=reflect and a short
# warmup (the README's command).
RECIPE = dict(optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=5e-4, batch_size=512, label_smoothing=0.2)


class ConvGroup(nn.Module):
    """conv -> 2x2 max-pool -> BN -> GELU, then (convs - 1) x (conv -> BN -> GELU) at the pooled size."""

    def __init__(self, cin: int, cout: int, convs: int = 2):
        super().__init__()
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.GELU()]
        for _ in range(convs - 1):
            layers += [nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class AirNet(nn.Module):
    """Whitening 2x2 conv (2 * in_chans * 4 filters) -> GELU -> conv groups -> global max-pool."""

    def __init__(self, in_chans: int = 3, img_size: int = 32, widths: Sequence[int] = (64, 256, 256),
                 convs_per_group: int = 2):
        super().__init__()
        if (img_size - 1) // 2 ** len(widths) < 1:  # the whitening conv takes one pixel off; pools halve the rest
            raise ValueError(f"{len(widths)} conv groups need img_size >= {2 ** len(widths) + 1}, got {img_size}")
        if not all(1 <= w <= MAX_WIDTH for w in widths) or convs_per_group < 1:
            raise ValueError(f"widths={list(widths)} must be in 1..{MAX_WIDTH} and convs_per_group="
                             f"{convs_per_group} >= 1")
        patch = in_chans * 2 * 2
        self.whiten = nn.Conv2d(in_chans, 2 * patch, 2, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from the data (data_init), then fixed, as in airbench
        groups, c = [], 2 * patch
        for w in widths:
            groups.append(ConvGroup(c, w, convs_per_group))
            c = w
        self.groups = nn.Sequential(*groups)
        self.num_features = c

    @torch.no_grad()
    def data_init(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening filters from (normalised) training images: the patch covariance's eigenvectors."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # (N, C, H-1, W-1, 2, 2)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, self.whiten.weight[0].numel())
        patches = patches[:: max(1, len(patches) // 200_000)]  # a subsample is enough for a 12x12 covariance
        cov = torch.cov(patches.double().T)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).float()
        filters = filters.reshape(-1, *self.whiten.weight.shape[1:])
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x):
        x = self.groups(F.gelu(self.whiten(x)))
        return F.adaptive_max_pool2d(x, 1).flatten(1)


@register_model(recipe=RECIPE)
def airnet(in_chans: int = 3, img_size: int = 32, widths: Sequence[int] = (64, 256, 256),
           convs_per_group: int = 2) -> AirNet:
    """airbench94's network: widths 64 / 256 / 256, two convs a group."""
    return AirNet(in_chans, img_size, widths, convs_per_group)


@register_model(recipe=RECIPE)
def airnet_s(in_chans: int = 3, img_size: int = 32, widths: Sequence[int] = (48, 192, 192),
             convs_per_group: int = 2) -> AirNet:
    """airnet at 3/4 width (48 / 192 / 192): the study's backbone. Measured on this 2-core AMX host (bf16,
    channels_last, batch 256, forward + backward + SGD step): 1224 images/s against airnet's 385, for
    0.56x its multiply-adds (oneDNN's bf16 convolutions at 256 channels run far below those at 192)."""
    return AirNet(in_chans, img_size, widths, convs_per_group)
