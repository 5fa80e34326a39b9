"""Standard softmax output layer: one linear map to C logits, normalised over all C classes.

Cost O(d*C) per example for training, the full distribution and prediction alike.
"""
import torch
import torch.nn.functional as F
from torch import nn

from heads._registry import register_head
from heads.base import Head, dense_layer_bytes, madds, smoothed_nll


@register_head(name="softmax")
class SoftmaxHead(Head):
    cost_note = "one d x C matrix: O(d*C) to train, to normalise and to predict."
    trails_because = ""  # the reference every other head is compared with

    @classmethod
    def suggest(cls, trial, num_classes, has_hierarchy=False):
        return {}  # no options of its own; label smoothing is a training key

    def __init__(self, in_features: int, num_classes: int, label_smoothing: float = 0.0):
        super().__init__(in_features, num_classes, label_smoothing)
        self.fc = nn.Linear(in_features, num_classes)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features).float()  # fp32 softmax even under bf16 autocast

    def loss(self, features, target):
        return smoothed_nll(F.log_softmax(self.logits(features), dim=1), target, self.label_smoothing).mean()

    def log_prob(self, features):
        return F.log_softmax(self.logits(features), dim=1)

    def predict(self, features):
        return self.logits(features).argmax(dim=1)  # no normalisation needed

    @classmethod
    def complexity(cls, in_features, num_classes, batch=256, states=1, **hp):
        d, c = in_features, num_classes
        return madds(d * c, d * c, d * c, "d*C for training, log_prob and predict",
                     **dense_layer_bytes(batch, d, c, states))
