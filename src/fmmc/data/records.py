"""The region record every part of fmmc passes around: an image, an optional mask, a label."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# metadata.jsonl keys with a meaning; all others are kept in ``extra``.
KNOWN_KEYS = ("file_name", "label", "mask_file_name", "description", "split", "id", "box")

SPLITS = ("train", "val", "test")  # the only split values, after normalize_split
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}


def normalize_split(value: str) -> str | None:
    """``value`` as one of :data:`SPLITS` (case and surrounding spaces ignored, aliases such as
    ``validation`` mapped to ``val``), or None when it is none of them."""
    v = value.strip().lower()
    v = SPLIT_ALIASES.get(v, v)
    return v if v in SPLITS else None


def split_error(value: object) -> str:
    """Why ``value`` is not a split, and how to fix it (the message of every split error)."""
    return (f"split {value!r} is not a split: use one of {', '.join(SPLITS)} (case and spaces are ignored; "
            f"{', '.join(SPLIT_ALIASES)} mean val), or leave 'split' out to let `fmmc train` choose a "
            "validation split")


@dataclass
class Region:
    """One labelled region. ``image``/``mask`` are absolute paths; ``mask=None`` means the whole image."""

    image: Path
    mask: Path | None = None
    label: str | None = None
    description: str | None = None
    split: str | None = None
    id: str = ""
    box: tuple[int, int, int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = Path(self.image)
        if self.mask is not None:
            self.mask = Path(self.mask)
        if not self.id:
            self.id = self.image.stem if self.mask is None else f"{self.image.stem}:{Path(self.mask).stem}"

    def to_json(self, root: Path | None = None) -> dict[str, Any]:
        """The metadata.jsonl line for this region (paths relative to ``root`` when given and under it, else
        absolute)."""

        def rel(p: Path) -> str:
            if root is None:
                return str(p)
            for mine, base in ((os.path.abspath(p), os.path.abspath(root)), (p.resolve(), Path(root).resolve())):
                try:  # as named first: a link inside root stays the link (its target may lie elsewhere)
                    return Path(mine).relative_to(base).as_posix()
                except ValueError:
                    pass
            return str(Path(os.path.abspath(p)))

        out: dict[str, Any] = {"file_name": rel(self.image), "id": self.id}
        if self.label is not None:
            out["label"] = self.label
        if self.mask is not None:
            out["mask_file_name"] = rel(self.mask)
        if self.description is not None:
            out["description"] = self.description
        if self.split is not None:
            out["split"] = self.split
        if self.box is not None:
            out["box"] = list(self.box)
        out.update(self.extra)
        return out
