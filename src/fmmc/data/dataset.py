"""Read and write the fmmc dataset format: a folder with ``metadata.jsonl``, one region per line.

Compatible with Hugging Face ``imagefolder`` (``file_name`` is relative to the folder)::

    {"file_name": "images/0001.jpg", "label": "ceramic", "mask_file_name": "masks/0001.png",
     "description": "glossy white porcelain", "split": "train", "prompt": "..."}

Only ``file_name`` is required. Unknown keys are kept in ``Region.extra``. ``split`` is normalised when a
line is read (``" Test"`` -> ``test``, ``validation``/``valid``/``dev`` -> ``val``); any other value is an
error. ``group`` (kept in ``extra``) ties regions that must stay on one side of the automatic validation
split (several photos of one object); regions of one image always stay together (:func:`split_regions`).

The file is UTF-8 (a byte-order mark and Windows line endings are fine). Paths must stay inside the
dataset folder unless the caller trusts the dataset (:mod:`fmmc.data.confine`).
"""

from __future__ import annotations

import codecs
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from fmmc.data.confine import OPT_IN, inside_root, link_into, outside_paths_allowed
from fmmc.data.records import KNOWN_KEYS, SPLITS, Region, normalize_split, split_error

METADATA = "metadata.jsonl"
EXAMPLE_LINE = '{"file_name": "images/0001.jpg", "label": "wood"}'
FORMAT_DOC = "docs/dataset-format.md"
JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


class DatasetError(ValueError):
    """A dataset problem, with the file and line it is on."""


def metadata_path(root: str | Path) -> Path:
    root = Path(root)
    if root.is_file() and root.suffix == ".jsonl":
        return root
    return root / METADATA


def parse_line(obj: object, root: Path, where: str, allow_outside_root: bool = False) -> Region:
    """One ``metadata.jsonl`` line (parsed JSON) as a :class:`Region`, its paths under ``root``; a path that
    leaves ``root`` is an error unless ``allow_outside_root`` (``root=Path("/")`` takes any absolute path:
    the engine workers' regions)."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object per line such as {EXAMPLE_LINE}, got a JSON "
                           f"{JSON_TYPES.get(type(obj), type(obj).__name__)}")
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
    group = obj.get("group")
    if group is not None and (isinstance(group, bool) or not isinstance(group, (str, int))):
        raise DatasetError(f"{where}: 'group' must be a string or an integer (regions of one group stay on one "
                           f"side of the validation split), got {group!r}")
    threshold = obj.get("mask_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise DatasetError(f"{where}: 'mask_threshold' must be a number (mask pixels >= it are the region), "
                           f"got {threshold!r}")
    return Region(
        image=_path(root, fn, "file_name", where, allow_outside_root),
        mask=_path(root, mask, "mask_file_name", where, allow_outside_root) if mask else None,
        label=obj.get("label"),
        description=obj.get("description"),
        split=checked_split(obj.get("split"), where),
        id=obj.get("id") or (f"{fn}:{mask}" if mask else fn),
        box=box,
        extra={k: v for k, v in obj.items() if k not in KNOWN_KEYS},
    )


def _path(root: Path, name: str, key: str, where: str, allow_outside_root: bool) -> Path:
    if allow_outside_root:
        return root / name
    path = inside_root(root, name)
    if path is None:
        raise DatasetError(f"{where}: {key} {name!r} is outside the dataset folder {root}; a dataset may only name "
                           f"files under its folder (move the file in, or {OPT_IN})")
    return path


def checked_split(value: str | None, where: str, asked: bool = False) -> str | None:
    """A split normalised (see :func:`fmmc.data.records.normalize_split`); a typo is an error. ``asked``: the
    value is a split asked for (``load_dataset(split=)``, ``--split``), not a line's."""
    if value is None:
        return None
    split = normalize_split(value)
    if split is None:
        raise DatasetError(f"{where}: no split {value!r}: ask for one of {', '.join(SPLITS)} (or none, for all)"
                           if asked else f"{where}: {split_error(value)}")
    return split


def iter_lines(root: str | Path, on_error: Callable[[DatasetError], None] | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of the dataset's metadata.jsonl: UTF-8, with or without a
    byte-order mark, any line endings. A line that is not UTF-8 raises, or goes to ``on_error`` and is skipped;
    a missing, unreadable or empty file raises :class:`DatasetError` naming it."""
    path = metadata_path(root)
    n = 0
    for lineno, raw in _raw_lines(path):
        n += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            err = DatasetError(f"{path}:{lineno}: not UTF-8 text ({_why_not_utf8(raw, lineno, e)}); save the file as "
                               "UTF-8")
            if on_error is None:
                raise err from e
            on_error(err)
            continue
        yield lineno, text
    if n == 0:
        raise DatasetError(f"{path}: has no lines (it is empty or blank); a dataset has one JSON object per line, "
                           f"e.g. {EXAMPLE_LINE} (see {FORMAT_DOC})")


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines as bytes, numbered as a text editor numbers them (LF, CRLF or CR end a line)."""
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, not a file; a dataset's {METADATA} is a text file with one JSON "
                           f"object per line (see {FORMAT_DOC})")
    if not path.is_file():
        root = path.parent
        what = (f"{root} is a file, not a dataset folder: give the folder holding {METADATA}, or a .jsonl file"
                if root.is_file() else f"{path} not found: a dataset is a folder with a {METADATA} (one region per "
                f"line); see `fmmc validate --help` or {FORMAT_DOC}")
        raise DatasetError(what)
    lineno = 0
    try:
        with open(path, "rb") as f:
            for chunk in f:
                for raw in chunk.splitlines():  # bytes.splitlines: only \n, \r\n and \r end a line
                    lineno += 1
                    if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                        raw = raw[len(codecs.BOM_UTF8):]  # a byte-order mark (Windows editors write one)
                    if raw.strip():
                        yield lineno, raw
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror or e}); check that it is a readable file") from e


def _why_not_utf8(raw: bytes, lineno: int, e: UnicodeDecodeError) -> str:
    if lineno == 1 and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "the file is UTF-16, e.g. Notepad's 'Unicode'"
    return f"byte 0x{e.object[e.start]:02x} at column {e.start + 1}"


def load_dataset(root: str | Path, split: str | None = None, allow_outside_root: bool = False) -> list[Region]:
    """All regions of the dataset at ``root`` (optionally one split: train, val or test, normalised as the
    lines' are); the first bad line raises DatasetError. Paths must stay inside the dataset folder unless
    ``allow_outside_root`` or ``$FMMC_ALLOW_OUTSIDE_PATHS=1`` (:mod:`fmmc.data.confine`)."""
    path = metadata_path(root)
    split = checked_split(split, str(path), asked=True)
    outside = outside_paths_allowed(allow_outside_root)
    base = path.parent
    regions = []
    seen: dict[str, int] = {}
    for lineno, line in iter_lines(root):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not valid JSON ({e.msg}, at column {e.colno})") from e
        region = parse_line(obj, base, where, outside)
        if region.id in seen:
            raise DatasetError(f"{where}: duplicate id {region.id!r} (first on line {seen[region.id]}); ids must be unique")
        seen[region.id] = lineno
        if split is None or region.split == split:
            regions.append(region)
    return regions


def write_dataset(root: str | Path, regions: Iterable[Region]) -> Path:
    """Write ``metadata.jsonl`` atomically (temp file + rename), paths relative to ``root``; a file outside
    ``root`` is named through a link under ``root/linked/`` (:func:`fmmc.data.confine.link_into`), so the
    dataset reads back without trusting outside paths."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / METADATA
    from fmmc.core.io import atomic_file

    with atomic_file(path) as f:
        for r in regions:
            line = r.to_json(root)
            for key in ("file_name", "mask_file_name"):
                if key in line and Path(line[key]).is_absolute():
                    line[key] = link_into(root, Path(line[key]))
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def group_regions(regions: list[Region]) -> list[list[Region]]:
    """Regions that must stay on one side of a split: those of one image and those of one ``group``, joined
    transitively. Deterministic: each group sorted by id, groups by their first id."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys = [_group_keys(r) for r in regions]
    for ks in keys:
        root = find(ks[0])
        for k in ks[1:]:
            parent[find(k)] = root
    groups: dict[str, list[Region]] = {}
    for r, ks in zip(regions, keys):
        groups.setdefault(find(ks[0]), []).append(r)
    return sorted((sorted(g, key=lambda r: r.id) for g in groups.values()), key=lambda g: g[0].id)


def _group_keys(region: Region) -> list[str]:
    keys = ["image:" + os.path.normpath(str(region.image))]
    if region.extra.get("group") is not None:
        keys.append(f"group:{region.extra['group']}")
    return keys


def _main_label(group: list[Region]) -> str | None:
    counts = Counter(r.label for r in group)
    return min(counts, key=lambda lab: (-counts[lab], str(lab)))


def split_regions(regions: list[Region], val_fraction: float, seed: int) -> tuple[list[Region], list[Region]]:
    """Seeded train/val split for regions without a ``split`` field: whole groups (:func:`group_regions`: one
    image, one ``group``) at a time, stratified by label (a group counts for its most frequent label)."""
    rng = random.Random(seed)
    by_label: dict[str | None, list[list[Region]]] = {}
    for group in group_regions(regions):
        by_label.setdefault(_main_label(group), []).append(group)
    train, val = [], []
    for label in sorted(by_label, key=str):
        groups = by_label[label]
        rng.shuffle(groups)
        to_val = _val_groups([len(g) for g in groups], val_fraction)
        for k, group in enumerate(groups):
            (val if k in to_val else train).extend(group)
    return train, val


def _val_groups(sizes: list[int], val_fraction: float) -> set[int]:
    """Which groups (in order) go to val: about ``val_fraction`` of the regions, at least one region when
    there are 3 or more, never every group."""
    n = sum(sizes)
    target = int(round(n * val_fraction)) if n > 1 else 0
    if val_fraction > 0 and n >= 3:
        target = max(1, target)
    chosen: set[int] = set()
    n_val = 0
    for k, size in enumerate(sizes):
        if n_val >= target or len(chosen) == len(sizes) - 1:
            break
        if n_val == 0 or n_val + size <= target:
            chosen.add(k)
            n_val += size
    return chosen
