"""Pure pooling math: a mask reduced to the patch grid, features pooled inside it.

Grid rule (documented, never loses a small region): each grid cell's *coverage* is the fraction of its
pixels inside the mask, computed at the mask's own resolution by area averaging. A cell belongs to the
region when coverage >= ``min_coverage`` (default 0.5). If no cell reaches it (a region smaller than
about half a patch), the cells with the highest coverage are used instead, so every non-empty mask
selects at least one cell. ``min_coverage=0`` reproduces the paper's "any pixel" rule (M > 0).

Pooling spec (``FeatureSpec.pooling``): one part or several joined by ``+`` (``max``, ``max+mean``,
``max+mean+gem``, ``cls+mean``), each pooled inside the mask and concatenated in the order written, so
the width is (number of parts) x C. Parts: ``max`` (the paper's masked max-pool), ``mean``, ``gem``
(generalised mean, Radenovic et al.: ``(mean(clamp_min(x, eps) ** p)) ** (1 / p)`` with ``p = 3``,
``eps = 1e-6``; activations below eps, negative ones included, count as eps, as in the literature, so
on signed ViT tokens GeM summarises the positive part only), ``cls`` (the global token, ignores the mask).

Other grids (:func:`cells_on_grid`): the region is decided once, on the backbone's base grid, by the rule
above; a feature map at another grid (an earlier conv stage, another input scale) takes the cells that
the base cells cover by area (coverage >= ``min_coverage``, else the best-covered ones), so every part of
a feature looks at the same region.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

POOLINGS = ("max", "mean", "gem", "cls")  # the parts a pooling spec joins with "+"
GEM_P = 3.0  # GeM exponent (p=3: Radenovic et al., and DINOv2/retrieval practice)
GEM_EPS = 1e-6  # activations are clamped at this before the power


def pooling_parts(how: str) -> tuple[str, ...]:
    """``"max+mean"`` -> ``("max", "mean")``, with a one-line error naming the field for a bad spec."""
    parts = tuple(p.strip() for p in str(how).split("+"))
    bad = [p for p in parts if p not in POOLINGS]
    if bad or not parts:
        raise ValueError(f"unknown pooling {how!r} (part(s) {bad}); use one of {POOLINGS} or several joined by '+', "
                         "e.g. pooling=max+mean")
    if len(set(parts)) != len(parts):
        raise ValueError(f"pooling={how!r} repeats a part; name each once, e.g. pooling=max+mean+gem")
    return parts


def mask_coverage(mask: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each of the ``grid`` (h, w) cells covered by ``mask`` [H, W] (bool/0-1), or by each mask
    of a batch ``[B, H, W]`` -> ``[h, w]`` / ``[B, h, w]``.

    The cells are ``adaptive_avg_pool2d``'s bins (rows ``floor(i * H / h)`` to ``ceil((i + 1) * H / h)``),
    summed as two matrix products and divided as that op divides, so the values are bit for bit its own
    (a 0/1 mask's sums are exact) while any mask size stays traceable (the ONNX export,
    :mod:`fmmc.model.onnx_export`, takes masks of any resolution; the pooling op itself specialises on it).
    """
    m = mask.float() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    if m.dim() not in (2, 3):
        raise ValueError(f"mask must be 2-D [H, W] (or a batch [B, H, W]), got shape {tuple(m.shape)}")
    rows, kh = _bins(m.shape[-2], grid[0], m.device)
    cols, kw = _bins(m.shape[-1], grid[1], m.device)
    return rows @ m @ cols.T / kh[:, None] / kw[None, :]


def _bins(n: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``adaptive_avg_pool``'s ``k`` bins over ``n`` inputs: membership ``[k, n]`` (0/1 float) and bin sizes ``[k]``."""
    i = torch.arange(k, device=device)
    start = torch.div(i * n, k, rounding_mode="floor")
    end = torch.div((i + 1) * n + k - 1, k, rounding_mode="floor")
    j = torch.arange(n, device=device)
    return ((j[None] >= start[:, None]) & (j[None] < end[:, None])).float(), (end - start).float()


def select_cells(cov: torch.Tensor, min_coverage: float = 0.5) -> torch.Tensor:
    """The grid rule (module docstring) on coverages ``[..., h, w]`` -> bool cells, per mask and without
    data-dependent branches (traceable): cells with coverage >= ``min_coverage``, else the best-covered
    ones; ``min_coverage <= 0``: every cell with any coverage. An empty mask selects every cell here (its
    peak is 0): :func:`mask_to_grid` refuses one first."""
    if min_coverage <= 0:
        return cov > 0
    sel = cov >= min_coverage
    peak = cov.amax(dim=(-2, -1), keepdim=True)
    none = ~sel.flatten(-2).any(dim=-1)[..., None, None]
    return sel | (none & (cov >= peak - 1e-6))


def mask_to_grid(mask: np.ndarray | torch.Tensor | None, grid: tuple[int, int], min_coverage: float = 0.5) -> torch.Tensor:
    """Bool ``[h, w]`` of grid cells inside the region; ``None`` (null mask) selects every cell."""
    if mask is None:
        return torch.ones(grid, dtype=torch.bool)
    cov = mask_coverage(mask, grid)
    if float(cov.max()) <= 0:
        raise ValueError("mask is empty: no pixel is inside the region")
    return select_cells(cov, min_coverage)


def pool(feature_map: torch.Tensor, cells: torch.Tensor, how: str = "max", cls: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``feature_map`` [B, C, h, w] over ``cells`` [B, h, w] (bool) -> [B, k * C] for a spec of k parts.

    ``max``: the paper's masked max-pool; ``mean``: masked average; ``gem``: masked generalised mean (see
    the module docstring); ``cls``: the model's global token (ignores the mask; falls back to a global mean
    for models without one). Several parts (``max+mean``) are concatenated in the order written.
    """
    parts = pooling_parts(how)
    if cells.dim() == 2:
        cells = cells[None].expand(feature_map.shape[0], -1, -1)
    if tuple(cells.shape[-2:]) != tuple(feature_map.shape[-2:]):
        raise ValueError(f"cell grid {tuple(cells.shape[-2:])} != feature grid {tuple(feature_map.shape[-2:])}")
    m = cells[:, None].to(feature_map.device)
    out = [_pool_part(feature_map, m, p, cls) for p in parts]
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def _pool_part(feature_map: torch.Tensor, m: torch.Tensor, how: str, cls: torch.Tensor | None) -> torch.Tensor:
    if how == "cls":
        return cls if cls is not None else feature_map.mean(dim=(2, 3))
    if how == "max":
        neg = torch.finfo(feature_map.dtype).min
        return feature_map.masked_fill(~m, neg).amax(dim=(2, 3))
    w = m.to(feature_map.dtype)
    count = w.sum(dim=(2, 3)).clamp_min(1)
    if how == "gem":
        powered = feature_map.clamp_min(GEM_EPS).pow(GEM_P)
        return ((powered * w).sum(dim=(2, 3)) / count).pow(1.0 / GEM_P)
    return (feature_map * w).sum(dim=(2, 3)) / count


def cells_on_grid(cells: torch.Tensor, grid: tuple[int, int], min_coverage: float = 0.5) -> torch.Tensor:
    """Base-grid cells ``[B, h, w]`` (bool) -> the same regions on ``grid`` ``[B, H, W]`` (module docstring).

    The same grid returns ``cells`` itself (so the default feature is untouched); every region keeps at
    least one cell.
    """
    if tuple(cells.shape[-2:]) == tuple(grid):
        return cells
    cov = F.adaptive_avg_pool2d(cells[:, None].float(), tuple(grid))[:, 0]
    if min_coverage <= 0:
        return cov > 0
    peak = cov.amax(dim=(1, 2), keepdim=True)
    sel = cov >= min_coverage
    empty = ~sel.flatten(1).any(dim=1)
    if bool(empty.any()):
        sel[empty] = cov[empty] >= peak[empty] - 1e-6
    return sel
