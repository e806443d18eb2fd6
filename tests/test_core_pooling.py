import numpy as np
import pytest
import torch

from fmmc.vision.pooling import mask_coverage, mask_to_grid, pool


def test_coverage_by_hand():
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[0, 1] = m[1, 0] = True  # 3 of 4 pixels of the top-left 2x2 cell
    m[3, 3] = True  # 1 of 4 of the bottom-right cell
    cov = mask_coverage(m, (2, 2))
    assert cov.tolist() == [[0.75, 0.0], [0.0, 0.25]]
    assert mask_to_grid(m, (2, 2), 0.5).tolist() == [[True, False], [False, False]]
    assert mask_to_grid(m, (2, 2), 0.0).tolist() == [[True, False], [False, True]]


def test_small_region_is_never_lost():
    m = np.zeros((448, 448), bool)
    m[100:103, 200:202] = True  # 6 pixels, far less than one 14x14 patch
    cells = mask_to_grid(m, (32, 32), 0.5)
    assert cells.sum() == 1 and cells[100 // 14, 200 // 14]


def test_null_mask_selects_all_and_empty_mask_raises():
    assert mask_to_grid(None, (3, 5)).all()
    with pytest.raises(ValueError, match="empty"):
        mask_to_grid(np.zeros((4, 4), bool), (2, 2))


def test_pool_max_mean_cls_by_hand():
    f = torch.tensor([[[[1.0, 5.0], [3.0, -2.0]], [[0.0, -1.0], [7.0, 2.0]]]])  # [1, 2, 2, 2]
    cells = torch.tensor([[True, False], [True, True]])
    assert pool(f, cells, "max").tolist() == [[3.0, 7.0]]
    assert pool(f, cells, "mean").tolist() == [[pytest.approx(2 / 3), 3.0]]
    cls = torch.tensor([[9.0, 9.0]])
    assert pool(f, cells, "cls", cls).tolist() == [[9.0, 9.0]]
    assert pool(f, torch.ones(2, 2, dtype=torch.bool), "max").tolist() == [[5.0, 7.0]]
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(f, cells, "median")
