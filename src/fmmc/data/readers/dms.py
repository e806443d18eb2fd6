"""DMS (Dense Material Segmentation, apple/ml-dms-dataset) label maps as region test sets.

    >>> ts = load_test_set("dms:/data/dms?images=/data/dms/images&min_area=0.01")   # doctest: +SKIP

A DMS label map is a single-channel PNG whose pixel values index the ``names`` of DMS ``taxonomy.json``
(57 names, 0 = "No label"). The RGB images come from Open Images separately and are matched by file stem.

Regions: one per (image, material value) whose area is at least ``min_area`` of the image. Values naming
non-materials ("No label", "I cannot tell", "Not on list", "Bad polygon", "Multiple materials") are
dropped; the other names are mapped onto the fmmc taxonomy with ``load_label_map("dms")`` (``map=FILE``
to change it). With ``keep=taxonomy`` (default) names that map to nothing (e.g. "Sky") are dropped and
counted; ``keep=all`` keeps them under their DMS name (a model must then know those classes).

Masks are materialised: each region's binary mask is written once as a PNG under ``masks=DIR`` (default
``<cache>/dms-masks/``), named by a hash of the label map's bytes and the value, so every downstream
tool (feature extractor, describers, feature cache keys) sees an ordinary region with a mask file.

Layout: ``/path`` may be the DMS root (``labels/<split>/*.png``, ``images/<split>/*.jpg``,
``taxonomy.json``) or a folder of label maps; ``images=DIR`` points at the RGB images (with or without a
``<split>`` subfolder). Options: ``images``, ``min_area`` (0.01), ``keep`` (taxonomy|all), ``masks``,
``missing`` (error|skip: a label map without its image), ``map`` (dms), ``taxonomy`` (a taxonomy.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmmc.data.dataset import DatasetError
from fmmc.data.readers.testsets import IMAGE_EXTS, TestSet, _wh, image_size
from fmmc.data.records import Region

log = logging.getLogger(__name__)


def _split_dir(base: Path, split: str | None) -> Path:
    """``base/split`` when it exists; no split given: ``base/test`` when it exists, else ``base``."""
    split = split or "test"
    return base / split if (base / split).is_dir() else base


def _resolve_dirs(root: Path, images: str | None, split: str | None) -> tuple[Path, Path]:
    labels = _split_dir(root / "labels", split) if (root / "labels").is_dir() else _split_dir(root, split)
    if images:
        img_dir = _split_dir(Path(images).expanduser(), split)
    elif (root / "images").is_dir():
        img_dir = _split_dir(root / "images", split)
    else:
        raise DatasetError(f"{root}: where are the RGB images? DMS ships label maps only; pass them as "
                           f"dms:{root}?images=/path/to/images (or put them in {root}/images/<split>/)")
    if not img_dir.is_dir():
        raise DatasetError(f"DMS images folder {img_dir} does not exist")
    return labels, img_dir


def _names(root: Path, taxonomy: str | None) -> list[str]:
    from fmmc.taxonomy.taxonomy import dms_names

    path = Path(taxonomy).expanduser() if taxonomy else root / "taxonomy.json"
    if not path.is_file():
        if taxonomy:
            raise DatasetError(f"DMS taxonomy file {path} does not exist")
        return dms_names()
    try:
        data = json.loads(path.read_text())
        names = data["names"] if isinstance(data, dict) else data
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: expected a DMS taxonomy.json with a 'names' list ({e})") from e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: 'names' must be a list of strings")
    builtin = dms_names()
    if names != builtin:
        log.warning("%s: names differ from the built-in DMS taxonomy (%d vs %d names); using the file's",
                    path, len(names), len(builtin))
    return names


def read_label_map(path: Path) -> np.ndarray:
    """A label map as an int array ``[H, W]``; colour or alpha images are an error (not DMS label maps)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DatasetError(f"{path}: label map has mode {im.mode}; expected a single-channel PNG whose "
                                   "values index taxonomy.json names (DMS labels/*.png)")
            return np.asarray(im).astype(np.int64)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the label map: {e}") from e


def _write_mask(path: Path, mask: np.ndarray) -> None:
    if path.is_file():
        return
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    os.replace(tmp, path)


def load_dms(root: Path, split: str | None = None, cache_dir: str | Path | None = None, images: str | None = None,
             min_area: str | float = 0.01, keep: str = "taxonomy", masks: str | None = None, missing: str = "error",
             map: str = "dms", taxonomy: str | None = None) -> TestSet:  # noqa: A002 - option name
    """Regions of DMS label maps (see the module docstring for the options)."""
    from fmmc.taxonomy import load_label_map
    from fmmc.taxonomy.taxonomy import dms_non_materials
    from fmmc.vision.cache import default_cache_dir

    try:
        min_frac = float(min_area)
    except ValueError as e:
        raise ValueError(f"dms option min_area={min_area!r}: expected a fraction such as 0.01") from e
    if keep not in ("taxonomy", "all"):
        raise ValueError(f"dms option keep={keep!r}: choose taxonomy (drop unmapped materials) or all")
    if missing not in ("error", "skip"):
        raise ValueError(f"dms option missing={missing!r}: choose error or skip")
    labels_dir, img_dir = _resolve_dirs(root, images, split)
    names = _names(root, taxonomy)
    non_materials = dms_non_materials()
    mapping = {k.lower(): v for k, v in load_label_map(map).items()}
    mask_dir = Path(masks).expanduser() if masks else Path(cache_dir or default_cache_dir().parent) / "dms-masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    label_files = sorted(p for p in labels_dir.iterdir() if p.suffix.lower() == ".png")
    if not label_files:
        subdirs = sorted(p.name for p in labels_dir.iterdir() if p.is_dir())
        hint = f"; choose a split with --split ({', '.join(subdirs)})" if subdirs else ""
        raise DatasetError(f"{labels_dir}: no label-map PNGs (expected labels/<split>/*.png){hint}")
    by_stem = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    regions: list[Region] = []
    problems: list[str] = []
    dropped: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    for lab_path in label_files:
        img = by_stem.get(lab_path.stem)
        if img is None:
            problems.append(f"{lab_path}: no RGB image {lab_path.stem}.* in {img_dir}")
            continue
        arr = read_label_map(lab_path)
        values, counts = np.unique(arr, return_counts=True)
        bad = [int(v) for v in values if v < 0 or v >= len(names)]
        if bad:
            raise DatasetError(f"{lab_path}: label value(s) {bad} outside the DMS taxonomy (0..{len(names) - 1}); "
                               "is this a DMS label map? (values must index taxonomy.json names)")
        try:
            isize = image_size(img)
        except OSError as e:
            problems.append(f"{img}: cannot read the image: {e}")
            continue
        if isize != (arr.shape[1], arr.shape[0]):
            problems.append(f"{img}: image is {_wh(isize)} but its label map {lab_path} is {arr.shape[1]}x{arr.shape[0]}")
            continue
        digest = hashlib.sha256(lab_path.read_bytes()).hexdigest()[:16]
        total = arr.size
        for v, c in zip(values.tolist(), counts.tolist()):
            name = names[v]
            if name in non_materials:
                dropped["non-material"] += 1
                continue
            if c / total < min_frac:
                dropped["below min_area"] += 1
                continue
            label = mapping.get(name.lower())
            if label is None:
                unmapped[name] += 1
                if keep == "taxonomy":
                    continue
                label = name
            mpath = mask_dir / f"{lab_path.stem}__{digest}__v{v}.png"
            _write_mask(mpath, arr == v)
            regions.append(Region(image=img, mask=mpath, label=label, id=f"{lab_path.stem}:{v}",
                                  extra={"dms_value": v, "dms_name": name, "area": round(c / total, 5)}))
    notes = _notes(problems, dropped, unmapped, keep, min_frac)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        if missing == "error":
            raise DatasetError(f"{labels_dir}: {len(problems)} label map(s) without a usable image:\n  {shown}{more}\n"
                               "Point images= at the RGB folder, or add &missing=skip to evaluate the rest.")
        log.warning("%s: %d label map(s) skipped (no usable image)", labels_dir, len(problems))
    stats: dict[str, Any] = {"label_maps": len(label_files), "regions": len(regions), "skipped_maps": len(problems),
                             "dropped": dict(dropped), "unmapped": dict(unmapped), "min_area": min_frac,
                             "masks": str(mask_dir)}
    log.info("DMS %s: %d regions from %d label maps", labels_dir, len(regions), len(label_files))
    return TestSet(f"dms:{root}", "dms", regions, notes, stats)


def _notes(problems: list[str], dropped: Counter[str], unmapped: Counter[str], keep: str, min_frac: float) -> list[str]:
    notes = []
    if problems:
        notes.append(f"{len(problems)} label map(s) skipped (first: {problems[0]})")
    if dropped["non-material"]:
        notes.append(f"{dropped['non-material']} non-material region(s) dropped (No label, I cannot tell, ...)")
    if dropped["below min_area"]:
        notes.append(f"{dropped['below min_area']} region(s) smaller than {min_frac:g} of the image dropped")
    if unmapped:
        what = "dropped" if keep == "taxonomy" else "kept under their DMS names"
        top = ", ".join(f"{k} ({v})" for k, v in unmapped.most_common(8))
        notes.append(f"{sum(unmapped.values())} region(s) of materials outside the taxonomy {what}: {top}")
    return notes
