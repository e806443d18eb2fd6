"""The field's two evaluation protocols, and the random halves of the in-domain one.

    >>> parse_protocol("splits:10")
    Protocol(kind='splits', n_splits=10)
    >>> [round(v, 3) for v in mean_std([0.9, 0.8, 0.7])]
    [0.8, 0.1]

``cross`` (the default, the paper's): a trained model predicts a test set it never saw; the paper trains on
synthetic images only and reports FMD 0.89. ``splits:N`` (in-domain, the texture papers': RADAM, VORTEX,
FV-CNN): the test set is cut into N random 50/50 halves, stratified by class and seeded; a head is trained on
one half of each and scored on the other, and the N scores are reported as mean and standard deviation.

A split is :func:`fmmc.data.dataset.split_regions` at fraction 0.5 (the "val" side is the test half): whole
groups (the regions of one image, one ``group``) at a time, so two regions of one photo never straddle the
halves; per class the test half holds ``round(n / 2)`` regions when every group is one region. The halves
are written as region ids (``splits.json``, :func:`write_splits`), in the order training reads them, so
:func:`read_splits` + :func:`resolve_splits` rebuild exactly the same training and test sets.

The spread is the sample standard deviation (``ddof=1``) over the splits, as numpy's ``std(ddof=1)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmmc.data.records import Region

SPLITS_FILE = "splits.json"
TEST_FRACTION = 0.5
SPLIT_METRICS = ("acc", "macc", "miou", "top3", "top5", "ece")  # averaged over the splits
PROTOCOL_HELP = ("cross (default: the model predicts a test set it never saw, as the paper) or splits:N (train the "
                 "head on N random 50/50 halves of the test set itself and score the other half, as texture papers "
                 "do on FMD: splits:10)")


@dataclass(frozen=True)
class Protocol:
    kind: str = "cross"  # cross | splits
    n_splits: int = 0

    def __str__(self) -> str:
        return "cross" if self.kind == "cross" else f"splits:{self.n_splits}"


def parse_protocol(text: str | Protocol | None) -> Protocol:
    """``cross`` or ``splits:N`` (N >= 1) as a :class:`Protocol`; anything else is a one-line error."""
    if isinstance(text, Protocol):
        return text
    t = (text or "cross").strip().lower()
    if t == "cross":
        return Protocol()
    kind, _, n = t.partition(":")
    if kind == "splits" and n.isdigit() and int(n) >= 1:
        return Protocol("splits", int(n))
    raise ValueError(f"protocol {text!r}: use {PROTOCOL_HELP}")


@dataclass
class Split:
    """One random halving: the region ids of each half, in the order training and evaluation read them."""

    seed: int
    train: list[str]
    test: list[str]


def split_seed(seed: int, index: int) -> int:
    """The seed of split ``index`` of a protocol seeded ``seed`` (written in the splits file)."""
    return seed * 1000 + index


def make_splits(regions: Sequence[Region], n_splits: int, seed: int = 0, where: str = "test set") -> list[Split]:
    """``n_splits`` stratified, seeded 50/50 halvings of ``regions`` (see the module docstring)."""
    from fmmc.data.dataset import split_regions

    _unique_ids(regions, where)
    out = []
    for i in range(n_splits):
        s = split_seed(seed, i)
        train, test = split_regions(list(regions), TEST_FRACTION, s)
        if not train or not test:
            raise ValueError(f"{where}: {len(regions)} region(s) cannot be cut into two halves; the splits protocol "
                             "needs at least two images per class")
        out.append(Split(s, [r.id for r in train], [r.id for r in test]))
    return out


def _unique_ids(regions: Sequence[Region], where: str) -> None:
    seen: set[str] = set()
    for r in regions:
        if r.id in seen:
            raise ValueError(f"{where}: region id {r.id!r} appears twice; the splits protocol names regions by id, so "
                             "give each region its own id (the 'id' field of metadata.jsonl)")
        seen.add(r.id)


def write_splits(path: str | Path, splits: Sequence[Split], seed: int, data: str) -> Path:
    """``splits.json``: the protocol's seed, the data spec and, per split, its seed and both halves' ids."""
    from fmmc.core.io import write_json_atomic

    doc = {"protocol": f"splits:{len(splits)}", "seed": seed, "data": data, "test_fraction": TEST_FRACTION,
           "splits": [{"split": i, "seed": s.seed, "train": s.train, "test": s.test} for i, s in enumerate(splits)]}
    return write_json_atomic(path, doc)


def read_splits(path: str | Path) -> tuple[int, list[Split]]:
    """(seed, splits) of a file written by :func:`write_splits`; a malformed file is a one-line error."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"--splits {p}: cannot read it as JSON ({e}); give the splits.json an earlier "
                         "`fmmc eval --protocol splits:N` wrote") from e
    items = doc.get("splits") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f"--splits {p}: no 'splits' list; give the splits.json an earlier `fmmc eval --protocol "
                         "splits:N` wrote")
    out = []
    for i, item in enumerate(items):
        ok = isinstance(item, dict) and all(isinstance(item.get(k), list) for k in ("train", "test"))
        if not ok or not all(isinstance(x, str) for x in item["train"] + item["test"]):
            raise ValueError(f"--splits {p}: splits[{i}] needs 'train' and 'test' lists of region ids")
        out.append(Split(int(item.get("seed", i)), list(item["train"]), list(item["test"])))
    return int(doc.get("seed", 0)), out


def resolve_splits(splits: Sequence[Split], regions: Sequence[Region],
                   where: str = "splits") -> list[tuple[list[Region], list[Region]]]:
    """The (train, test) regions of every split, in the file's order. Every region of ``regions`` must be in
    exactly one half of every split, and every id must name one of them (else the test set changed)."""
    _unique_ids(regions, "test set")
    by_id = {r.id: r for r in regions}
    out = []
    for i, s in enumerate(splits):
        unknown = [x for x in s.train + s.test if x not in by_id]
        if unknown:
            raise ValueError(f"{where}: splits[{i}] names {len(unknown)} region(s) the test set does not have (first: "
                             f"{unknown[0]!r}); the file was written for other data: rerun with --protocol splits:N "
                             "to draw new splits")
        both = set(s.train) & set(s.test)
        if both:
            raise ValueError(f"{where}: splits[{i}]: region {sorted(both)[0]!r} is in both halves; fix or redraw the file")
        missing = set(by_id) - set(s.train) - set(s.test)
        if missing or len(s.train) + len(s.test) != len(by_id):
            first = sorted(missing)[0] if missing else "(a repeated id)"
            raise ValueError(f"{where}: splits[{i}] covers {len(set(s.train) | set(s.test))} of the test set's "
                             f"{len(by_id)} regions (first missing: {first!r}); the data changed since the file was "
                             "written: rerun with --protocol splits:N to draw new splits")
        out.append(([by_id[x] for x in s.train], [by_id[x] for x in s.test]))
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``ddof=1``; None for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std of no values")
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(per_split: Sequence[dict[str, Any]], keys: Sequence[str] = SPLIT_METRICS) -> dict[str, dict[str, Any]]:
    """``{"mean": {metric: value}, "std": {metric: value}}`` over the splits' metrics (missing ones skipped)."""
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for k in keys:
        vals = [float(m[k]) for m in per_split if m.get(k) is not None and math.isfinite(float(m[k]))]
        if vals:
            mean[k], std[k] = mean_std(vals)
    return {"mean": mean, "std": std}
