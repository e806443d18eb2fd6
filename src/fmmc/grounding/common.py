"""Plain types and numpy box/mask ops shared by the grounder, the segmenter and the labeler.

Nothing here imports torch, so decision logic built on these types stays cheap to import and test::

    >>> box_iou((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    >>> nms([Detection((0, 0, 10, 10), 0.9, "cup"), Detection((1, 0, 11, 10), 0.8, "cup")], 0.5)
    [Detection(box=(0, 0, 10, 10), score=0.9, phrase='cup')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class Detection:
    """One grounded box: pixel coordinates ``(x0, y0, x1, y1)``, confidence, and the matched text."""

    box: Box
    score: float
    phrase: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4),
                "phrase": self.phrase}


@dataclass
class MaskResult:
    """One mask: bool ``[H, W]`` at the image's size, the model's predicted IoU, and its stability."""

    mask: np.ndarray
    score: float
    stability: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def area_frac(self) -> float:
        return self.area / max(1, self.mask.size)

    @property
    def box(self) -> Box | None:
        """Tight bounding box of the mask (exclusive right/bottom edge), None when empty."""
        return mask_to_box(self.mask)


def box_area(box: Sequence[float]) -> float:
    return max(0.0, float(box[2]) - float(box[0])) * max(0.0, float(box[3]) - float(box[1]))


def box_intersection(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return float(max(0.0, w) * max(0.0, h))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = box_intersection(a, b)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def box_overlap_min(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box: 1.0 when one box lies inside the other (a part, or a duplicate)."""
    smaller = min(box_area(a), box_area(b))
    return box_intersection(a, b) / smaller if smaller > 0 else 0.0


def clip_box(box: Sequence[float], size: tuple[int, int]) -> Box:
    """Clip ``box`` to an image of ``size`` = (width, height)."""
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    return (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))


def nms(detections: Sequence[Detection], iou_threshold: float) -> list[Detection]:
    """Greedy class-agnostic non-maximum suppression; keeps the higher score, returns best first."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: -d.score):
        if all(box_iou(det.box, k.box) <= iou_threshold for k in kept):
            kept.append(det)
    return kept


def mask_to_box(mask: np.ndarray) -> Box | None:
    from fmmc.data.masks import mask_bbox

    box = mask_bbox(mask)
    return None if box is None else tuple(float(v) for v in box)  # type: ignore[return-value]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return float(inter / union) if union else 0.0


def resolve_dtype(dtype: str | None) -> Any:
    """``None``/``"float32"``/``"bfloat16"``/``"float16"`` -> a torch dtype."""
    import torch

    names = {None: torch.float32, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    key = dtype.lower() if isinstance(dtype, str) else dtype
    if key not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return names[key]
