"""DMS (Dense Material Segmentation, apple/ml-dms-dataset) label maps as region test sets.

    >>> ts = load_test_set("dms:/data/dms?images=/data/dms/images&min_area=0.01")   # doctest: +SKIP
    >>> found = dms_pairs("/data/DMS_v1", split="test")    # what `fmmc segment --eval-dms` scores  # doctest: +SKIP

This is the one DMS reader: ``fmmc eval dms:...`` (:func:`load_dms`) and the material-map evaluation
(:func:`fmmc.model.maps.evaluate.load_dms_pairs`) read a tree through :func:`dms_pairs`,
:func:`read_label_map`, :func:`taxonomy_names` and :func:`value_labels`, so both see the same images, decode
the same values and map the same names.

A DMS label map is a single-channel PNG whose pixel values index the ``names`` of DMS ``taxonomy.json``
(57 names, 0 = "No label"); palette PNGs are read as their indices. The RGB images come from Open Images
separately and are matched by file stem.

Layout (folder names in any case: DMS ships ``Labels/``):

* label maps: the ``*.png`` files directly in ``<root>/labels/<split>/``, or in ``<root>/labels/`` when it
  has no such split folder; a root without a ``labels`` folder is itself the folder of label maps (with or
  without ``<split>/``). No split given: ``test`` when that folder exists.
* images: ``images=DIR`` or ``<root>/images``, in its ``<split>/`` subfolder when there is one; any image
  file (:data:`fmmc.core.paths.IMAGE_EXTS`, any case). Two images with one stem: the first in name order.
* names: ``taxonomy=FILE``, else ``<root>/taxonomy.json``, else the built-in DMS list.

Regions: one per (image, material value) whose area is at least ``min_area`` of the image. Values naming
non-materials ("No label", "I cannot tell", "Not on list", "Bad polygon", "Multiple materials") are
dropped; the other names are mapped onto the fmmc taxonomy with ``load_label_map("dms")`` (``map=FILE``
to change it; names are looked up case-insensitively). With ``keep=taxonomy`` (default) names that map to
nothing (e.g. "Sky") are dropped and counted; ``keep=all`` keeps them under their DMS name (a model must
then know those classes).

Masks are materialised: each region's binary mask is written once as a PNG under ``masks=DIR`` (default
``<cache>/dms-masks/``), named by a hash of the label map's bytes and the value, so every downstream
tool (feature extractor, describers, feature cache keys) sees an ordinary region with a mask file.

Options: ``images``, ``min_area`` (0.01), ``keep`` (taxonomy|all), ``masks``, ``missing`` (error|skip: a
label map without its image), ``map`` (dms), ``taxonomy`` (a taxonomy.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmmc.data.dataset import DatasetError
from fmmc.data.imageio import ImageError, image_size
from fmmc.data.readers.spec import TestSet, format_size, list_images, problem_list
from fmmc.data.records import Region

log = logging.getLogger(__name__)

LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


@dataclass
class DmsPairs:
    """What :func:`dms_pairs` found: ``(image, label map)`` pairs in label-map name order, and the label maps
    that have no image (``missing``)."""

    labels_dir: Path
    images_dir: Path
    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)


def _child(base: Path, name: str) -> Path | None:
    """The folder ``base/name``, its name matched in any case (exact spelling first)."""
    if (base / name).is_dir():
        return base / name
    if not base.is_dir():
        return None
    return next((p for p in sorted(base.iterdir()) if p.is_dir() and p.name.lower() == name.lower()), None)


def _split_dir(base: Path, split: str | None) -> Path:
    """``base/split`` when it exists; no split given: ``base/test`` when it exists, else ``base``."""
    return _child(base, split or "test") or base


def dms_pairs(root: str | Path, split: str | None = None, images: str | Path | None = None) -> DmsPairs:
    """The ``(image, label map)`` pairs of a DMS tree (layout in the module docstring).

    Raises :class:`DatasetError` naming the folder when there are no label maps or no images folder.
    """
    root = Path(root).expanduser()
    labels_dir = _split_dir(_child(root, "labels") or root, split)
    label_files = sorted(p for p in labels_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png") \
        if labels_dir.is_dir() else []
    if not label_files:
        subdirs = sorted(p.name for p in labels_dir.iterdir() if p.is_dir()) if labels_dir.is_dir() else []
        hint = f"; choose a split with --split ({', '.join(subdirs)})" if subdirs else ""
        raise DatasetError(f"{labels_dir}: no label PNGs (DMS label maps, expected labels/<split>/*.png){hint}")
    if images:
        images_dir = _split_dir(Path(images).expanduser(), split)
    elif _child(root, "images") is not None:
        images_dir = _split_dir(_child(root, "images"), split)  # type: ignore[arg-type]
    else:
        raise DatasetError(f"{root}: where are the RGB images? DMS ships label maps only; pass them as "
                           f"dms:{root}?images=/path/to/images (or put them in {root}/images/<split>/)")
    if not images_dir.is_dir():
        raise DatasetError(f"DMS images folder {images_dir} does not exist")
    by_stem: dict[str, Path] = {}
    for p in list_images(images_dir):
        by_stem.setdefault(p.stem, p)
    found = DmsPairs(labels_dir, images_dir)
    for lab in label_files:
        if lab.stem in by_stem:
            found.pairs.append((by_stem[lab.stem], lab))
        else:
            found.missing.append(lab)
    return found


def taxonomy_names(root: str | Path, taxonomy: str | Path | None = None) -> list[str]:
    """DMS names in value order: from ``taxonomy`` (a file), else ``root/taxonomy.json``, else the built-in list."""
    from fmmc.taxonomy.taxonomy import dms_names

    path = Path(taxonomy).expanduser() if taxonomy else Path(root).expanduser() / "taxonomy.json"
    if not path.is_file():
        if taxonomy:
            raise DatasetError(f"DMS taxonomy file {path} does not exist")
        return dms_names()
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is fine
        names = data["names"] if isinstance(data, dict) else data
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: expected a DMS taxonomy.json with a 'names' list ({e})") from e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: 'names' must be a list of strings")
    builtin = dms_names()
    if names != builtin:
        log.warning("%s: names differ from the built-in DMS taxonomy (%d vs %d names); using the file's",
                    path, len(names), len(builtin))
    return names


def read_label_map(path: str | Path) -> np.ndarray:
    """A label map as an int array ``[H, W]``; colour or alpha images are an error (not DMS label maps)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in LABEL_MODES:
                raise DatasetError(f"{path}: label map has mode {im.mode}; expected a single-channel PNG whose "
                                   "values index taxonomy.json names (DMS labels/*.png)")
            return np.asarray(im).astype(np.int64)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on corrupt bytes (see imageio._decode_error)
        if isinstance(e, MemoryError):
            raise
        raise DatasetError(f"{path}: cannot read the label map: {str(e) or type(e).__name__}") from e


def check_values(arr: np.ndarray, n_names: int, path: str | Path) -> None:
    """Every value of a label map must index one of ``n_names`` names."""
    bad = [int(v) for v in np.unique(arr) if v < 0 or v >= n_names]
    if bad:
        raise DatasetError(f"{path}: label value(s) {bad[:10]} outside the DMS taxonomy (0..{n_names - 1}); "
                           "is this a DMS label map? (values must index taxonomy.json names)")


def value_labels(names: list[str], map: str | dict[str, Any] = "dms") -> list[str | None]:  # noqa: A002
    """Per label-map value, the fmmc label its DMS name maps to (``map``: ``dms``, a file or a dict, looked up
    case-insensitively); None for non-materials and for names the map sends nowhere or does not list."""
    from fmmc.taxonomy import load_label_map

    mapping = {str(k).lower(): v for k, v in (map if isinstance(map, dict) else load_label_map(map)).items()}
    non_material = _non_materials()
    return [None if name.lower() in non_material or mapping.get(name.lower()) is None else str(mapping[name.lower()])
            for name in names]


def _non_materials() -> set[str]:
    """DMS names that are no material ("No label", "I cannot tell", ...), lower case."""
    from fmmc.taxonomy.taxonomy import dms_non_materials

    return {n.lower() for n in dms_non_materials()}


def _write_mask(path: Path, mask: np.ndarray) -> None:
    if path.is_file():
        return
    from fmmc.core.io import atomic_file

    with atomic_file(path, binary=True) as f:
        Image.fromarray(mask.astype(np.uint8) * 255).save(f, format="PNG")


def load_dms(root: str | Path, split: str | None = None, cache_dir: str | Path | None = None,
             images: str | None = None, min_area: str | float = 0.01, keep: str = "taxonomy", masks: str | None = None,
             missing: str = "error", map: str = "dms", taxonomy: str | None = None) -> TestSet:  # noqa: A002
    """Regions of DMS label maps (see the module docstring for the layout and the options)."""
    from fmmc.core.paths import cache_root

    root = Path(root).expanduser()
    try:
        min_frac = float(min_area)
    except ValueError as e:
        raise ValueError(f"dms option min_area={min_area!r}: expected a fraction such as 0.01") from e
    if keep not in ("taxonomy", "all"):
        raise ValueError(f"dms option keep={keep!r}: choose taxonomy (drop unmapped materials) or all")
    if missing not in ("error", "skip"):
        raise ValueError(f"dms option missing={missing!r}: choose error or skip")
    found = dms_pairs(root, split=split, images=images)
    names = taxonomy_names(root, taxonomy)
    labels = value_labels(names, map)
    non_material = _non_materials()
    mask_dir = Path(masks).expanduser() if masks else Path(cache_dir or cache_root()) / "dms-masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    regions: list[Region] = []
    problems = [f"{lab}: no RGB image {lab.stem}.* in {found.images_dir}" for lab in found.missing]
    dropped: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    for img, lab_path in found.pairs:
        arr = read_label_map(lab_path)
        check_values(arr, len(names), lab_path)
        values, counts = np.unique(arr, return_counts=True)
        try:
            isize = image_size(img)
        except ImageError as e:
            problems.append(f"{img}: cannot read the image: {e.problem}")
            continue
        if isize != (arr.shape[1], arr.shape[0]):
            problems.append(f"{img}: image is {format_size(isize)} but its label map {lab_path} is "
                            f"{arr.shape[1]}x{arr.shape[0]}")
            continue
        digest = hashlib.sha256(lab_path.read_bytes()).hexdigest()[:16]
        total = arr.size
        for v, c in zip(values.tolist(), counts.tolist()):
            name = names[v]
            if name.lower() in non_material:
                dropped["non-material"] += 1
                continue
            if c / total < min_frac:
                dropped["below min_area"] += 1
                continue
            label = labels[v]
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
        if missing == "error":
            raise DatasetError(f"{found.labels_dir}: {len(problems)} label map(s) without a usable image:\n  "
                               f"{problem_list(problems)}\n"
                               "Point images= at the RGB folder, or add &missing=skip to evaluate the rest.")
        log.warning("%s: %d label map(s) skipped (no usable image)", found.labels_dir, len(problems))
    n_maps = len(found.pairs) + len(found.missing)
    stats: dict[str, Any] = {"label_maps": n_maps, "regions": len(regions), "skipped_maps": len(problems),
                             "dropped": dict(dropped), "unmapped": dict(unmapped), "min_area": min_frac,
                             "masks": str(mask_dir)}
    log.info("DMS %s: %d regions from %d label maps", found.labels_dir, len(regions), n_maps)
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
