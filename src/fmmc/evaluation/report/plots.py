"""Figures for reports: confusion matrix, reliability diagram, data-scale curve (matplotlib, no pyplot state).

Uses ``matplotlib.figure.Figure`` directly, so no GUI backend is selected and nothing global changes.
matplotlib is the ``report`` extra; without it, plotting functions return False and log why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _figure(w: float, h: float) -> Any | None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no figures (pip install 'fmmc[report]')")
        return None
    return Figure(figsize=(w, h), dpi=110)


def confusion_png(cm: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: Path, title: str = "") -> bool:
    """Row-normalised confusion matrix (true class per row) with counts in the cells."""
    cm = np.asarray(cm, dtype=np.float64)
    n = max(len(rows), len(cols))
    fig = _figure(2.5 + 0.45 * len(cols), 2.0 + 0.4 * len(rows))
    if fig is None:
        return False
    ax = fig.add_subplot()
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of the true class")
    ax.set_title(title or "confusion matrix", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return True


def reliability_png(calibration: dict[str, Any], ece: float, path: Path, title: str = "") -> bool:
    """Accuracy per confidence bin against the diagonal, with bin counts below."""
    fig = _figure(4.2, 4.6)
    if fig is None:
        return False
    n_bins = int(calibration["bins"])
    edges = np.linspace(0, 1, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    acc = np.array([np.nan if v is None else v for v in calibration["accuracy"]], dtype=float)
    conf = np.array([np.nan if v is None else v for v in calibration["confidence"]], dtype=float)
    count = np.asarray(calibration["count"], dtype=float)
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    ok = count > 0
    ax.bar(centers[ok], acc[ok], width=1 / n_bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot(conf[ok], acc[ok], "o", color="tab:red", markersize=3, label="bin (mean confidence, accuracy)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"reliability (ECE {ece:.3f}, {n_bins} bins)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax2.bar(centers, count, width=1 / n_bins, color="tab:grey")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("regions")
    ax2.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path)
    return True


def curve_png(series: dict[str, list[tuple[float, float]]], path: Path, xlabel: str, ylabel: str,
              title: str = "", paper: dict[str, list[tuple[float, float]]] | None = None) -> bool:
    """Lines of (x, y) points, one per series; ``paper`` points drawn as hollow markers."""
    fig = _figure(5.0, 3.6)
    if fig is None:
        return False
    ax = fig.add_subplot()
    for k, (name, pts) in enumerate(series.items()):
        pts = sorted(p for p in pts if p[1] is not None and np.isfinite(p[1]))
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-", color=f"C{k}", label=name)
        for pname, ppts in (paper or {}).items():
            if pname == name and ppts:
                px, py = zip(*sorted(ppts))
                ax.plot(px, py, "s", mfc="none", color=f"C{k}", label=f"{name} (paper)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return True
