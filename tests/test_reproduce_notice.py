"""A grid run on generated textures says so in the terminal and the report (issue 10, point 8)."""

from __future__ import annotations

from pathlib import Path

from fmmc.evaluation.grid import load_grid_config
from fmmc.evaluation.report.tables import stand_in_notice

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_offline_grid_is_labelled_a_stand_in(tmp_path):
    notice = stand_in_notice(load_grid_config(CONFIGS / "offline.yaml", out=str(tmp_path)))
    assert notice is not None and "generated textures" in notice and "NOT reproduce" in notice


def test_paper_grid_has_no_notice(tmp_path):
    assert stand_in_notice(load_grid_config(CONFIGS / "paper.yaml", out=str(tmp_path))) is None
