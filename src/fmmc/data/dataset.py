"""Read and write the fmmc dataset format: a folder with ``metadata.jsonl``, one region per line.

Compatible with Hugging Face ``imagefolder`` (``file_name`` is relative to the folder)::

    {"file_name": "images/0001.jpg", "label": "ceramic", "mask_file_name": "masks/0001.png",
     "description": "glossy white porcelain", "split": "train", "prompt": "..."}

Only ``file_name`` is required. Unknown keys are kept in ``Region.extra``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from fmmc.data.records import KNOWN_KEYS, Region

METADATA = "metadata.jsonl"


class DatasetError(ValueError):
    """A dataset problem, with the file and line it is on."""


def metadata_path(root: str | Path) -> Path:
    root = Path(root)
    if root.is_file() and root.suffix == ".jsonl":
        return root
    return root / METADATA


def parse_line(obj: object, root: Path, where: str) -> Region:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object per line")
    fn = obj.get("file_name")
    if not isinstance(fn, str) or not fn:
        raise DatasetError(f"{where}: missing 'file_name' (the image path, relative to {root})")
    mask = obj.get("mask_file_name")
    if mask is not None and not isinstance(mask, str):
        raise DatasetError(f"{where}: 'mask_file_name' must be a string path or absent")
    box = obj.get("box")
    if box is not None:
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DatasetError(f"{where}: 'box' must be [x0, y0, x1, y1]")
        box = tuple(int(v) for v in box)
    for key in ("label", "description", "split", "id"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise DatasetError(f"{where}: {key!r} must be a string")
    return Region(
        image=root / fn,
        mask=(root / mask) if mask else None,
        label=obj.get("label"),
        description=obj.get("description"),
        split=obj.get("split"),
        id=obj.get("id") or (f"{fn}:{mask}" if mask else fn),
        box=box,
        extra={k: v for k, v in obj.items() if k not in KNOWN_KEYS},
    )


def iter_lines(root: str | Path) -> Iterable[tuple[int, str]]:
    path = metadata_path(root)
    if not path.is_file():
        raise DatasetError(
            f"{path} not found: a dataset is a folder with a metadata.jsonl (one region per line); "
            "see `fmmc validate --help` or docs/dataset-format.md"
        )
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, line


def load_dataset(root: str | Path, split: str | None = None) -> list[Region]:
    """All regions of the dataset at ``root`` (optionally one split); the first bad line raises DatasetError."""
    path = metadata_path(root)
    base = path.parent
    regions = []
    seen: dict[str, int] = {}
    for lineno, line in iter_lines(root):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not valid JSON ({e.msg})") from e
        region = parse_line(obj, base, where)
        if region.id in seen:
            raise DatasetError(f"{where}: duplicate id {region.id!r} (first on line {seen[region.id]}); ids must be unique")
        seen[region.id] = lineno
        if split is None or region.split == split:
            regions.append(region)
    return regions


def write_dataset(root: str | Path, regions: Iterable[Region]) -> Path:
    """Write ``metadata.jsonl`` atomically (temp file + rename), paths relative to ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / METADATA
    from fmmc.core.io import atomic_file

    with atomic_file(path) as f:
        for r in regions:
            f.write(json.dumps(r.to_json(root), ensure_ascii=False) + "\n")
    return path


def split_regions(regions: list[Region], val_fraction: float, seed: int) -> tuple[list[Region], list[Region]]:
    """Stratified train/val split for regions without a ``split`` field (per label, seeded)."""
    import random

    rng = random.Random(seed)
    by_label: dict[str | None, list[Region]] = {}
    for r in regions:
        by_label.setdefault(r.label, []).append(r)
    train, val = [], []
    for label in sorted(by_label, key=str):
        items = sorted(by_label[label], key=lambda r: r.id)
        rng.shuffle(items)
        n_val = int(round(len(items) * val_fraction)) if len(items) > 1 else 0
        if val_fraction > 0 and len(items) >= 3:
            n_val = max(1, n_val)
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val
