"""Pure pooling math: a mask reduced to the patch grid, features pooled inside it.

Grid rule (documented, never loses a small region): each grid cell's *coverage* is the fraction of its
pixels inside the mask, computed at the mask's own resolution by area averaging. A cell belongs to the
region when coverage >= ``min_coverage`` (default 0.5). If no cell reaches it (a region smaller than
about half a patch), the cells with the highest coverage are used instead, so every non-empty mask
selects at least one cell. ``min_coverage=0`` reproduces the paper's "any pixel" rule (M > 0).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

POOLINGS = ("max", "mean", "cls")


def mask_coverage(mask: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each of the ``grid`` (h, w) cells covered by ``mask`` [H, W] (bool/0-1)."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    if m.dim() != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {tuple(m.shape)}")
    return F.adaptive_avg_pool2d(m[None, None], grid)[0, 0]


def mask_to_grid(mask: np.ndarray | torch.Tensor | None, grid: tuple[int, int], min_coverage: float = 0.5) -> torch.Tensor:
    """Bool ``[h, w]`` of grid cells inside the region; ``None`` (null mask) selects every cell."""
    if mask is None:
        return torch.ones(grid, dtype=torch.bool)
    cov = mask_coverage(mask, grid)
    peak = float(cov.max())
    if peak <= 0:
        raise ValueError("mask is empty: no pixel is inside the region")
    if min_coverage <= 0:
        return cov > 0
    sel = cov >= min_coverage
    if not bool(sel.any()):
        sel = cov >= peak - 1e-6
    return sel


def pool(feature_map: torch.Tensor, cells: torch.Tensor, how: str = "max", cls: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``feature_map`` [B, C, h, w] over ``cells`` [B, h, w] (bool) -> [B, C].

    ``max``: the paper's masked max-pool; ``mean``: masked average; ``cls``: the model's global token
    (ignores the mask; falls back to a global mean for models without one).
    """
    if how not in POOLINGS:
        raise ValueError(f"unknown pooling {how!r}; choose one of {POOLINGS}")
    if cells.dim() == 2:
        cells = cells[None].expand(feature_map.shape[0], -1, -1)
    if tuple(cells.shape[-2:]) != tuple(feature_map.shape[-2:]):
        raise ValueError(f"cell grid {tuple(cells.shape[-2:])} != feature grid {tuple(feature_map.shape[-2:])}")
    m = cells[:, None].to(feature_map.device)
    if how == "cls":
        return cls if cls is not None else feature_map.mean(dim=(2, 3))
    if how == "max":
        neg = torch.finfo(feature_map.dtype).min
        return feature_map.masked_fill(~m, neg).amax(dim=(2, 3))
    w = m.to(feature_map.dtype)
    return (feature_map * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1)
