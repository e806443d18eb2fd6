"""Metrics against confusion matrices worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmmc.evaluation.metrics import (
    abstentions,
    bootstrap_ci,
    calibration_bins,
    confusion_matrix,
    expected_calibration_error,
    metrics_from_confusion,
    per_class,
    summarize,
    top_k_accuracy,
)

# 4 classes; class 3 is absent from the test set but predicted once; one class-2 region has no answer (-1).
Y_TRUE = [0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 0, 1, 1, 3, 2, -1]


def test_confusion_and_abstentions():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert abstentions(Y_TRUE, Y_PRED, 4).tolist() == [0, 0, 1, 0]


def test_per_class_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    pc = per_class(cm, abstentions(Y_TRUE, Y_PRED, 4))
    assert pc["support"].tolist() == [3, 2, 2, 0]
    assert pc["tp"].tolist() == [2, 1, 1, 0]
    assert pc["fp"].tolist() == [0, 1, 0, 1]
    assert pc["fn"].tolist() == [1, 1, 1, 0]
    assert np.allclose(pc["precision"], [1.0, 0.5, 1.0, 0.0])
    assert np.allclose(pc["recall"][:3], [2 / 3, 1 / 2, 1 / 2]) and math.isnan(pc["recall"][3])
    # IoU = TP / (TP + FP + FN)
    assert np.allclose(pc["iou"], [2 / 3, 1 / 3, 1 / 2, 0.0])


def test_means_exclude_absent_classes():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    m = metrics_from_confusion(cm, abstentions(Y_TRUE, Y_PRED, 4))
    assert m["n"] == 7
    assert m["acc"] == pytest.approx(4 / 7)  # the abstention counts as wrong
    assert m["macc"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)  # class 3 (absent) left out
    assert m["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert m["present"].tolist() == [True, True, True, False]


def test_perfect_and_empty():
    cm = confusion_matrix([0, 1, 1], [0, 1, 1], 3)
    m = metrics_from_confusion(cm)
    assert (m["acc"], m["macc"], m["miou"]) == (1.0, 1.0, 1.0)
    empty = metrics_from_confusion(np.zeros((2, 2), dtype=int))
    assert math.isnan(empty["acc"]) and math.isnan(empty["macc"])


def test_confusion_rejects_bad_indices():
    with pytest.raises(ValueError, match="y_true"):
        confusion_matrix([0, 5], [0, 1], 3)
    with pytest.raises(ValueError, match="y_pred"):
        confusion_matrix([0, 1], [0, -2], 3)
    with pytest.raises(ValueError, match="entries"):
        confusion_matrix([0, 1], [0], 3)


def test_top_k():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3], [0.0, 0.0, 0.0]])
    y = [1, 2, 0, 0]
    assert top_k_accuracy(probs, y, 1) == pytest.approx(1 / 4)  # only row 1
    assert top_k_accuracy(probs, y, 2) == pytest.approx(2 / 4)  # + row 0 (class 1 second); row 2's 0 is third
    assert top_k_accuracy(probs, y, 3) == pytest.approx(3 / 4)  # the all-zero row (no answer) is never right
    assert top_k_accuracy(probs, y, 10) == pytest.approx(3 / 4)


def test_ece_by_hand():
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1])
    # 15 bins: 0.95 -> bin 14 (acc 0.5, conf 0.95), 0.55 -> bin 8 (acc 1.0, conf 0.55); each holds half
    bins = calibration_bins(conf, correct)
    assert bins["count"][14] == 2 and bins["count"][8] == 2 and bins["count"].sum() == 4
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    # bin edges: 1/15 belongs to the first bin, a hair above it to the second; 0 and 1 to the ends
    b = calibration_bins(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0]), np.ones(4))
    assert b["count"][0] == 2 and b["count"][1] == 1 and b["count"][14] == 1
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.7, y, (y + 1) % 4)
    a = bootstrap_ci(y, p, 4, n_boot=300, seed=1)
    b = bootstrap_ci(y, p, 4, n_boot=300, seed=1)
    assert a == b
    acc = float(np.mean(p == y))
    assert a["acc"][0] < acc < a["acc"][1]
    assert 0.55 < a["acc"][0] and a["acc"][1] < 0.85
    assert a["macc"][0] < a["macc"][1]
    assert bootstrap_ci([0, 1], [0, 1], 2, n_boot=50) == {"acc": (1.0, 1.0), "macc": (1.0, 1.0)}
    assert bootstrap_ci(y, p, 4, n_boot=300, seed=2) != a


def test_summarize_json_ready():
    probs = np.zeros((7, 4))
    for i, k in enumerate(Y_PRED):
        if k >= 0:
            probs[i, k] = 0.8
            probs[i, (k + 1) % 4] = 0.2
    s = summarize(Y_TRUE, Y_PRED, probs, ["a", "b", "c", "d"], n_boot=100)
    assert s["acc"] == pytest.approx(4 / 7) and s["abstained"] == 1
    assert s["classes_present"] == ["a", "b", "c"]
    assert set(s["per_class"]) == {"a", "b", "c", "d"}  # d: predicted, support 0
    assert s["per_class"]["d"]["support"] == 0 and s["per_class"]["d"]["recall"] is None
    assert s["confusion"]["matrix"][1] == [0, 1, 0, 1]
    assert len(s["calibration"]["count"]) == 15 and sum(s["calibration"]["count"]) == 7
