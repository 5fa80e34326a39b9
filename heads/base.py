"""The Head contract shared by every output layer.

- `loss(features, target)`: scalar training loss (may touch only part of the classes);
- `log_prob(features)`: the full normalised (B, C) log-distribution, for metrics;
- `predict(features)`: (B,) class ids, possibly cheaper than the full distribution;
- `complexity(in_features, num_classes, batch=256, states=1, **hp)`: forward multiply-adds
  per example for the training loss, the full log_prob and predict, with the formula as
  text; and the bytes each moves per batch (`*_bytes`, fp32): weights read, gradients
  written, activations, and for training the optimizer update with `states` state tensors
  per weight (1: SGD momentum; 2: Adam). Multiply-adds alone miss where a large output layer
  spends its time (memory traffic), so `tools.heads_bench` predicts from both.
- `sparse_parameters()`: the parameters whose gradients hold only the rows a step touched;
  the engine gives them the lazy row-wise optimizer of `heads.speed.sparse`;
- `cost_note`: one line for the report on what the head costs and why; `trails_because`: why it
  may trail softmax where it does (the study report quotes it; softmax, the reference, says "");
- `suggest(trial, num_classes, has_hierarchy)`: the search ranges of the head's options,
  define-by-run (Optuna's `trial.suggest_*`, flat `head_<option>` names); returns keys
  derived from them. `baseline(num_classes)`: the values of those parameters for a search's
  first, known-good trial (its defaults where it has them).

Options are the annotated keyword parameters of `__init__`; `in_features`, `num_classes`,
`hierarchy`, `class_counts` and `label_smoothing` come from the data and the trial config.
"""
from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    supports_label_smoothing = True
    cost_note = ""  # one line for the report: the head's time complexity, in words
    trails_because = ""  # for the report: why the head may trail softmax where it does (every head says)

    @classmethod
    def suggest(cls, trial, num_classes: int, has_hierarchy: bool = False) -> dict:
        """Suggest this head's options as `head_<option>` on an Optuna trial; return derived keys.

        Every head declares its own, even an empty one: inheriting another head's ranges
        would search options this head may not have.
        """
        raise NotImplementedError(f"head {cls.__name__} declares no search ranges (suggest)")

    @classmethod
    def baseline(cls, num_classes: int) -> dict:
        """Values of the parameters `suggest` makes, for a search's first trial; {} = middle of each range."""
        return {}

    def __init__(self, in_features: int, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features={in_features} must be >= 1")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        if label_smoothing and not self.supports_label_smoothing:
            raise ValueError(f"label_smoothing={label_smoothing}: head {type(self).__name__} supports only 0")
        self.in_features, self.num_classes, self.label_smoothing = in_features, num_classes, label_smoothing

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.log_prob(features).argmax(dim=1)

    @classmethod
    def complexity(cls, in_features: int, num_classes: int, **hp) -> dict:
        """`hp`: the head's options (and `hierarchy`); those that do not change the cost are ignored."""
        raise NotImplementedError

    def cost(self) -> dict:
        """complexity() of this instance's own configuration."""
        return self.complexity(self.in_features, self.num_classes, **self.hparams())

    def hparams(self) -> dict:
        return {}

    def sparse_parameters(self) -> list:
        """Parameters whose gradient is row-sparse (`heads.speed.sparse`); the engine updates them lazily."""
        return []


F32 = 4  # bytes per value


def madds(train: float, log_prob: float, predict: float, formula: str, train_bytes: float = 0.0,
          log_prob_bytes: float = 0.0, predict_bytes: float = 0.0) -> dict:
    return {"train_madds": float(train), "log_prob_madds": float(log_prob), "predict_madds": float(predict),
            "formula": formula, "train_bytes": float(train_bytes), "log_prob_bytes": float(log_prob_bytes),
            "predict_bytes": float(predict_bytes)}


def update_bytes(values: float, states: int, lazy: bool = False) -> float:
    """An optimizer step over `values` weights: read weight, gradient and each state, write weight
    and each state. The lazy row update gathers those rows into copies and scatters them back: twice."""
    return (3 + 2 * states) * values * F32 * (2 if lazy else 1)


def dense_layer_bytes(batch: int, d: int, c: int, states: int, passes: int = 4) -> dict:
    """A d x C layer with all C logits: weights read forward and backward, dense gradient written,
    `passes` passes over the (B, C) logits in training (logits, softmax, its gradient)."""
    w, act = c * d * F32, batch * c * F32
    return {"train_bytes": 3 * w + passes * act + update_bytes(c * d, states),
            "log_prob_bytes": w + 2 * act, "predict_bytes": w + act}


def smoothed_nll(log_p: torch.Tensor, target: torch.Tensor, eps: float, valid: torch.Tensor | None = None):
    """Per-example cross-entropy with label smoothing eps spread over the `valid` entries of each row."""
    nll = -log_p.gather(1, target[:, None]).squeeze(1)
    if not eps:
        return nll
    if valid is None:
        uniform = -log_p.mean(dim=1)
    else:
        uniform = -log_p.masked_fill(~valid, 0.0).sum(dim=1) / valid.sum(dim=1)
    return (1 - eps) * nll + eps * uniform
