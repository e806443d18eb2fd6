"""Classification metrics from a confusion matrix: small, pure and checkable by hand.

    >>> cm = confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1], num_classes=3)
    >>> cm.tolist()
    [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    >>> accuracy(cm), mean_class_accuracy(cm)
    (0.75, 0.75)

Rows are true classes, columns predicted ones. Classes absent from the ground truth have no accuracy
(NaN) and do not count in the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = how many regions of true class ``i`` were predicted as ``j`` (int64 ``[K, K]``)."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape} vs {p.shape}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"class indices must be in [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN where the class has no true regions)."""
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def mean_class_accuracy(cm: np.ndarray) -> float:
    """The mean of per-class accuracies over classes present in the ground truth (mAcc)."""
    acc = per_class_accuracy(cm)
    return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")


def summarize(cm: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, mean class accuracy, per-class accuracy and support, as plain JSON-ready values."""
    acc = per_class_accuracy(cm)
    support = cm.sum(axis=1)
    return {
        "accuracy": accuracy(cm),
        "mean_class_accuracy": mean_class_accuracy(cm),
        "n": int(cm.sum()),
        "per_class": {lab: {"accuracy": float(a), "support": int(s)}
                      for lab, a, s in zip(labels, acc, support) if s > 0},
    }
