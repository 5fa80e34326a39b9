"""Configurable conv-block CNN, and the presets of the hand-made CIFAR-100 reports we start from.

A block is `convs_per_block` x (3x3 conv -> [BatchNorm] -> activation), then 2x2
pooling and dropout. Hidden fully-connected layers follow; the head adds the output layer.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from models._registry import register_model

MAX_WIDTH = 8192  # channels or units in one layer: beyond any model here, and a 3x3 conv of it is 600M weights

# The family recipe (a search's first trial; lr at batch 128): this project's standalone CIFAR-100
# run (closing note of issues #2-#5), cnn_base with Adam lr 2e-3, batch 128, reached 32% test
# accuracy in 3 epochs; AdamW adds a small decoupled decay.
RECIPE = dict(optimizer="adamw", lr=2e-3, momentum=0.9, weight_decay=5e-4, batch_size=128, label_smoothing=0.0)

_ACTS = {"relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
_POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _choice(table: dict, value: str, what: str):
    if value not in table:
        raise ValueError(f"{what}={value!r} is not one of {sorted(table)}")
    return table[value]


def _per_block(value: float | Sequence[float], n: int, what: str) -> list[float]:
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries, one per block ({n}) expected")
    if not all(0.0 <= v < 1.0 for v in values):
        raise ValueError(f"{what}={values}: each dropout must be in [0, 1)")
    return values


@register_model(name="cnn", recipe=RECIPE)
class ConvNet(nn.Module):
    """The bare configurable CNN (`cnn`): every argument is an option."""

    def __init__(self, in_chans: int = 3, img_size: int = 32, widths: Sequence[int] = (32, 64, 128),
                 convs_per_block: int = 1, batch_norm: bool = False, act: str = "relu", pool: str = "max",
                 dropout: float | Sequence[float] = 0.0, fc_widths: Sequence[int] = (256,), fc_dropout: float = 0.0):
        super().__init__()
        act_layer, pool_layer = _choice(_ACTS, act, "act"), _choice(_POOLS, pool, "pool")
        drops = _per_block(dropout, len(widths), "dropout")
        _per_block(fc_dropout, 1, "fc_dropout")
        if img_size // 2 ** len(widths) < 1:
            raise ValueError(f"{len(widths)} pooling blocks need img_size >= {2 ** len(widths)}, got {img_size}")
        for what, values in (("widths", widths), ("fc_widths", fc_widths), ("convs_per_block", [convs_per_block])):
            if not all(1 <= w <= MAX_WIDTH for w in values):  # a 0 fails deep in forward; a huge one fills memory
                raise ValueError(f"{what}={list(values)}: every entry must be in 1..{MAX_WIDTH}")
        layers, c = [], in_chans
        for width, drop in zip(widths, drops):
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(c, width, 3, padding=1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(width)] if batch_norm else []
                layers += [act_layer()]
                c = width
            layers += [pool_layer(2)] + ([nn.Dropout(drop)] if drop else [])
        self.features = nn.Sequential(*layers)
        n = c * (img_size // 2 ** len(widths)) ** 2
        fc = [nn.Flatten()]
        for width in fc_widths:
            fc += [nn.Linear(n, width), act_layer()] + ([nn.Dropout(fc_dropout)] if fc_dropout else [])
            n = width
        self.fc = nn.Sequential(*fc)
        self.num_features = n

    def forward(self, x):
        return self.fc(self.features(x))


def _create_cnn(in_chans: int, img_size: int, defaults: dict, overrides: dict) -> ConvNet:
    return ConvNet(in_chans=in_chans, img_size=img_size, **{**defaults, **overrides})


@register_model(recipe=RECIPE)
def cnn_base(in_chans: int = 3, img_size: int = 32, batch_norm: bool = False, act: str = "relu", pool: str = "max",
             dropout: float = 0.0, extra_block: bool = False) -> ConvNet:
    """3 conv + 3 FC (2 hidden here; the head is the third)."""
    widths = (32, 64, 128, 256) if extra_block else (32, 64, 128)
    return _create_cnn(in_chans, img_size, dict(widths=widths, fc_widths=(512, 256)),
                       dict(batch_norm=batch_norm, act=act, pool=pool, dropout=dropout))


@register_model(recipe=RECIPE)
def cnn_bn4(in_chans: int = 3, img_size: int = 32, act: str = "relu", pool: str = "max",
            dropout: float = 0.0) -> ConvNet:
    """4 conv blocks with BatchNorm, 2 hidden FC."""
    return _create_cnn(in_chans, img_size, dict(widths=(32, 64, 128, 256), batch_norm=True, fc_widths=(512, 256)),
                       dict(act=act, pool=pool, dropout=dropout))


@register_model(recipe=RECIPE)
def cnn_keras(in_chans: int = 3, img_size: int = 32, act: str = "relu", pool: str = "max") -> ConvNet:
    """Keras-example style: 3 conv blocks, dropout 0.1 / 0.25 / 0.25 after them, FC 512 with dropout 0.5."""
    return _create_cnn(in_chans, img_size, dict(widths=(32, 64, 128), dropout=(0.1, 0.25, 0.25), fc_widths=(512,),
                                                fc_dropout=0.5), dict(act=act, pool=pool))


@register_model(recipe=RECIPE)
def cnn_vgg(in_chans: int = 3, img_size: int = 32, act: str = "relu", dropout: float = 0.3) -> ConvNet:
    """VGG-like: 8 conv (4 blocks of 2) with BatchNorm and dropout, FC 1024."""
    return _create_cnn(in_chans, img_size, dict(widths=(64, 128, 256, 512), convs_per_block=2, batch_norm=True,
                                                fc_widths=(1024,), fc_dropout=0.5), dict(act=act, dropout=dropout))
