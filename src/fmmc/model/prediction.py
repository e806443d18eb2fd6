"""What a classifier returns and takes in memory: :class:`Prediction` (calibrated probabilities for one
region), :class:`RegionInput` (one region to classify) and the ``classes`` argument's forms.

    >>> pred = Prediction(np.array([0.1, 0.9]), ("metal", "wood"))
    >>> pred.label, pred.top(1)
    ('wood', [('wood', 0.9)])
    >>> parse_classes("wood, metal"), parse_classes("all"), parse_classes("")
    (['wood', 'metal'], 'all', None)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["ALL_CLASSES", "Classes", "Prediction", "RegionInput", "parse_classes"]

ALL_CLASSES = "all"  # classes="all": the whole taxonomy, not only the trained classes
Classes = list[str] | tuple[str, ...] | str | None  # None: the trained classes | "all" | names


def parse_classes(text: str | None) -> list[str] | str | None:
    """A ``--classes`` flag or ``classes`` form field: empty -> None (the model's trained classes), ``all`` ->
    ``"all"`` (the whole taxonomy), ``"wood, metal"`` -> ``["wood", "metal"]``."""
    if text is None or not text.strip():
        return None
    if text.strip().lower() == ALL_CLASSES:
        return ALL_CLASSES
    return [c.strip() for c in text.split(",") if c.strip()]


@dataclass
class Prediction:
    """Calibrated class probabilities for one region."""

    probs: np.ndarray  # [K], sums to 1
    labels: tuple[str, ...]
    id: str = ""
    mask: np.ndarray | None = None  # the region used (bool [H, W]) when it was derived from a prompt
    description: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    candidates: tuple[int, ...] | None = None  # the label indices it chose among (None: every label)

    @property
    def label(self) -> str:
        return self.labels[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable of the classes it chose among (never a class the model was not asked
        about, at 0), highest first; ties in label order."""
        order = [int(i) for i in np.argsort(-self.probs, kind="stable")]
        if self.candidates is not None:
            allowed = set(self.candidates)
            order = [i for i in order if i in allowed]
        return [(self.labels[i], float(self.probs[i])) for i in order[:k]]

    def to_json(self, k: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "label": self.label, "confidence": round(self.confidence, 6),
                               "top": [{"label": lab, "prob": round(p, 6)} for lab, p in self.top(k)]}
        if self.description is not None:
            out["description"] = self.description
        if self.mask is not None:
            from fmmc.grounding.prompts import mask_summary

            out["mask"] = mask_summary(self.mask)
        out.update(self.extra)
        return out


@dataclass
class RegionInput:
    """One in-memory region to classify: an RGB image, its mask (None = whole image), the language-stream
    text (None: the model's describer writes it) and the classes to choose among (names; None = the classes
    the model was trained on; ``"all"`` = the whole taxonomy)."""

    image: Image.Image
    mask: np.ndarray | None = None
    description: str | None = None
    classes: Classes = None
