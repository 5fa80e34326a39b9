"""Test-set metrics of one model from its (N, C) log-probabilities.

scikit-learn computes everything it has; expected calibration error (not in
scikit-learn) is the usual equal-width-bin estimate (Guo et al. 2017).
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """sum over confidence bins of |accuracy - mean confidence| weighted by the bin's share."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == y_true).astype(float)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)  # equal-width bins on [0, 1]
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _roc_auc(y_true: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> float:
    """One-vs-rest macro ROC AUC; NaN when a class has no test example (AUC undefined)."""
    if len(np.unique(y_true)) < len(labels):
        return float("nan")
    return float(skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels))


def classification_metrics(y_true: np.ndarray, log_probs: np.ndarray,
                           class_to_group: np.ndarray | None = None) -> dict:
    """Every metric of the final table, plus the confusion matrices (fine, and coarse where a hierarchy exists)."""
    probs = np.exp(log_probs.astype(np.float64))
    probs /= probs.sum(axis=1, keepdims=True)  # exact normalisation for scikit-learn's checks
    labels = np.arange(probs.shape[1])
    y_pred = probs.argmax(axis=1)
    out = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "top5_accuracy": skm.top_k_accuracy_score(y_true, probs, k=min(5, len(labels) - 1), labels=labels),
        "cohen_kappa": skm.cohen_kappa_score(y_true, y_pred),
        "roc_auc_ovr_macro": _roc_auc(y_true, probs, labels),
        "log_loss": skm.log_loss(y_true, probs, labels=labels),
        "ece": expected_calibration_error(probs, y_true),
        "confusion": skm.confusion_matrix(y_true, y_pred, labels=labels),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, labels=labels,
                                                         zero_division=0)
        out.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
    if class_to_group is not None:
        groups = np.asarray(class_to_group)
        out["superclass_accuracy"] = skm.accuracy_score(groups[y_true], groups[y_pred])
        out["confusion_coarse"] = skm.confusion_matrix(groups[y_true], groups[y_pred],
                                                       labels=np.arange(groups.max() + 1))
    return {k: (float(v) if np.isscalar(v) else v) for k, v in out.items()}
