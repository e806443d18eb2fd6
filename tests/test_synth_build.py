"""Build stage: pHash de-dup, balance, grouped split, dataset folder, card and contact sheets (no models)."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fmmc.data.dataset import load_dataset
from fmmc.data.validate import validate_dataset
from fmmc.synth.build import balance, build_dataset, dedup, near_duplicates, split
from fmmc.synth.config import BuildConfig
from fmmc.taxonomy import load_taxonomy

TAX = load_taxonomy("default")


def _image(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A random blocky picture: distinct seeds give perceptually distinct images."""
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.NEAREST)


def make_records(root, spec, seed=0):
    """``spec``: {label: {object: n_images}}; writes images + masks like the generate/label stages do."""
    rng = np.random.default_rng(seed)
    records = []
    for label, objects in spec.items():
        for obj, n in objects.items():
            for k in range(n):
                rid = f"{label}--{obj}--plain--{k}"
                img_rel, mask_rel = f"images/{label}/{rid}.png", f"masks/{rid}.png"
                (root / img_rel).parent.mkdir(parents=True, exist_ok=True)
                (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                _image(rng).save(root / img_rel)
                mask = np.zeros((64, 64), np.uint8)
                mask[8:40, 10:50] = 255
                Image.fromarray(mask).save(root / mask_rel)
                records.append({
                    "id": rid, "triplet_id": f"{label}--{obj}--plain", "object": obj, "material": label,
                    "submaterial": "plain", "label": label, "image": img_rel, "mask": mask_rel, "status": "ok",
                    "box": [9.6, 7.5, 50.2, 70.0], "prompt": f"a photo of a plain {label} {obj}", "seed": k,
                    "model_id": "tiny-sd", "grounder": "hf:tiny-gdino", "segmenter": "hf:tiny-sam", "width": 64,
                    "height": 64, "det_score": 0.9, "mask_score": 0.95, "area_frac": 0.3,
                })
    return records


def test_near_duplicates_hand_checked():
    h = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=bool)
    assert near_duplicates(h, 0) == [None, None, None, None, None]
    assert near_duplicates(h, 1) == [None, 0, None, 2, None]
    assert near_duplicates(h, 2) == [None, 0, None, 2, 0]


def test_dedup_drops_near_copies_only(tmp_path):
    recs = make_records(tmp_path, {"wood": {"chair": 4}})
    src = tmp_path / recs[0]["image"]
    for k, transform in enumerate([lambda im: im, lambda im: im.filter(ImageFilter.GaussianBlur(0.6))]):
        rel = f"images/wood/copy{k}.png"
        transform(Image.open(src)).save(tmp_path / rel)
        recs.append({**recs[0], "id": f"wood--zcopy{k}", "image": rel})
    kept, dropped = dedup(recs, tmp_path, max_distance=4)
    assert sorted(r["id"] for r, _ in dropped) == ["wood--zcopy0", "wood--zcopy1"]
    assert all(dup == recs[0]["id"] for _, dup in dropped) and len(kept) == 4
    assert len(dedup(recs, tmp_path, max_distance=-1)[0]) == 6


def test_balance_caps_per_class_round_robin_over_objects():
    recs = [{"id": f"{lab}-{o}-{k}", "label": lab, "object": o} for lab, objs in
            {"wood": {"chair": 6, "bowl": 1, "box": 3}, "metal": {"key": 2}}.items() for o, n in objs.items() for k in range(n)]
    kept, dropped, target = balance(recs, per_class=5, strict=False, seed=0)
    assert target == 5 and Counter(r["label"] for r in kept) == {"wood": 5, "metal": 2}
    assert Counter(r["object"] for r in kept if r["label"] == "wood") == {"chair": 2, "bowl": 1, "box": 2}
    assert len(dropped) == 5
    kept, _, target = balance(recs, per_class=5, strict=True, seed=0)
    assert target == 2 and Counter(r["label"] for r in kept) == {"wood": 2, "metal": 2}


def test_split_is_stratified_and_keeps_groups_together():
    recs = [{"id": f"{lab}-{t}-{s}", "label": lab, "triplet_id": f"{lab}-{t}", "object": "x"}
            for lab in ("wood", "metal") for t in range(10) for s in range(3)]
    splits = split(recs, 0.2, seed=0, by="triplet")
    for lab in ("wood", "metal"):
        assert Counter(splits[r["id"]] for r in recs if r["label"] == lab) == {"train": 24, "val": 6}
    for t in {r["triplet_id"] for r in recs}:
        assert len({splits[r["id"]] for r in recs if r["triplet_id"] == t}) == 1
    assert split(recs, 0.2, seed=0, by="triplet") == splits
    assert set(split(recs, 0.0, seed=0).values()) == {"train"}
    with pytest.raises(ValueError, match="split_by"):
        split(recs, 0.2, seed=0, by="colour")


def test_build_writes_a_valid_balanced_dataset(tmp_path):
    root = tmp_path / "synth"
    recs = make_records(root, {"wood": {"chair": 5, "bowl": 3}, "metal": {"key": 4, "pan": 1}, "wax": {"candle": 2}})
    recs.append({**recs[0], "id": "rejected-one", "status": "rejected", "reason": "object not found"})
    cfg = BuildConfig(per_class=4, val_fraction=0.25, split_by="item", contact_sheet_max=6, thumb_size=32)
    report = build_dataset(recs, root, root / "dataset", cfg, TAX, seed=0, classes=["wood", "metal", "wax", "fur"],
                           rejects=Counter({"label: object not found": 1}), config={"seed": 0})
    ds = root / "dataset"
    n, problems = validate_dataset(ds, TAX)
    assert problems == [] and n == 10 == report.total
    assert {c: sum(v.values()) for c, v in report.counts.items()} == {"wood": 4, "metal": 4, "wax": 2}
    regions = load_dataset(ds)
    assert Counter((r.label, r.split) for r in regions)[("wood", "val")] == 1
    r = next(x for x in regions if x.id == "wood--chair--plain--0")
    assert r.description == "a plain chair" and r.box == (9, 7, 51, 64)  # clamped to the 64x64 image
    assert r.extra["prompt"] == "a photo of a plain wood chair" and r.extra["model_id"] == "tiny-sd"
    assert r.image.stat().st_ino == (root / "images/wood/wood--chair--plain--0.png").stat().st_ino  # hard link
    card = (ds / "README.md").read_text()
    assert "| wood | 3 | 1 | 4 |" in card and "label: object not found | 1" in card
    assert "build: over the per-class target (balance) | 5" in card and "`tiny-sd` (10)" in card
    assert "class 'fur' has no usable images" in card and "class 'wax' has 2 images" in card
    assert sorted(p.name for p in (ds / "contact_sheets").iterdir()) == ["metal.png", "wax.png", "wood.png"]
    assert Image.open(ds / "contact_sheets" / "wood.png").size == (4 * 32, 32 + 14)
    assert json.loads((ds / "taxonomy.json").read_text())["name"] == TAX.name
    assert json.loads((ds / "build_report.json").read_text())["total"] == 10

    # a rebuild replaces the folder: nothing left over from the first build
    report2 = build_dataset(recs, root, ds, BuildConfig(per_class=2, contact_sheet_max=0), TAX, seed=0)
    assert report2.total == 6 and len(list((ds / "images").rglob("*.png"))) == 6
    assert not (ds / "contact_sheets").exists()
    assert not [p for p in root.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_build_copy_mode_and_bad_link(tmp_path):
    recs = make_records(tmp_path, {"wood": {"chair": 2}})
    build_dataset(recs, tmp_path, tmp_path / "ds", BuildConfig(link="copy", contact_sheet_max=0), TAX)
    a, b = tmp_path / "ds/images/wood/wood--chair--plain--0.png", tmp_path / recs[0]["image"]
    assert a.read_bytes() == b.read_bytes() and not os.path.samefile(a, b)
    with pytest.raises(ValueError, match="build.link"):
        build_dataset(recs, tmp_path, tmp_path / "ds2", BuildConfig(link="teleport"), TAX)
