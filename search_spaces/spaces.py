"""The named spaces. Parameter names are flat and stable: they become DataFrame columns.

Searched everywhere: lr (log), momentum, weight decay (log), batch size, optimizer where
relevant, head; label smoothing only for heads that support it. Each head's own options
and their ranges come from the head itself (`Head.suggest` in heads/), so the registry is
the one list of heads.
"""
from __future__ import annotations

import functools
from typing import Sequence

import heads
from search_spaces._registry import Space, register_space

CNN_PRESETS = ("cnn_base", "cnn_bn4", "cnn_keras", "cnn_vgg")
CIFAR100 = {"dataset": "cifar100"}


def suggest_training(trial, optimizers=("sgd", "adamw"), batch_sizes=(64, 128, 256)) -> None:
    if len(optimizers) > 1:
        trial.suggest_categorical("optimizer", list(optimizers))
    trial.suggest_float("lr", 1e-4, 0.3, log=True)  # peak lr
    trial.suggest_float("momentum", 0.8, 0.99)  # sgd momentum / adam beta1
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("batch_size", list(batch_sizes))


def suggest_head(trial, num_classes: int, choices: Sequence[str] | None = None) -> dict:
    """The head (every registered one by default) and its own options; returns the keys they derive."""
    choices = list(choices or heads.list_heads())
    head = trial.suggest_categorical("head", choices) if len(choices) > 1 else choices[0]
    cls = heads.head_class(head)
    if cls.supports_label_smoothing:
        trial.suggest_float("label_smoothing", 0.0, 0.2)
    return cls.suggest(trial, num_classes)


def _suggest_arch_training_head(trial, archs, num_classes, optimizers):
    if len(archs) > 1:
        trial.suggest_categorical("arch", list(archs))
    suggest_training(trial, optimizers)
    return suggest_head(trial, num_classes)


def _heads_space(archs, num_classes=100, optimizers=("sgd", "adamw")):
    # A partial, not a closure: Ray pickles the searcher (and so this function) at every snapshot.
    return functools.partial(_suggest_arch_training_head, archs=tuple(archs), num_classes=num_classes,
                             optimizers=tuple(optimizers))


@register_space
def cnn_heads() -> Space:
    return Space("cnn_heads", _heads_space(CNN_PRESETS), {**CIFAR100, "epochs": 30},
                 {"num_samples": 100, "grace_period": 2}, "the four CNN presets x every head")


@register_space
def resnet_heads() -> Space:
    return Space("resnet_heads", _heads_space(("resnet18",)), {**CIFAR100, "arch": "resnet18", "epochs": 30},
                 {"num_samples": 50, "grace_period": 3, "gpus_per_trial": 0.5}, "ResNet-18 x every head")


@register_space
def vit_heads() -> Space:
    return Space("vit_heads", _heads_space(("vit_tiny", "vit_small"), optimizers=("adamw",)),
                 {**CIFAR100, "optimizer": "adamw", "epochs": 50, "warmup_epochs": 5.0},
                 {"num_samples": 60, "grace_period": 5, "gpus_per_trial": 0.5}, "ViT-Ti, ViT-S x every head")


@register_space
def effnet_heads() -> Space:
    return Space("effnet_heads", _heads_space(("efficientnet_b0",)),
                 {**CIFAR100, "arch": "efficientnet_b0", "epochs": 30},
                 {"num_samples": 50, "grace_period": 3, "gpus_per_trial": 0.5}, "EfficientNet-B0 x every head")


@register_space
def all_heads() -> Space:
    archs = ("cnn_bn4", "resnet18", "vit_tiny", "efficientnet_b0")
    return Space("all_heads", _heads_space(archs), {**CIFAR100, "epochs": 30},
                 {"num_samples": 200, "grace_period": 3, "gpus_per_trial": 0.5}, "one backbone per family x every head")


def _seed_cnns(trial):
    """The choices the hand-made reports explored, as one space (softmax head)."""
    trial.suggest_categorical("model_batch_norm", [False, True])
    trial.suggest_categorical("model_act", ["relu", "elu", "leaky_relu"])
    trial.suggest_categorical("model_pool", ["max", "avg"])
    trial.suggest_float("model_dropout", 0.0, 0.5)
    trial.suggest_categorical("model_extra_block", [False, True])
    suggest_training(trial, optimizers=("sgd", "adam", "rmsprop"))


@register_space
def seed_cnns() -> Space:
    return Space("seed_cnns", _seed_cnns, {**CIFAR100, "arch": "cnn_base", "head": "softmax", "epochs": 30},
                 {"num_samples": 64}, "cnn_base: BatchNorm, activation, pooling, dropout, extra block, optimizer")


def _smoke(trial):
    trial.suggest_float("lr", 1e-3, 0.1, log=True)
    trial.suggest_categorical("batch_size", [32, 64])
    return suggest_head(trial, 100)


@register_space
def smoke() -> Space:
    return Space("smoke", _smoke,
                 {**CIFAR100, "arch": "cnn", "model_widths": [8, 16], "model_fc_widths": [32], "epochs": 4,
                  "optimizer": "adamw", "warmup_epochs": 0.0, "momentum": 0.9},
                 {"num_samples": 12, "max_concurrent": 2, "grace_period": 1, "reduction_factor": 2,
                  "gpus_per_trial": 0.0, "fake_data": True},
                 "tiny CNN on generated data, every head; ~2 minutes on 2 CPUs")
