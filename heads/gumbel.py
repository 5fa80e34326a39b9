"""Gumbel-softmax output layer (Jang et al. 2017; Maddison et al. 2017).

Training draws g ~ Gumbel(0, 1) per logit and forms the relaxed sample
y = softmax((logits + g) / tau). The loss, with t the (optionally smoothed) one-hot target:
- soft: cross-entropy of the relaxed sample, -sum_c t_c log y_c (= -log y_target unsmoothed);
- hard (straight-through): the forward pass uses the one-hot argmax of y, the backward the
  soft y, and the loss is the Brier score 0.5 * ||onehot(argmax y) - t||^2 (0 when the
  sample is right, 1 when wrong; -log of a one-hot would be infinite).
tau anneals per training step: tau_t = max(tau_min, tau * exp(-anneal_rate * t)).
Evaluation uses softmax of the logits, without noise.

Honest cost note: the logits are still all C of them, so this head costs d*C like softmax,
plus C noise draws per example in training; it changes the training signal, not the cost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from heads._registry import register_head
from heads.base import dense_layer_bytes, madds
from heads.softmax import SoftmaxHead


@register_head(name="gumbel")
class GumbelSoftmaxHead(SoftmaxHead):
    cost_note = "all C logits plus C Gumbel draws: O(d*C) like softmax; it changes the training signal, not the cost."
    # Why it trails softmax on a small balanced set (the study report quotes it).
    trails_because = ("its training loss adds Gumbel noise to the logits (temperature tau), a regulariser whose "
                      "strength the search had few trials to tune")

    @classmethod
    def baseline(cls, num_classes):
        return {"head_tau": 1.0, "head_hard": False, "head_anneal_rate": 1e-5}  # soft, tau 1, ~no annealing

    @classmethod
    def suggest(cls, trial, num_classes, has_hierarchy=False):
        trial.suggest_float("head_tau", 0.2, 5.0, log=True)
        trial.suggest_categorical("head_hard", [False, True])
        trial.suggest_float("head_anneal_rate", 1e-5, 1e-2, log=True)  # per step
        return {}

    def __init__(self, in_features: int, num_classes: int, tau: float = 1.0, hard: bool = False,
                 anneal_rate: float = 0.0, tau_min: float = 0.1, label_smoothing: float = 0.0):
        super().__init__(in_features, num_classes, label_smoothing)
        if tau <= 0 or tau_min <= 0:
            raise ValueError(f"tau={tau} and tau_min={tau_min} must be > 0")
        if anneal_rate < 0:
            raise ValueError(f"anneal_rate={anneal_rate} must be >= 0 (per training step)")
        self.tau0, self.hard, self.anneal_rate, self.tau_min = float(tau), bool(hard), float(anneal_rate), float(tau_min)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training steps taken, checkpointed

    def current_tau(self) -> torch.Tensor:
        """Stays a device tensor: no host sync per step."""
        return (self.tau0 * torch.exp(-self.anneal_rate * self.step.float())).clamp(min=self.tau_min)

    def sample(self, features, tau=None, hard=None) -> torch.Tensor:
        """A relaxed (or straight-through one-hot) sample y, (B, C)."""
        return self._sample(self.logits(features), self.current_tau() if tau is None else tau,
                            self.hard if hard is None else hard)[0]

    @staticmethod
    def _sample(logits, tau, hard):
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp_(1e-10, 1.0)))
        log_y = F.log_softmax((logits + gumbel) / tau, dim=1)
        y = log_y.exp()
        if hard:
            one_hot = F.one_hot(y.argmax(1), logits.shape[1]).to(y.dtype)
            y = one_hot - y.detach() + y  # straight-through: forward one-hot, backward soft
        return y, log_y

    def loss(self, features, target):
        if not self.training:
            return super().loss(features, target)
        y, log_y = self._sample(self.logits(features), self.current_tau(), self.hard)
        eps, c = self.label_smoothing, self.num_classes
        t = F.one_hot(target, c).float() * (1 - eps) + eps / c
        self.step += 1
        if self.hard:
            return 0.5 * ((y - t) ** 2).sum(1).mean()
        return -(t * log_y).sum(1).mean()

    @classmethod
    def complexity(cls, in_features, num_classes, batch=256, states=1, **hp):
        d, c = in_features, num_classes
        # the noise: rand, log, log, add, divide, softmax, exp: about 8 more passes over (B, C)
        return madds(d * c, d * c, d * c, "d*C like softmax (plus C Gumbel draws per example in training)",
                     **dense_layer_bytes(batch, d, c, states, passes=12))
