"""The fmmc dataset format as a test set: ``jsonl:/path``, or a plain folder holding ``metadata.jsonl``.

See :mod:`fmmc.data.dataset` for the format; ``--split`` selects a split when the lines have one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fmmc.data.dataset import DatasetError, load_dataset, metadata_path
from fmmc.data.readers.spec import TestSet


def load_jsonl(root: str | Path, split: str | None = None, *, cache_dir: str | Path | None = None,
               allow_outside_root: bool = False) -> TestSet:
    """The fmmc format; ``split`` given: only that split. Not given: ``test`` if any line has it, else all.
    Paths must stay inside the dataset folder unless ``allow_outside_root`` (:func:`load_dataset`)."""
    root = Path(root).expanduser()
    regions = load_dataset(root, allow_outside_root=allow_outside_root)
    splits = Counter(r.split for r in regions)
    present = {str(k): v for k, v in splits.items()}
    notes = []
    if split is not None:
        from fmmc.data.dataset import checked_split

        split = checked_split(split, str(metadata_path(root)), asked=True)
        chosen = [r for r in regions if r.split == split]
        if not chosen:
            raise DatasetError(f"{metadata_path(root)}: no region has split={split!r}; splits present: {present}")
    elif splits.get("test"):
        chosen = [r for r in regions if r.split == "test"]
        notes.append(f"split 'test' used ({len(chosen)} of {len(regions)} regions)")
    else:
        chosen = regions
        if any(k is not None for k in splits):
            notes.append(f"no 'test' split: all {len(regions)} regions used (splits: {present}); "
                         "pass --split to choose one")
    return TestSet(f"jsonl:{root}", "jsonl", chosen, notes, {"regions": len(chosen)})
