"""The package layout keeps its promises (tools/layout_report.py measures it): no loose modules at the top of
``src/fmmc``, no import loop between two files, no room reaching into another room's private names, and a
torch-free ``fmmc.core``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("layout_report", ROOT / "tools" / "layout_report.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod.analyse()


def test_no_loose_files_no_loops_no_private_access():
    r = _report()
    assert r["loose_files"] == []
    assert r["file_loops"] == []
    assert r["private"] == []


def test_core_imports_without_torch():
    code = ("import sys, fmmc.core.registry, fmmc.core.config, fmmc.core.hub, fmmc.core.io, fmmc.core.device, "
            "fmmc.core.paths, fmmc.model.config; assert 'torch' not in sys.modules, 'core imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
