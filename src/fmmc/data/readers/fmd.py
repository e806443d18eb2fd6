"""FMD (Flickr Material Database) layout as a region test set: ``fmd:/path``.

``image/<class>/<name>.jpg`` + ``mask/<class>/<name>.<ext>`` (same stem), one region per image. JPEG masks
are thresholded at 128 (``Region.extra["mask_threshold"]``). Class folder names are mapped with
``load_label_map("fmd")``. Options: ``missing=error|skip`` (an image without a usable mask),
``map=fmd|dms|FILE``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from fmmc.data.dataset import DatasetError
from fmmc.data.imageio import ImageError, image_size
from fmmc.data.readers.spec import (
    TestSet,
    class_map,
    format_size,
    list_images,
    map_class,
    no_splits_note,
    problem_list,
)
from fmmc.data.records import Region

log = logging.getLogger(__name__)

JPEG_EXTS = (".jpg", ".jpeg")
JPEG_MASK_THRESHOLD = 128


def load_fmd(root: str | Path, missing: str = "error", map: str = "fmd", *,  # noqa: A002 - option name
             split: str | None = None, cache_dir: str | Path | None = None) -> TestSet:
    """FMD: ``image/<class>/<name>.jpg`` and ``mask/<class>/<name>.<ext>``, one region per image.

    ``split`` is noted as ignored (FMD has none); ``cache_dir`` is unused (the masks are files already).
    """
    root = Path(root).expanduser()
    if missing not in ("error", "skip"):
        raise ValueError(f"fmd option missing={missing!r}: choose error or skip")
    img_root, mask_root = root / "image", root / "mask"
    if not img_root.is_dir() or not mask_root.is_dir():
        raise DatasetError(f"{root}: not an FMD folder; expected {img_root}/<class>/*.jpg and "
                           f"{mask_root}/<class>/*.jpg with the same file names (or use folder:{root} for "
                           "whole-image classes)")
    mapping = class_map(map)
    classes = sorted(p.name for p in img_root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{img_root}: no class folders (expected image/<class>/*.jpg)")
    regions: list[Region] = []
    problems: list[str] = []
    orphans: list[str] = []
    dropped: Counter[str] = Counter()
    for cls in classes:
        label = map_class(cls, mapping, img_root / cls)
        images = list_images(img_root / cls)
        masks = {p.stem: p for p in list_images(mask_root / cls)} if (mask_root / cls).is_dir() else {}
        orphans += [str(p) for stem, p in masks.items() if stem not in {i.stem for i in images}]
        for img in images:
            mask = masks.get(img.stem)
            if mask is None:
                problems.append(f"{img}: no mask (expected {mask_root / cls / img.stem}.jpg)")
                continue
            try:
                isize, msize = image_size(img), image_size(mask)
            except ImageError as e:  # names the file that failed (the image or its mask)
                problems.append(f"{img}: cannot read the image or its mask: {e}")
                continue
            if isize != msize:
                problems.append(f"{img}: image is {format_size(isize)} but its mask {mask} is {format_size(msize)}")
                continue
            if label is None:
                dropped[cls] += 1
                continue
            extra: dict[str, Any] = {"source_label": cls}
            if mask.suffix.lower() in JPEG_EXTS:
                extra["mask_threshold"] = JPEG_MASK_THRESHOLD
            regions.append(Region(image=img, mask=mask, label=label, id=f"{cls}/{img.name}", extra=extra))
    notes = no_splits_note("fmd", split)
    if problems:
        if missing == "error":
            raise DatasetError(f"{root}: {len(problems)} image(s) without a usable mask:\n  {problem_list(problems)}\n"
                               f"Fix the masks, or add ?missing=skip to the spec to evaluate without them.")
        notes.append(f"{len(problems)} image(s) skipped for a missing or mismatched mask (first: {problems[0]})")
        log.warning("%s: %d image(s) skipped for a missing or mismatched mask", root, len(problems))
    if orphans:
        notes.append(f"{len(orphans)} mask(s) without an image ignored (first: {orphans[0]})")
        log.warning("%s: %d mask(s) have no image (first: %s)", root, len(orphans), orphans[0])
    if dropped:
        notes.append(f"classes not in the label map's target dropped: {dict(dropped)}")
    stats = {"images": len(regions) + len(problems) + sum(dropped.values()), "regions": len(regions),
             "skipped": len(problems), "orphan_masks": len(orphans)}
    return TestSet(f"fmd:{root}", "fmd", regions, notes, stats)
