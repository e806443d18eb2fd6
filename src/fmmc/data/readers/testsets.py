"""Test sets named by a data spec string, loaded as :class:`fmmc.data.records.Region` lists.

    >>> ts = load_test_set("fmd:/data/fmd")                                          # doctest: +SKIP
    >>> ts = load_test_set("dms:/data/dms?images=/data/openimages&min_area=0.01")    # doctest: +SKIP
    >>> len(ts.regions), ts.classes                                                  # doctest: +SKIP

Spec forms (options after ``?``, joined by ``&``):

``fmd:/path``
    FMD layout: ``image/<class>/<name>.jpg`` + ``mask/<class>/<name>.jpg`` (same stem). JPEG masks are
    thresholded at 128 (``Region.extra["mask_threshold"]``). Class folder names are mapped with
    ``load_label_map("fmd")``. Options: ``missing=error|skip`` (an image without a usable mask),
    ``map=fmd|dms|FILE``.
``dms:/path``
    DMS label maps (PNG values index ``taxonomy.json`` names), RGB images given separately; one region
    per (image, material). See :mod:`fmmc.data.readers.dms` for its options.
``folder:/path``
    ``<class>/<image>``: each whole image is one region labelled by its folder. Options: ``map=...``.
``jsonl:/path`` or a plain folder with ``metadata.jsonl``
    The fmmc dataset format (:mod:`fmmc.data.dataset`); ``--split`` selects a split when the lines have one.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fmmc.data.dataset import DatasetError, load_dataset, metadata_path
from fmmc.data.records import Region

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
JPEG_EXTS = (".jpg", ".jpeg")
JPEG_MASK_THRESHOLD = 128
KINDS = ("fmd", "dms", "folder", "jsonl")
OPTIONS = {
    "fmd": {"missing", "map"},
    "dms": {"images", "min_area", "keep", "masks", "missing", "map", "taxonomy"},
    "folder": {"map"},
    "jsonl": set(),
}
SPEC_HELP = ("fmd:/path (image/<class>/*.jpg + mask/<class>/*.jpg), "
             "dms:/path?images=/path/to/rgb&min_area=0.01 (label-map PNGs), "
             "folder:/path (<class>/*.jpg, whole images), jsonl:/path or a folder with metadata.jsonl")


@dataclass
class DataSpec:
    kind: str
    path: Path
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""


@dataclass
class TestSet:
    """Loaded regions plus what the loader dropped or noticed (shown in reports)."""

    spec: str
    kind: str
    regions: list[Region]
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Labels present, most frequent first."""
        return [lab for lab, _ in Counter(r.label for r in self.regions if r.label).most_common()]


def parse_data_spec(spec: str) -> DataSpec:
    """Split ``kind:/path?opt=v&...``; a plain path is ``jsonl`` when it holds ``metadata.jsonl``."""
    text = spec.strip()
    if not text:
        raise ValueError(f"empty data spec; use one of: {SPEC_HELP}")
    body, _, query = text.partition("?")
    kind, sep, rest = body.partition(":")
    if sep and kind in KINDS:
        path = Path(rest).expanduser()
    else:
        kind, path = "", Path(body).expanduser()
        if metadata_path(path).is_file():
            kind = "jsonl"
        else:
            raise ValueError(f"data spec {spec!r}: {path} has no metadata.jsonl and no kind prefix; use one of: {SPEC_HELP}")
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = sorted(set(options) - OPTIONS[kind])
    if unknown:
        raise ValueError(f"data spec {spec!r}: unknown option(s) {unknown} for {kind}:; known: {sorted(OPTIONS[kind]) or 'none'}")
    if not path.exists():
        raise FileNotFoundError(f"data spec {spec!r}: {path} does not exist")
    return DataSpec(kind, path, options, text)


def load_test_set(spec: str, split: str | None = None, cache_dir: str | Path | None = None) -> TestSet:
    """Load the test set named by ``spec``. ``cache_dir`` holds materialised DMS region masks."""
    ds = parse_data_spec(spec)
    if ds.kind == "fmd":
        ts = load_fmd(ds.path, **ds.options)
    elif ds.kind == "folder":
        ts = load_folder(ds.path, **ds.options)
    elif ds.kind == "dms":
        from fmmc.data.readers.dms import load_dms

        ts = load_dms(ds.path, split=split, cache_dir=cache_dir, **ds.options)
    else:
        ts = load_jsonl(ds.path, split)
    ts.spec = ds.text
    if split is not None and ds.kind in ("fmd", "folder"):
        ts.notes.append(f"--split {split} ignored: {ds.kind} test sets have no splits (every image is used)")
    if not ts.regions:
        raise DatasetError(f"{spec}: no labelled regions to evaluate" + (f" ({'; '.join(ts.notes)})" if ts.notes else ""))
    unlabelled = [r.id for r in ts.regions if not r.label]
    if unlabelled:
        raise DatasetError(f"{spec}: {len(unlabelled)} region(s) have no label (first: {unlabelled[0]!r}); "
                           "evaluation needs the true label of every region")
    log.info("test set %s: %d regions, %d classes", spec, len(ts.regions), len(ts.classes))
    return ts


def _label_map(source: str | None) -> dict[str, str | None] | None:
    if not source:
        return None
    from fmmc.taxonomy import load_label_map

    return load_label_map(source)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _map_class(name: str, mapping: dict[str, str | None] | None, where: Path) -> str | None:
    if mapping is None:
        return name
    lowered = {k.lower(): v for k, v in mapping.items()}
    if name.lower() not in lowered:
        raise DatasetError(f"{where}: class folder {name!r} is not in the label map; expected one of "
                           f"{', '.join(sorted(mapping))} (or pass map=FILE with a mapping for it)")
    return lowered[name.lower()]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, EXIF rotation applied."""
    from fmmc.vision.extractor import _image_size

    return _image_size(path)


def load_fmd(root: Path, missing: str = "error", map: str = "fmd") -> TestSet:  # noqa: A002 - option name
    """FMD: ``image/<class>/<name>.jpg`` and ``mask/<class>/<name>.<ext>``, one region per image."""
    if missing not in ("error", "skip"):
        raise ValueError(f"fmd option missing={missing!r}: choose error or skip")
    img_root, mask_root = root / "image", root / "mask"
    if not img_root.is_dir() or not mask_root.is_dir():
        raise DatasetError(f"{root}: not an FMD folder; expected {img_root}/<class>/*.jpg and "
                           f"{mask_root}/<class>/*.jpg with the same file names (or use folder:{root} for "
                           "whole-image classes)")
    mapping = _label_map(map)
    classes = sorted(p.name for p in img_root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{img_root}: no class folders (expected image/<class>/*.jpg)")
    regions: list[Region] = []
    problems: list[str] = []
    orphans: list[str] = []
    dropped: Counter[str] = Counter()
    for cls in classes:
        label = _map_class(cls, mapping, img_root / cls)
        images = _images(img_root / cls)
        masks = {p.stem: p for p in _images(mask_root / cls)} if (mask_root / cls).is_dir() else {}
        orphans += [str(p) for stem, p in masks.items() if stem not in {i.stem for i in images}]
        for img in images:
            mask = masks.get(img.stem)
            if mask is None:
                problems.append(f"{img}: no mask (expected {mask_root / cls / img.stem}.jpg)")
                continue
            try:
                isize, msize = image_size(img), image_size(mask)
            except OSError as e:  # PIL's UnidentifiedImageError is an OSError
                problems.append(f"{img}: cannot read the image or its mask {mask}: {e}")
                continue
            if isize != msize:
                problems.append(f"{img}: image is {_wh(isize)} but its mask {mask} is {_wh(msize)}")
                continue
            if label is None:
                dropped[cls] += 1
                continue
            extra: dict[str, Any] = {"source_label": cls}
            if mask.suffix.lower() in JPEG_EXTS:
                extra["mask_threshold"] = JPEG_MASK_THRESHOLD
            regions.append(Region(image=img, mask=mask, label=label, id=f"{cls}/{img.name}", extra=extra))
    notes = []
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        if missing == "error":
            raise DatasetError(f"{root}: {len(problems)} image(s) without a usable mask:\n  {shown}{more}\n"
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


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def load_folder(root: Path, map: str | None = None) -> TestSet:  # noqa: A002 - option name
    """``<class>/<image>``: every whole image is a region of its folder's class."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected <class>/*.jpg)")
    mapping = _label_map(map)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class folders; expected {root}/<class>/*.jpg (one folder per material)")
    loose = _images(root)
    regions = []
    dropped: Counter[str] = Counter()
    for cls_dir in classes:
        label = _map_class(cls_dir.name, mapping, cls_dir)
        for img in _images(cls_dir):
            if label is None:
                dropped[cls_dir.name] += 1
                continue
            regions.append(Region(image=img, label=label, id=f"{cls_dir.name}/{img.name}",
                                  extra={"source_label": cls_dir.name}))
    notes = []
    if loose:
        notes.append(f"{len(loose)} image(s) directly in {root} ignored (no class folder)")
    if dropped:
        notes.append(f"classes mapped to nothing dropped: {dict(dropped)}")
    return TestSet(f"folder:{root}", "folder", regions, notes, {"regions": len(regions)})


def load_jsonl(root: Path, split: str | None) -> TestSet:
    """The fmmc format; ``split`` given: only that split. Not given: ``test`` if any line has it, else all."""
    regions = load_dataset(root)
    splits = Counter(r.split for r in regions)
    notes = []
    if split is not None:
        chosen = [r for r in regions if r.split == split]
        if not chosen:
            raise DatasetError(f"{metadata_path(root)}: no region has split={split!r}; splits present: "
                               f"{dict((str(k), v) for k, v in splits.items())}")
    elif splits.get("test"):
        chosen = [r for r in regions if r.split == "test"]
        notes.append(f"split 'test' used ({len(chosen)} of {len(regions)} regions)")
    else:
        chosen = regions
        if any(k is not None for k in splits):
            notes.append(f"no 'test' split: all {len(regions)} regions used (splits: "
                         f"{dict((str(k), v) for k, v in splits.items())}); pass --split to choose one")
    return TestSet(f"jsonl:{root}", "jsonl", chosen, notes, {"regions": len(chosen)})
