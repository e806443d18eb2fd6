"""Pure mask geometry shared by every room: bounding boxes and outlines of bool masks ``[H, W]``.

    >>> import numpy as np
    >>> m = np.zeros((4, 6), bool); m[1:3, 2:5] = True
    >>> mask_bbox(m)
    (2, 1, 5, 3)
"""

from __future__ import annotations

import numpy as np


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of the True pixels (right/bottom exclusive), None for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _box_filter_count(mask: np.ndarray, r: int) -> np.ndarray:
    """Number of True pixels in the (2r+1)^2 window around each pixel (zero padding), via an integral image."""
    h, w = mask.shape
    padded = np.pad(mask.astype(np.int32), r + 1)
    ii = padded.cumsum(0).cumsum(1)
    k = 2 * r + 1
    return ii[k:k + h, k:k + w] - ii[0:h, k:k + w] - ii[k:k + h, 0:w] + ii[0:h, 0:w]


def mask_outline(mask: np.ndarray, width: int) -> np.ndarray:
    """A bool band about ``width`` pixels wide along the mask's boundary (half inside, half outside)."""
    r = max(1, width // 2)
    count = _box_filter_count(np.asarray(mask, dtype=bool), r)
    return (count > 0) & (count < (2 * r + 1) ** 2)
