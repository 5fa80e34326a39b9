"""The trial config: a flat dict validated once, at trial start, into a typed dataclass.

Flat keys become DataFrame columns after a search. Backbone options are the keys
`model_<option>` and head options `head_<option>`, each checked against the chosen
backbone's or head's own signature. `search_<name>` keys are raw values a search space
suggested only to derive other keys (e.g. adaptive cutoffs); they are skipped. An unknown
key, a value of the wrong type (checked against the annotations below and the backbone's
and head's own) or an out-of-range value raises ValueError naming the key, so a bad trial
fails alone and says why, and a bad command line stops before anything starts.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from common.options import has_type, type_name

SCHEDULES = ("cosine", "step", "constant")
MAX_IMAGE_SIZE = 1024
PAD_MODES = ("auto", "constant", "reflect", "replicate")
AMP = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    dataset: str = "cifar100"  # cifar100 | cifar10 | fashion_mnist | imagefolder:PATH
    arch: str = "cnn_base"  # a name from models.list_models()
    head: str = "softmax"  # a name from heads.list_heads()
    epochs: int = 30  # full passes over the training split
    batch_size: int = 256  # images per optimizer step
    optimizer: str = "sgd"  # sgd / adam / adamw / rmsprop (the table in training/optim.py)
    lr: float = 0.05  # peak learning rate, reached after warmup
    momentum: float = 0.9  # sgd momentum / rmsprop momentum / adam beta1
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4  # L2 (sgd, adam, rmsprop) or decoupled (adamw)
    schedule: str = "cosine"  # cosine to 0, step (x step_gamma every step_epochs), constant
    warmup_epochs: float = 1.0  # linear warmup from 0, in epochs (fractions allowed)
    step_epochs: int = 10  # step schedule: epochs between decays
    step_gamma: float = 0.1  # step schedule: multiplicative decay
    label_smoothing: float = 0.0  # probability mass spread over all classes
    augment: bool = True  # random crop + horizontal flip on device, as the next three say; false = none
    flip: bool | None = None  # horizontal flip; None = the dataset's default (an ImageFolder may declare it off)
    crop_pad: int = 4  # random-crop padding in pixels; 0 = no crop
    pad_mode: str = "auto"  # crop padding: constant (zeros) / reflect / replicate; auto = the dataset's default
    image_size: int = 32  # ImageFolder images are resized to this many pixels a side (other sets keep theirs)
    hierarchy_file: str | None = None  # JSON {class name: group name}: the hierarchical head's tree, any dataset
    val_fraction: float = 0.1  # share of the training set held out for validation
    train_limit: int | None = None  # keep this many training images (stratified); None = all
    seed: int = 0  # model init, split, batch order, augmentation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with AMX / avx512_bf16, else fp32) | bf16 | fp32
    tta_flip: bool = True  # evaluation also on the mirrored images, log-probabilities averaged
    compile: bool = False  # torch.compile the backbone
    channels_last: bool = True  # NHWC memory layout (faster convs on GPU)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # from model_<option> keys
    head_kwargs: dict[str, Any] = field(default_factory=dict)  # from head_<option> keys

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"model_kwargs", "head_kwargs"}
        known, model_kw, head_kw = {}, {}, {}
        for key, value in flat.items():
            if key.startswith("search_"):
                continue  # raw values a search space suggested only to derive other keys
            if key in names:
                known[key] = value
            elif key.startswith("model_"):
                model_kw[key[len("model_"):]] = value
            elif key.startswith("head_"):
                head_kw[key[len("head_"):]] = value
            else:
                raise ValueError(f"unknown config key {key!r}; allowed: {sorted(names)} "
                                 "plus model_<option> and head_<option>")
        cfg = cls(**known, model_kwargs=model_kw, head_kwargs=head_kw)
        cfg.validate()
        return cfg

    def to_flat(self) -> dict[str, Any]:
        flat = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("model_kwargs", "head_kwargs")}
        flat.update({f"model_{k}": v for k, v in self.model_kwargs.items()})
        flat.update({f"head_{k}": v for k, v in self.head_kwargs.items()})
        return flat

    def validate(self) -> None:
        # Deferred: the registries import torch and timm (seconds), and --help needs neither.
        import heads
        import models
        from training.optim import OPTIMIZERS

        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not has_type(value, hints[f.name]):
                raise ValueError(f"config key {f.name!r}={value!r} has the wrong type: must be "
                                 f"{type_name(hints[f.name])}")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS.list()}")
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {SCHEDULES}")
        _check(self.pad_mode in PAD_MODES, "pad_mode", self.pad_mode, f"one of {PAD_MODES}")
        _check(self.amp in AMP, "amp", self.amp, f"one of {AMP}")
        for f in dataclasses.fields(self):  # NaN passes no comparison below, but inf passes `>= 0`
            value = getattr(self, f.name)
            _check(not isinstance(value, float) or math.isfinite(value), f.name, value, "a finite number")
        for key, low in (("epochs", 1), ("batch_size", 1), ("step_epochs", 1), ("crop_pad", 0), ("image_size", 4)):
            _check(int(getattr(self, key)) >= low, key, getattr(self, key), f">= {low}")
        # The images are held in memory at this size (N x 3 x size^2 bytes): 1024 is 3 MB an image already.
        _check(self.image_size <= MAX_IMAGE_SIZE, "image_size", self.image_size, f"<= {MAX_IMAGE_SIZE}")
        _check(self.crop_pad <= self.image_size, "crop_pad", self.crop_pad,
               f"<= image_size={self.image_size} (a crop padded by more than the image is mostly padding)")
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)")
        _check(0 < self.val_fraction < 1, "val_fraction", self.val_fraction, "in (0, 1)")
        _check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, ">= 0")
        _check(0 < self.step_gamma <= 1, "step_gamma", self.step_gamma, "in (0, 1]")
        _check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0")
        _check(self.train_limit is None or self.train_limit >= 1, "train_limit", self.train_limit, ">= 1 or None")
        _check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "device", self.device,
               "auto, cpu, cuda or cuda:N")
        _check(not self.dataset.startswith("imagefolder") or re.fullmatch(r"imagefolder:.+", self.dataset) is not None,
               "dataset", self.dataset, "imagefolder:PATH, with the folder that holds train/ and test/")
        models.MODELS.check(self.arch, self.model_kwargs, f"model {self.arch!r} (keys model_*)")
        heads.HEADS.check(self.head, self.head_kwargs, f"head {self.head!r} (keys head_*)")


class ConfigError(ValueError):
    """A config that cannot run on this data: the same config fails the same way every time."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config key {key!r}={value!r} is out of range: must be {allowed}")


def parse_assignment(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value), the value read as a Python literal when it is one; a bare
    word (relu) stays a string, true/false are booleans, and [softmax,sampled] is a list of them."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"malformed assignment {text!r}: expected KEY=VALUE")
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]") and _literal(raw) is raw:
        return key.strip(), [_literal(part.strip()) for part in raw[1:-1].split(",") if part.strip()]
    return key.strip(), _literal(raw)


def _literal(raw: str) -> Any:
    if raw.lower() in ("true", "false"):  # as the boolean flags of the command line take them
        return raw.lower() == "true"
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def field_help() -> dict[str, str]:
    """Each TrainConfig field's trailing comment, so --help shows units from one source."""
    helps = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        name, _, rest = line.strip().partition(":")
        if "#" in rest and name.isidentifier():
            helps[name] = rest.split("#", 1)[1].strip()
    return helps
