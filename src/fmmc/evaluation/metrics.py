"""Classification metrics from a confusion matrix: pure numpy functions, checked by hand in the tests.

    >>> import numpy as np
    >>> cm = confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1], num_classes=2)
    >>> cm.tolist()
    [[1, 1], [0, 2]]
    >>> m = metrics_from_confusion(cm)
    >>> m["acc"], m["macc"], round(m["miou"], 4)
    (0.75, 0.75, 0.5833)

Conventions (the paper's Tables 3-5 report mIoU|mAcc computed from the region confusion matrix):

* ``cm[i, j]`` counts regions of true class ``i`` predicted as ``j``.
* A region the model could not answer (an unparseable VLM reply, an unreadable image) is an *abstention*:
  it counts in its true class's total (so it lowers recall and accuracy) but as no class's false positive.
* Per class: recall (accuracy of the class) = TP / (TP + FN), precision = TP / (TP + FP),
  IoU = TP / (TP + FP + FN). Undefined values (0 / 0) are NaN.
* Mean metrics (mAcc, mIoU) average over the classes *present in the test set* (support > 0) only.
  Classes absent from the test set are excluded even when the model predicted them: their IoU would
  be 0 whatever the model did, and their recall is undefined. FMD has 10 of the 21 classes, so its
  mIoU|mAcc average over those 10.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 15


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """``[K, K]`` int64 counts; predictions of -1 (abstentions) are left out (see :func:`abstentions`)."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape} entries but y_pred has {p.shape}")
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"y_true values must be class indices in [0, {num_classes})")
    if p.size and (p.min() < -1 or p.max() >= num_classes):
        raise ValueError(f"y_pred values must be class indices in [0, {num_classes}) or -1 (no answer)")
    keep = p >= 0
    flat = t[keep] * num_classes + p[keep]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def abstentions(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                num_classes: int) -> np.ndarray:
    """``[K]`` count of regions of each true class with no prediction (``y_pred == -1``)."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(t[p < 0], minlength=num_classes)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def per_class(cm: np.ndarray, abstain: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-class ``support``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``iou`` (NaN where 0/0)."""
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    abst = np.zeros(k, dtype=np.int64) if abstain is None else np.asarray(abstain, dtype=np.int64)
    tp = np.diag(cm)
    support = cm.sum(axis=1) + abst
    fn = support - tp
    fp = cm.sum(axis=0) - tp
    return {
        "support": support, "tp": tp, "fp": fp, "fn": fn,
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, support),
        "iou": _div(tp, tp + fp + fn),
    }


def metrics_from_confusion(cm: np.ndarray, abstain: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, mAcc and mIoU (means over the classes present in the test set), plus per-class arrays."""
    pc = per_class(cm, abstain)
    present = pc["support"] > 0
    n = int(pc["support"].sum())
    return {
        "n": n,
        "acc": float(pc["tp"].sum() / n) if n else float("nan"),
        "macc": float(np.mean(pc["recall"][present])) if present.any() else float("nan"),
        "miou": float(np.mean(pc["iou"][present])) if present.any() else float("nan"),
        "present": present,
        **pc,
    }


def top_k_accuracy(probs: np.ndarray, y_true: Sequence[int] | np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the ``k`` highest scores (ties broken by class order).

    Rows of all zeros (abstentions) count as wrong.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.int64)
    if len(t) == 0:
        return float("nan")
    k = min(k, p.shape[1])
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    hit = (order == t[:, None]).any(axis=1) & (p.max(axis=1) > 0)
    return float(hit.mean())


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Equal-width confidence bins over (0, 1]: per bin ``count``, mean ``confidence``, ``accuracy``.

    Bin ``b`` holds confidences in ``(b/n, (b+1)/n]``; a confidence of exactly 0 goes to the first bin.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    corr_sum = np.bincount(idx, weights=corr, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "confidence": _div(conf_sum, count),
        "accuracy": _div(corr_sum, count),
    }


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)| (Guo et al. 2017)."""
    bins = calibration_bins(confidence, correct, n_bins)
    n = int(bins["count"].sum())
    if n == 0:
        return float("nan")
    used = bins["count"] > 0
    gap = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float(np.sum(bins["count"][used] / n * gap))


def bootstrap_ci(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals for accuracy and mAcc (regions resampled with replacement).

    mAcc in each resample averages over the classes present in that resample. Seeded: same inputs, same CIs.
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    n = len(t)
    if n == 0 or n_boot <= 0:
        return {"acc": (float("nan"), float("nan")), "macc": (float("nan"), float("nan"))}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    correct = (p == t).astype(np.float64)
    acc = correct[idx].mean(axis=1)
    # per-resample, per-class counts via one bincount over (resample, class) pairs
    flat = (np.arange(n_boot)[:, None] * num_classes + t[idx]).ravel()
    total = np.bincount(flat, minlength=n_boot * num_classes).reshape(n_boot, num_classes)
    hits = np.bincount(flat, weights=correct[idx].ravel(), minlength=n_boot * num_classes).reshape(n_boot, num_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(total > 0, hits / np.maximum(total, 1), np.nan)
    macc = np.nanmean(recall, axis=1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        "acc": (float(np.percentile(acc, lo)), float(np.percentile(acc, hi))),
        "macc": (float(np.percentile(macc, lo)), float(np.percentile(macc, hi))),
    }


def summarize(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, probs: np.ndarray,
              labels: Sequence[str], top_k: Sequence[int] = (1, 3, 5), n_boot: int = 1000, seed: int = 0,
              n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Every metric of an evaluation as a JSON-ready dict (per-class entries for present or predicted classes)."""
    k = len(labels)
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    pr = np.asarray(probs, dtype=np.float64).reshape(len(t), k)
    cm = confusion_matrix(t, p, k)
    abst = abstentions(t, p, k)
    m = metrics_from_confusion(cm, abst)
    conf = pr.max(axis=1) if len(t) else np.zeros(0)
    correct = p == t
    bins = calibration_bins(conf, correct, n_bins)
    ci = bootstrap_ci(t, p, k, n_boot=n_boot, seed=seed)
    shown = [i for i in range(k) if m["support"][i] > 0 or cm[:, i].sum() > 0]
    return {
        "n": m["n"],
        "acc": m["acc"],
        "macc": m["macc"],
        "miou": m["miou"],
        **{f"top{j}": top_k_accuracy(pr, t, j) for j in top_k},
        "ece": expected_calibration_error(conf, correct, n_bins),
        "ci95": {"acc": list(ci["acc"]), "macc": list(ci["macc"]), "n_boot": n_boot, "seed": seed},
        "abstained": int(abst.sum()),
        "classes_present": [labels[i] for i in range(k) if m["present"][i]],
        "per_class": {
            labels[i]: {
                "support": int(m["support"][i]), "tp": int(m["tp"][i]), "fp": int(m["fp"][i]), "fn": int(m["fn"][i]),
                "abstained": int(abst[i]), "precision": _nan_none(m["precision"][i]),
                "recall": _nan_none(m["recall"][i]), "iou": _nan_none(m["iou"][i]),
            }
            for i in shown
        },
        "calibration": {"bins": n_bins, "count": bins["count"].tolist(),
                        "confidence": [_nan_none(v) for v in bins["confidence"]],
                        "accuracy": [_nan_none(v) for v in bins["accuracy"]]},
        "confusion": {"labels": list(labels), "matrix": cm.tolist(), "abstained": abst.tolist()},
    }


def _nan_none(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)
