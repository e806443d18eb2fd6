"""The final dataset: de-duplicate (perceptual hash), balance classes, split, write the fmmc dataset folder.

    >>> report = build_dataset(label_records, root=Path("runs/synth"), out=Path("runs/synth/dataset"),
    ...                        cfg=BuildConfig(per_class=1000), taxonomy=load_taxonomy("default"))  # doctest: +SKIP
    >>> report.counts["ceramic"]                                                                   # doctest: +SKIP
    {'train': 900, 'val': 100}

Input: labelled records with ``status == "ok"`` (image and mask paths relative to ``root``). Output, in
``out`` (replaced atomically, so a failed build never leaves half a dataset): ``images/<label>/<id>.png``,
``masks/<label>/<id>.png`` (hard links by default), ``metadata.jsonl`` (fmmc format: ``file_name``,
``label``, ``mask_file_name``, ``description``, ``split``, ``box`` + prompt, seed, models, object, ...),
``README.md`` (the dataset card), ``contact_sheets/<label>.png``, ``taxonomy.json`` and ``build_report.json``.

* near-duplicates: pHash Hamming distance <= ``dedup_hamming`` (the first by id is kept);
* balance: at most ``per_class`` per class, sampled round-robin over objects (seeded), so every object
  stays represented; ``strict_balance`` cuts every class to the smallest one;
* split: stratified per class, by group (``split_by: triplet`` keeps all seeds of one prompt in one split,
  so near-identical images never straddle train and val).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmmc.data.dataset import write_dataset
from fmmc.data.imageio import load_image
from fmmc.data.records import Region
from fmmc.synth.config import BuildConfig
from fmmc.synth.triplets import fix_articles, normalize, select_balanced
from fmmc.taxonomy import Taxonomy

log = logging.getLogger(__name__)

EXTRA_KEYS = ("object", "material", "submaterial", "triplet_id", "source", "prompt", "negative_prompt", "seed",
              "model_id", "generator", "steps", "guidance", "scheduler", "grounder", "segmenter", "det_score",
              "mask_score", "area_frac")


@dataclass
class BuildReport:
    dataset: Path
    counts: dict[str, dict[str, int]]                      # label -> split -> n
    rejects: dict[str, int] = field(default_factory=dict)  # "stage: reason" -> n
    warnings: list[str] = field(default_factory=list)
    models: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(sum(v.values()) for v in self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {"dataset": str(self.dataset), "total": self.total, "counts": self.counts, "rejects": self.rejects,
                "warnings": self.warnings, "models": self.models}


# -------------------------------------------------------------------------------------------- de-dup
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def phash_bits(path: Path, hash_size: int = 8) -> np.ndarray:
    """The perceptual hash of an image as a bool vector of ``hash_size**2`` bits."""
    try:
        import imagehash
    except ImportError as e:
        raise ImportError("near-duplicate removal needs ImageHash: pip install 'fmmc[synth]' "
                          "(or turn it off with build.dedup_hamming=-1)") from e

    return np.asarray(imagehash.phash(load_image(path), hash_size=hash_size).hash, dtype=bool).ravel()


def near_duplicates(hashes: np.ndarray, max_distance: int) -> list[int | None]:
    """For each row of ``hashes`` ([n, bits] bool), the index of an earlier kept row within ``max_distance``
    bits (so it is a duplicate), or None (kept). Greedy in row order."""
    n = len(hashes)
    packed = np.packbits(hashes.astype(bool), axis=1)
    kept = np.empty_like(packed)
    kept_idx: list[int] = []
    out: list[int | None] = []
    for i in range(n):
        if kept_idx:
            dist = _POPCOUNT[np.bitwise_xor(kept[:len(kept_idx)], packed[i])].sum(axis=1)
            j = int(dist.argmin())
            if int(dist[j]) <= max_distance:
                out.append(kept_idx[j])
                continue
        kept[len(kept_idx)] = packed[i]
        kept_idx.append(i)
        out.append(None)
    return out


def dedup(records: list[dict[str, Any]], root: Path, max_distance: int, hash_size: int = 8,
          progress: bool = False) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """``(kept, [(dropped, id of its duplicate)])``; ``max_distance < 0`` keeps everything."""
    if max_distance < 0 or len(records) < 2:
        return list(records), []
    from tqdm.auto import tqdm

    records = sorted(records, key=lambda r: r["id"])
    hashes = np.stack([phash_bits(root / r["image"], hash_size)
                       for r in tqdm(records, desc="synth build: pHash", unit="img", disable=not progress)])
    dup_of = near_duplicates(hashes, max_distance)
    kept = [r for r, d in zip(records, dup_of) if d is None]
    dropped = [(r, records[d]["id"]) for r, d in zip(records, dup_of) if d is not None]
    return kept, dropped


# ------------------------------------------------------------------------------------ balance, split
def balance(records: list[dict[str, Any]], per_class: int, strict: bool, seed: int | str,
            classes: list[str] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """``(kept, dropped, target)``: at most ``target`` per class, round-robin over objects."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_label[r["label"]].append(r)
    target = per_class if per_class > 0 else max((len(v) for v in by_label.values()), default=0)
    if strict and by_label:
        present = [len(by_label.get(c, [])) for c in (classes or list(by_label))]
        target = min([target, *present])
    kept, dropped = [], []
    for label in sorted(by_label):
        chosen = select_balanced(by_label[label], target, f"{seed}:{label}")
        ids = {r["id"] for r in chosen}
        kept += [r for r in by_label[label] if r["id"] in ids]
        dropped += [r for r in by_label[label] if r["id"] not in ids]
    return kept, dropped, target


def group_key(record: dict[str, Any], by: str) -> str:
    if by == "item":
        return record["id"]
    if by == "triplet":
        return str(record.get("triplet_id") or record["id"])
    if by == "object":
        return f"{record['label']}|{normalize(str(record.get('object', record['id'])))}"
    raise ValueError(f"build.split_by={by!r}: use item, triplet or object")


def split(records: list[dict[str, Any]], val_fraction: float, seed: int | str, by: str = "triplet") -> dict[str, str]:
    """``id -> "train" | "val"``, stratified per label, whole groups at a time (seeded)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"build.val_fraction={val_fraction}: must be in [0, 1)")
    out: dict[str, str] = {}
    by_label: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_label[r["label"]][group_key(r, by)].append(r["id"])
    for label in sorted(by_label):
        groups = by_label[label]
        keys = sorted(groups)
        random.Random(f"{seed}:{label}:split").shuffle(keys)
        n = sum(len(v) for v in groups.values())
        target = int(round(n * val_fraction))
        if val_fraction > 0 and n >= 3 and len(keys) >= 2:
            target = max(1, target)
        n_val = 0
        for k, key in enumerate(keys):
            to_val = n_val < target and k < len(keys) - 1  # at least one group stays in train
            for rid in groups[key]:
                out[rid] = "val" if to_val else "train"
            n_val += len(groups[key]) if to_val else 0
    return out


# --------------------------------------------------------------------------------------------- write
def _place(src: Path, dst: Path, how: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if how == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem, or no hard links here: copy
    elif how == "symlink":
        os.symlink(src.resolve(), dst)
        return
    elif how != "copy":
        raise ValueError(f"build.link={how!r}: use hardlink, copy or symlink")
    shutil.copy2(src, dst)


def _box(rec: dict[str, Any], size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    box = rec.get("box")
    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        return None
    w, h = size
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def describe(rec: dict[str, Any], template: str) -> str:
    try:
        text = template.format(**{k: rec.get(k, "") for k in ("object", "material", "submaterial", "label")})
        return fix_articles(" ".join(text.split()))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"build.description_template={template!r}: {e!r}; fields: {{object}} {{material}} "
                         "{submaterial} {label}") from e


def write_folder(records: list[dict[str, Any]], splits: dict[str, str], root: Path, out: Path,
                 cfg: BuildConfig) -> list[Region]:
    """Place images and masks under ``out`` and write its metadata.jsonl; returns the regions."""
    regions = []
    for rec in sorted(records, key=lambda r: (r["label"], r["id"])):
        label = rec["label"]
        img_dst = out / "images" / label / f"{rec['id']}.png"
        mask_dst = out / "masks" / label / f"{rec['id']}.png"
        _place(root / rec["image"], img_dst, cfg.link)
        _place(root / rec["mask"], mask_dst, cfg.link)
        size = (int(rec["width"]), int(rec["height"])) if rec.get("width") and rec.get("height") else \
            load_image(img_dst).size
        extra = {k: rec[k] for k in EXTRA_KEYS if rec.get(k) is not None}
        regions.append(Region(image=img_dst, mask=mask_dst, label=label, description=describe(rec, cfg.description_template),
                              split=splits.get(rec["id"], "train"), id=rec["id"], box=_box(rec, size), extra=extra))
    write_dataset(out, regions)
    return regions


def build_dataset(records: list[dict[str, Any]], root: Path, out: Path, cfg: BuildConfig, taxonomy: Taxonomy,
                  seed: int = 0, classes: list[str] | None = None, rejects: Counter[str] | None = None,
                  warnings: list[str] | None = None, config: dict[str, Any] | None = None,
                  progress: bool = False) -> BuildReport:
    """Build the dataset folder ``out`` from labelled records (only ``status == "ok"`` ones are used)."""
    from fmmc.synth.card import write_card, write_contact_sheets

    root, out = Path(root), Path(out)
    classes = list(classes or taxonomy.names)
    rejects = Counter(rejects or {})
    warnings = list(warnings or [])
    usable = []
    for r in records:
        if r.get("status") != "ok":
            continue
        if not r.get("image") or not r.get("mask"):
            rejects["build: no image or mask file"] += 1
            continue
        if taxonomy.canonical(str(r.get("label"))) is None:
            rejects["build: label not in taxonomy"] += 1
            continue
        usable.append({**r, "label": taxonomy.canonical(r["label"])})
    kept, dupes = dedup(usable, root, cfg.dedup_hamming, cfg.hash_size, progress)
    rejects["build: near-duplicate"] += len(dupes)
    kept, over, target = balance(kept, cfg.per_class, cfg.strict_balance, seed, classes)
    rejects["build: over the per-class target (balance)"] += len(over)
    counts_by_label = Counter(r["label"] for r in kept)
    for c in classes:
        if counts_by_label[c] == 0:
            warnings.append(f"class {c!r} has no usable images: it is missing from the dataset")
        elif counts_by_label[c] < target:
            warnings.append(f"class {c!r} has {counts_by_label[c]} images, under the target of {target}")
    splits = split(kept, cfg.val_fraction, seed, cfg.split_by)

    from fmmc.core.outputs import atomic_dir

    # the run's own dataset folder, rebuilt as a whole; a folder fmmc did not write is refused, never replaced
    with atomic_dir(out, "synth-dataset", overwrite=True) as tmp:
        regions = write_folder(kept, splits, root, tmp, cfg)
        counts: dict[str, dict[str, int]] = {}
        for reg in regions:
            counts.setdefault(str(reg.label), Counter())[str(reg.split)] += 1  # type: ignore[index]
        counts = {c: dict(counts.get(c, {})) for c in classes if c in counts}
        models = {key: dict(Counter(str(r.get(key)) for r in kept if r.get(key)))
                  for key in ("model_id", "grounder", "segmenter")}
        report = BuildReport(out, counts, dict(sorted((k, v) for k, v in rejects.items() if v)), warnings, models)
        (tmp / "taxonomy.json").write_text(json.dumps(taxonomy.to_dict(), indent=1) + "\n")
        (tmp / "build_report.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
        write_contact_sheets(regions, tmp / "contact_sheets", taxonomy, cfg.contact_sheet_max, cfg.thumb_size, seed)
        write_card(tmp / "README.md", report, classes, config)
    for w in warnings:
        log.warning("build: %s", w)
    log.info("dataset %s: %d regions in %d classes", out, report.total, len(counts))
    return report
