"""Sampled softmax (Jean et al. 2015; Bengio & Senecal 2008), training only.

Each step draws k negative classes (shared by the batch, with replacement) from a
proposal Q: uniform, or log-uniform (Zipf: Q(c) = log((c+2)/(c+1)) / log(C+1), which
suits classes ranked by frequency). Logits of the true and sampled classes are
corrected by -log(k*Q(c)) (expected count), accidental hits (a sample equal to the
target) are removed, and the loss is cross-entropy over [true, samples]: cost d*(k+1).
In eval mode, log_prob, predict and loss use the full softmax (d*C).

By default the batch's other targets are negatives too (mixed negative sampling, Yang et al.
2020): B + k candidates for d*(B+k) per example, their logits corrected by the log of the
expected count k*Q(c) + B/C, repeats of the example's own class removed. k shared samples
alone are too few negatives per class at many classes: on the 1,600-class image set (README)
they reached 1.1% test accuracy where softmax reached 4.0% and the mixed candidates more.
`batch_negatives=False` is the plain k-sample loss, d*(k+1).

Row-sparse by default: one lookup of the rows [targets, samples] whose gradient holds only
those rows, and the engine's lazy optimizer updates only them (see `heads.speed.sparse` for what
that changes against a dense update: untouched rows keep their momentum and are not decayed
that step). On CPU the row-sparse step runs on one thread: its few dozen ops over a few hundred
rows are faster there than with the other threads woken for each (`heads.speed.sparse.one_thread`).
`dense=True` is the dense gradient and dense optimizer update of every row.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from heads._registry import register_head
from heads.base import F32, dense_layer_bytes, madds, update_bytes
from heads.softmax import SoftmaxHead
from heads.speed.sparse import on_one_thread, rows

PROPOSALS = ("uniform", "log_uniform")


@register_head(name="sampled")
class SampledSoftmaxHead(SoftmaxHead):
    supports_label_smoothing = False
    cost_note = ("the batch's targets and k sampled classes in training, O(d*(B+k)) (O(d*(k+1)) with "
                 "batch_negatives=false); evaluation is the full O(d*C) softmax.")
    # Why it trails softmax on a small balanced set (the study report quotes it).
    trails_because = ("its training loss sees the batch's targets and k sampled classes, not all C; at C = 100 it "
                      "saves nothing and its gradient is a noisier estimate of softmax's")

    @classmethod
    def suggest(cls, trial, num_classes, has_hierarchy=False):
        trial.suggest_int("head_num_sampled", min(4, num_classes - 1), max(min(4, num_classes - 1), num_classes // 2),
                          log=True)
        return {}

    @classmethod
    def baseline(cls, num_classes):
        return {"head_num_sampled": 64}  # the default, clipped into the range

    def __init__(self, in_features: int, num_classes: int, num_sampled: int = 64, proposal: str = "uniform",
                 batch_negatives: bool = True, dense: bool = False, label_smoothing: float = 0.0):
        super().__init__(in_features, num_classes, label_smoothing)
        if not 1 <= num_sampled < num_classes:
            raise ValueError(f"num_sampled (k)={num_sampled} must be in [1, num_classes={num_classes})")
        if proposal not in PROPOSALS:
            raise ValueError(f"proposal={proposal!r} is not one of {PROPOSALS}")
        self.num_sampled, self.proposal, self.dense = num_sampled, proposal, dense
        self.batch_negatives = batch_negatives

    def hparams(self):
        return {"num_sampled": self.num_sampled, "batch_negatives": self.batch_negatives, "dense": self.dense}

    def sparse_parameters(self) -> list:
        return [] if self.dense else [self.fc.weight, self.fc.bias]

    def _log_q(self, classes: torch.Tensor) -> torch.Tensor:
        if self.proposal == "uniform":
            return torch.full(classes.shape, -math.log(self.num_classes), device=classes.device)
        c = classes.float()
        return torch.log(torch.log((c + 2) / (c + 1)) / math.log(self.num_classes + 1))

    def sample(self, device) -> torch.Tensor:
        k, n = self.num_sampled, self.num_classes
        if self.proposal == "uniform":
            return torch.randint(0, n, (k,), device=device)
        u = torch.rand(k, device=device)  # inverse CDF of the log-uniform distribution
        return (torch.exp(u * math.log(n + 1)).floor().long() - 1).clamp_(0, n - 1)

    def loss(self, features, target):
        if not self.training:
            return super().loss(features, target)
        sampled = self.sample(features.device)
        index = torch.cat([target, sampled])  # one lookup for both
        if self.dense:
            return self._candidate_loss(features, target, sampled, index, self.fc.weight, self.fc.bias)
        # A few hundred rows: on CPU the step is faster on one thread (heads.speed.sparse.one_thread).
        work = len(index) * max(features.shape[1], len(target))  # the rows looked up, or the logits
        return on_one_thread(self._candidate_loss, work, features, target, sampled, index, self.fc.weight,
                             self.fc.bias)

    def _candidate_loss(self, features, target, sampled, index, weight, bias):
        n = len(target)
        w, b = (weight[index], bias[index]) if self.dense else rows(index, weight, bias)
        if self.batch_negatives:
            return self._loss_with_batch(features, target, index, w, b)
        log_k = math.log(self.num_sampled)
        # split, not slices: the backward of a slice zero-fills a gradient of the whole block
        (w_true, w_neg), (b_true, b_neg) = w.split([n, len(sampled)]), b.split([n, len(sampled)])
        true_logit = (features * w_true).sum(1) + b_true - (log_k + self._log_q(target))
        neg = features @ w_neg.t() + b_neg - (log_k + self._log_q(sampled))
        neg = neg.float().masked_fill(sampled[None, :] == target[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([true_logit.float()[:, None], neg], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(target))

    def _loss_with_batch(self, features, target, index, w, b):
        """Candidates are the batch's targets and the k samples (mixed negative sampling): example i's
        positive is column i, every other column of another class is a negative. A class's logit
        is corrected by the log of its expected count among the candidates, k*Q(c) + n/C (the
        batch's targets taken as uniform draws over classes), and columns of the example's own
        class other than its own (repeats in the batch, accidental hits) are removed."""
        n = len(target)
        log_count = torch.logaddexp(math.log(self.num_sampled) + self._log_q(index),
                                    torch.tensor(math.log(n / self.num_classes), device=index.device))
        logits = (features @ w.t() + b).float() - log_count  # (n, n + k)
        own = torch.arange(n, device=target.device)
        hits = index[None, :] == target[:, None]
        hits[own, own] = False
        return F.cross_entropy(logits.masked_fill(hits, float("-inf")), own)

    @classmethod
    def complexity(cls, in_features, num_classes, num_sampled=64, batch_negatives=True, dense=False, batch=256,
                   states=1, **hp):
        d, c = in_features, num_classes
        candidates = num_sampled + (batch if batch_negatives else 1)  # logits per example
        r = (batch + num_sampled) * d  # the rows looked up: targets and samples
        full = dense_layer_bytes(batch, d, c, states)
        if dense:  # a zero-filled C x d gradient, rows added into it, and the update of every row
            train = 3 * r * F32 + c * d * F32 + 2 * r * F32 + update_bytes(c * d, states)
        else:  # lookup (copy) and matmul, row gradients, their coalescing (a sort), the lazy update
            train = 6 * r * F32 + update_bytes(r, states, lazy=True)
        what = "d*(k+B), the batch's targets too" if batch_negatives else "d*(k+1)"
        return madds(d * candidates, d * c, d * c, f"training {what} with k={num_sampled}; log_prob, predict d*C",
                     train_bytes=train, log_prob_bytes=full["log_prob_bytes"], predict_bytes=full["predict_bytes"])
