"""How the demo scores a trained classifier on labelled regions (the demo itself, its choice of profile by
validation photos, and ``benchmarks/bench_accuracy.py`` all use this one function)."""

from __future__ import annotations

from typing import Any

import numpy as np


def score_model(model: Any, regions: list[Any], labels: list[str], seed: int = 0, progress: bool = False
                ) -> tuple[dict[str, Any], np.ndarray, list[Any]]:
    """A trained classifier on labelled regions, choosing among ``labels``: (the demo's metrics of one stream:
    accuracy, mean class accuracy, interval, top-3, ECE, per class; the confusion matrix; the predictions)."""
    from fmmc.evaluation.metrics import summarize

    label_idx = [model.taxonomy.index(lab) for lab in labels]
    preds, failures = model.predict_regions(regions, classes=labels, progress=progress)
    if failures:
        raise RuntimeError(f"{len(failures)} regions failed, first: {failures[0]}")
    truth = np.array([labels.index(r.label) for r in regions])
    pred_idx = np.array([labels.index(p.label) for p in preds])
    probs = np.stack([p.probs[label_idx] for p in preds])
    m = summarize(truth, pred_idx, probs, labels, seed=seed)
    out = {"accuracy": m["acc"], "mean_class_accuracy": m["macc"], "n": m["n"], "ci95": m["ci95"], "top3": m["top3"],
           "ece": m["ece"], "per_class": {c: {"accuracy": v["recall"], "support": v["support"]}
                                         for c, v in m["per_class"].items() if v["support"]}}
    return out, np.asarray(m["confusion"]["matrix"]), preds
