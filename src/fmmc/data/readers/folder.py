"""A folder of class folders as a whole-image test set: ``folder:/path`` (``<class>/<image>``).

Every image is one region (no mask) labelled by its folder's name, mapped with ``map=fmd|dms|FILE`` when
given (else used as it is).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fmmc.data.dataset import DatasetError
from fmmc.data.readers.spec import TestSet, class_map, list_images, map_class, no_splits_note
from fmmc.data.records import Region


def load_folder(root: str | Path, map: str | None = None, *,  # noqa: A002 - option name
                split: str | None = None, cache_dir: str | Path | None = None) -> TestSet:
    """``<class>/<image>``: every whole image is a region of its folder's class (``split`` is noted as ignored)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected <class>/*.jpg)")
    mapping = class_map(map)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class folders; expected {root}/<class>/*.jpg (one folder per material)")
    loose = list_images(root)
    regions = []
    dropped: Counter[str] = Counter()
    for cls_dir in classes:
        label = map_class(cls_dir.name, mapping, cls_dir)
        for img in list_images(cls_dir):
            if label is None:
                dropped[cls_dir.name] += 1
                continue
            regions.append(Region(image=img, label=label, id=f"{cls_dir.name}/{img.name}",
                                  extra={"source_label": cls_dir.name}))
    notes = no_splits_note("folder", split)
    if loose:
        notes.append(f"{len(loose)} image(s) directly in {root} ignored (no class folder)")
    if dropped:
        notes.append(f"classes mapped to nothing dropped: {dict(dropped)}")
    return TestSet(f"folder:{root}", "folder", regions, notes, {"regions": len(regions)})
