"""Path rules shared by every room: which files are images, where fmmc keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

# what PIL reads and fmmc accepts as an image file (lower-case suffixes)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def cache_root() -> Path:
    """Where fmmc keeps features, descriptions and downloads: ``$FMMC_CACHE``, else ``~/.cache/fmmc``."""
    return Path(os.environ.get("FMMC_CACHE", Path.home() / ".cache" / "fmmc")).expanduser()
