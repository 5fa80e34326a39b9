"""The named spaces, and the priors they share. Parameter names are flat and stable: they become
DataFrame columns.

A space compares backbones x heads: every (arch, head) pair gets its own Optuna study and
an equal share of the trials (tuning/pairs.py). Searched everywhere: lr (log; its range
fits the optimizer and scales with the batch size), momentum, weight decay (log; L2 or
decoupled ranges), batch size, the optimizer where the family allows several; label
smoothing for heads that support it, and each head's own options from the head itself
(`Head.suggest`). The first trial of every pair is the backbone's family recipe, which its
registry entry owns (models/), with the head's own baseline options.
"""
from __future__ import annotations

import functools
import math

import heads
import models
from search_spaces._registry import DataInfo, Pair, Space, define_by_run, register_space
from training.optim import OPTIMIZERS

CNN_PRESETS = ("cnn_base", "cnn_bn4", "cnn_keras", "cnn_vgg")
CIFAR100 = {"dataset": "cifar100"}

BATCH_SIZES = (64, 128, 256)


def suggest_training(trial, arch: str, head: str, optimizers=("sgd", "adamw"), batch_sizes=BATCH_SIZES) -> dict:
    """Optimizer, batch size, then lr and weight decay in the ranges that fit them."""
    optimizer = trial.suggest_categorical("optimizer", list(optimizers)) if len(optimizers) > 1 else optimizers[0]
    batch = trial.suggest_categorical("batch_size", list(batch_sizes))
    ranges = OPTIMIZERS.meta(optimizer)
    low, high = ranges["lr_range"]  # peak lr at batch 128, scaled linearly with the batch (Goyal et al. 2017)
    trial.suggest_float("lr", low * batch / 128, high * batch / 128, log=True)  # peak lr
    trial.suggest_float("momentum", 0.8, 0.99)  # sgd momentum / adam beta1
    trial.suggest_float("weight_decay", *ranges["weight_decay_range"], log=True)
    return {"optimizer": optimizer}


class RecipeTrial:
    """Answers each suggestion from a recipe (clipped into the range; the middle of the range
    where the recipe is silent) and records it: the parameters of the enqueued first trial."""

    def __init__(self, values: dict):
        self.values, self.params = values, {}

    def suggest_float(self, name, low, high, log=False, step=None):
        middle = math.sqrt(low * high) if log else (low + high) / 2
        self.params[name] = min(max(float(self.values.get(name, middle)), low), high)
        return self.params[name]

    def suggest_int(self, name, low, high, log=False, step=1):
        self.params[name] = int(round(self.suggest_float(name, low, high, log)))
        return self.params[name]

    def suggest_categorical(self, name, choices):
        value = self.values.get(name, choices[0])
        self.params[name] = value if value in choices else choices[0]
        return self.params[name]


def baseline(space: Space, data: DataInfo, pair: Pair) -> dict:
    """The first trial of a pair's study: its family's recipe plus the head's own baseline options."""
    arch, head = pair
    recipe = dict(models.MODELS.meta(arch)["recipe"])
    batch = space.constants.get("batch_size")
    if isinstance(batch, int) and batch > 0 and {"lr", "batch_size"} <= set(recipe):  # a space that fixes
        # another batch (a bad one is the config check's to refuse): the same lr per image
        recipe["lr"] *= batch / recipe["batch_size"]
    trial = RecipeTrial({**recipe, **heads.head_class(head).baseline(data.num_classes)})
    define_by_run(space, data, pair, trial)
    return trial.params


def _heads_space(optimizers=("sgd", "adamw")):
    # A partial, not a closure: Ray pickles the searcher (and so this function) at every snapshot.
    return functools.partial(suggest_training, optimizers=tuple(optimizers))


@register_space
def cnn_heads() -> Space:
    return Space("cnn_heads", _heads_space(), CNN_PRESETS, constants={**CIFAR100, "epochs": 30},
                 settings={"num_samples": 100, "grace_period": 2}, description="the four CNN presets x every head")


@register_space
def resnet_heads() -> Space:
    return Space("resnet_heads", _heads_space(), ("resnet18",), constants={**CIFAR100, "epochs": 30},
                 settings={"num_samples": 50, "grace_period": 3, "gpus_per_trial": 0.5},
                 description="ResNet-18 x every head")


@register_space
def vit_heads() -> Space:
    return Space("vit_heads", _heads_space(optimizers=("adamw",)), ("vit_tiny", "vit_small"),
                 constants={**CIFAR100, "epochs": 50, "warmup_epochs": 5.0},
                 settings={"num_samples": 60, "grace_period": 5, "gpus_per_trial": 0.5},
                 description="ViT-Ti, ViT-S x every head")


@register_space
def effnet_heads() -> Space:
    return Space("effnet_heads", _heads_space(), ("efficientnet_b0",), constants={**CIFAR100, "epochs": 30},
                 settings={"num_samples": 50, "grace_period": 3, "gpus_per_trial": 0.5},
                 description="EfficientNet-B0 x every head")


@register_space
def vit_cpu_heads() -> Space:
    return Space("vit_cpu_heads", _heads_space(optimizers=("adamw",)), ("vit_cpu",),
                 constants={**CIFAR100, "epochs": 15, "warmup_epochs": 2.0},
                 settings={"num_samples": 20, "grace_period": 2, "reduction_factor": 3, "max_concurrent": 2},
                 description="vit_cpu (a ViT sized for 32x32 images on a 2-core CPU) x every head")


@register_space
def all_heads() -> Space:
    return Space("all_heads", _heads_space(), ("cnn_bn4", "resnet18", "vit_tiny", "efficientnet_b0"),
                 constants={**CIFAR100, "epochs": 30},
                 settings={"num_samples": 200, "grace_period": 3, "gpus_per_trial": 0.5},
                 description="one backbone per family x every head")


def _airnet(trial, arch, head):
    """Nesterov SGD at one batch size (every trial takes the same steps per epoch, so trials compare at equal
    steps): lr, momentum, weight decay, and the label smoothing and head options define_by_run adds."""
    return suggest_training(trial, arch, head, optimizers=("sgd",), batch_sizes=(256,))


@register_space
def airnet_heads() -> Space:
    return Space("airnet_heads", _airnet, ("airnet_s",),
                 constants={**CIFAR100, "epochs": 10, "batch_size": 256, "crop_pad": 2, "pad_mode": "reflect",
                            "warmup_epochs": 1.0},
                 settings={"num_samples": 40, "grace_period": 2, "reduction_factor": 3, "max_concurrent": 2},
                 description="airnet_s (the fast backbone) x every head: Nesterov SGD at batch 256")


def _seed_cnns(trial, arch, head):
    """The choices the hand-made reports explored, as one space (softmax head)."""
    trial.suggest_categorical("model_batch_norm", [False, True])
    trial.suggest_categorical("model_act", ["relu", "elu", "leaky_relu"])
    trial.suggest_categorical("model_pool", ["max", "avg"])
    trial.suggest_float("model_dropout", 0.0, 0.5)
    trial.suggest_categorical("model_extra_block", [False, True])
    return suggest_training(trial, arch, head, optimizers=("sgd", "adam", "rmsprop"))


@register_space
def seed_cnns() -> Space:
    return Space("seed_cnns", _seed_cnns, ("cnn_base",), ("softmax",), constants={**CIFAR100, "epochs": 30},
                 settings={"num_samples": 64},
                 description="cnn_base: BatchNorm, activation, pooling, dropout, extra block, optimizer")


def _smoke(trial, arch, head):
    trial.suggest_float("lr", 1e-3, 0.1, log=True)
    trial.suggest_categorical("batch_size", [32, 64])


@register_space
def smoke() -> Space:
    return Space("smoke", _smoke, ("cnn",),
                 constants={**CIFAR100, "model_widths": [8, 16], "model_fc_widths": [32], "epochs": 4,
                            "optimizer": "adamw", "warmup_epochs": 0.0, "momentum": 0.9},
                 settings={"num_samples": 12, "max_concurrent": 2, "grace_period": 1, "reduction_factor": 2,
                           "gpus_per_trial": 0.0, "fake_data": True},
                 description="tiny CNN on generated data, every head; 32 s on 2 CPUs (measured)")


def _own_data(trial, arch, head):
    """Also the augmentation: a set of your own may not want flips or zero padding (None/auto: its own default)."""
    trial.suggest_categorical("flip", [None, True, False])
    trial.suggest_categorical("pad_mode", ["auto", "constant", "replicate", "reflect"])
    return suggest_training(trial, arch, head)


@register_space
def own_heads() -> Space:
    return Space("own_heads", _own_data, ("cnn_bn4",), constants={**CIFAR100, "epochs": 20},
                 settings={"num_samples": 25, "grace_period": 2},
                 description="cnn_bn4 x every head on your own data (--dataset imagefolder:PATH), searching "
                             "flip and the crop padding too")
