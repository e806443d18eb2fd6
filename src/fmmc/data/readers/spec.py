"""Test sets named by a data spec string, loaded as :class:`fmmc.data.records.Region` lists.

    >>> ts = load_test_set("fmd:/data/fmd")                                          # doctest: +SKIP
    >>> ts = load_test_set("dms:/data/dms?images=/data/openimages&min_area=0.01")    # doctest: +SKIP
    >>> len(ts.regions), ts.classes                                                  # doctest: +SKIP

A spec is ``kind:/path`` with options after ``?``, joined by ``&``. The kinds are the ``dataset`` entries of
:mod:`fmmc.core.registry` (``fmmc list datasets``), each a reader function called as
``reader(path, split=..., cache_dir=..., **options)``; a reader's keyword parameters are its options:

``fmd:/path``     :mod:`fmmc.data.readers.fmd` (``missing``, ``map``)
``dms:/path``     :mod:`fmmc.data.readers.dms` (``images``, ``min_area``, ``keep``, ``masks``, ``missing``, ...)
``folder:/path``  :mod:`fmmc.data.readers.folder` (``map``)
``jsonl:/path``   :mod:`fmmc.data.readers.jsonl`; a plain folder holding ``metadata.jsonl`` is the same

``package.module:function?opt=v`` names your own reader, called as ``function(split=..., cache_dir=...,
**options)`` and returning a :class:`TestSet` (or a list of regions).

This module also holds what the readers share (class-folder mapping, image listing, problem lists); image
sizes come from :func:`fmmc.data.imageio.image_size` (upright, header only).
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fmmc.core.paths import is_image_file
from fmmc.core.registry import build, registry
from fmmc.data.dataset import DatasetError, metadata_path
from fmmc.data.records import Region

log = logging.getLogger(__name__)

KINDS = tuple(registry("dataset").entries)  # fmd, dms, folder, jsonl
READER_ARGS = ("split", "cache_dir")  # what load_test_set passes every reader besides the spec's options
TRUST_ARG = "allow_outside_root"  # passed only to readers of metadata files (jsonl), never a spec option


@dataclass
class DataSpec:
    """A parsed data spec: ``kind`` is a registry prefix (``path`` set) or a user's ``module:function`` (no path)."""

    kind: str
    path: Path | None
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


def spec_forms() -> str:
    """Every built-in spec form, for error messages."""
    return "; ".join(ex for ex, _ in registry("dataset").specs())


def reader_options(kind: str) -> set[str]:
    """The options a built-in reader takes: its keyword parameters after the path, less ``split``/``cache_dir``."""
    params = list(inspect.signature(registry("dataset").entries[kind].load()).parameters.values())[1:]
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in (*READER_ARGS, TRUST_ARG)}


def parse_data_spec(spec: str) -> DataSpec:
    """Split ``kind:/path?opt=v&...``; a plain path is ``jsonl`` when it holds ``metadata.jsonl``."""
    text = spec.strip()
    if not text:
        raise ValueError(f"empty data spec; use one of: {spec_forms()}")
    body, _, query = text.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    reg = registry("dataset")
    plain = Path(body).expanduser()
    if body.partition(":")[0] in reg.entries:
        entry, arg = reg.parse(body)
        assert entry is not None
        if not arg.strip():
            raise ValueError(f"data spec {spec!r}: give the path after '{entry.prefix}:', e.g. {entry.examples[0]}")
        kind, path = entry.prefix, Path(arg).expanduser()
    elif metadata_path(plain).is_file():
        kind, path = "jsonl", plain
    elif ":" in body and not plain.exists():
        _, target = reg.parse(body)  # a user's 'package.module:function', else the registry's error listing the forms
        return DataSpec(target, None, options, text)
    else:
        raise ValueError(f"data spec {spec!r}: {plain} has no metadata.jsonl and no kind prefix; use one of: "
                         f"{spec_forms()} (`fmmc list datasets`)")
    known = reader_options(kind)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"data spec {spec!r}: unknown option(s) {unknown} for {kind}:; known: {sorted(known) or 'none'}")
    if not path.exists():
        raise FileNotFoundError(f"data spec {spec!r}: {path} does not exist; fix the path after '{kind}:'")
    return DataSpec(kind, path, options, text)


def load_test_set(spec: str, split: str | None = None, cache_dir: str | Path | None = None,
                  allow_outside_root: bool = False) -> TestSet:
    """Load the test set named by ``spec`` through the ``dataset`` registry. ``cache_dir`` holds materialised
    DMS region masks; ``allow_outside_root`` lets a ``jsonl:`` dataset name files outside its folder
    (:func:`fmmc.data.dataset.load_dataset`; ``$FMMC_ALLOW_OUTSIDE_PATHS=1`` does too)."""
    ds = parse_data_spec(spec)
    target = f"{ds.kind}:{ds.path}" if ds.path is not None else ds.kind
    trust = {TRUST_ARG: True} if allow_outside_root and ds.kind == "jsonl" else {}
    ts = build("dataset", target, split=split, cache_dir=cache_dir, **trust, **ds.options)
    if isinstance(ts, list):
        ts = TestSet(ds.text, ds.kind, ts)
    if not isinstance(ts, TestSet):
        raise TypeError(f"data spec {spec!r}: the reader {ds.kind} returned {type(ts).__name__}; "
                        "a reader must return a TestSet or a list of Region")
    ts.spec = ds.text
    if not ts.regions:
        raise DatasetError(f"{spec}: no labelled regions to evaluate" + (f" ({'; '.join(ts.notes)})" if ts.notes else ""))
    unlabelled = [r.id for r in ts.regions if not r.label]
    if unlabelled:
        raise DatasetError(f"{spec}: {len(unlabelled)} region(s) have no label (first: {unlabelled[0]!r}); "
                           "evaluation needs the true label of every region")
    log.info("test set %s: %d regions, %d classes", spec, len(ts.regions), len(ts.classes))
    return ts


# ------------------------------------------------------------------------------ shared by the readers
def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (:func:`fmmc.core.paths.is_image_file`, any case), in name order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def class_map(source: str | None) -> dict[str, str | None] | None:
    """A label map (``fmd``, ``dms`` or a file) for class folder names; None: names are used as they are."""
    if not source:
        return None
    from fmmc.taxonomy import load_label_map

    return load_label_map(source)


def map_class(name: str, mapping: dict[str, str | None] | None, where: Path) -> str | None:
    """The taxonomy label of class folder ``name`` (case-insensitive); None: the map drops the class."""
    if mapping is None:
        return name
    lowered = {k.lower(): v for k, v in mapping.items()}
    if name.lower() not in lowered:
        raise DatasetError(f"{where}: class folder {name!r} is not in the label map; expected one of "
                           f"{', '.join(sorted(mapping))} (or pass map=FILE with a mapping for it)")
    return lowered[name.lower()]


def problem_list(problems: list[str], limit: int = 10) -> str:
    """The first ``limit`` problems, one per indented line, and how many more there are."""
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n  ".join(problems[:limit]) + more


def no_splits_note(kind: str, split: str | None) -> list[str]:
    """The note for ``--split`` given to a test set without splits."""
    return [f"--split {split} ignored: {kind} test sets have no splits (every image is used)"] if split is not None else []
