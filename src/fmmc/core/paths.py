"""Path rules shared by every room: which files are images."""

from __future__ import annotations

from pathlib import Path

# what PIL reads and fmmc accepts as an image file (lower-case suffixes)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS
