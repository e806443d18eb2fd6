"""Test-set loaders on small fixture folders: FMD, DMS, image folder, metadata.jsonl, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_eval import DMS, write_dms, write_fmd, write_folder, write_train
from PIL import Image

from fmmc.data.dataset import DatasetError
from fmmc.data.imageio import load_mask
from fmmc.data.readers.spec import load_test_set, parse_data_spec
from fmmc.data.regions import load_region


def test_parse_data_spec(tmp_path: Path):
    write_train(tmp_path / "ds", n=1)
    s = parse_data_spec(f"dms:{tmp_path}?images=/x&min_area=0.05")
    assert (s.kind, s.path, s.options) == ("dms", tmp_path, {"images": "/x", "min_area": "0.05"})
    assert parse_data_spec(str(tmp_path / "ds")).kind == "jsonl"  # plain folder with metadata.jsonl
    assert parse_data_spec(f"jsonl:{tmp_path / 'ds'}").kind == "jsonl"
    with pytest.raises(ValueError, match="no metadata.jsonl and no kind prefix"):
        parse_data_spec(str(tmp_path))
    with pytest.raises(ValueError, match="unknown option"):
        parse_data_spec(f"fmd:{tmp_path}?colour=red")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_data_spec(f"fmd:{tmp_path}/nope")


def test_fmd_loader(tmp_path: Path):
    root = write_fmd(tmp_path / "fmd", n=3)
    ts = load_test_set(f"fmd:{root}")
    assert len(ts.regions) == 9 and sorted(ts.classes) == ["fabric", "metal", "wood"]
    r = next(r for r in ts.regions if r.label == "wood")
    assert r.id.startswith("wood/") and r.mask is not None and r.mask.parent.name == "wood"
    assert r.extra["mask_threshold"] == 128 and r.extra["source_label"] == "wood"
    raw = np.unique(np.asarray(Image.open(r.mask).convert("L")))
    assert len(raw) > 2  # JPEG mask: not binary, so it must be thresholded
    assert np.array_equal(load_mask(r.mask), load_mask(r.mask, threshold=128))  # the one mask rule: >= 128
    m = load_region(r)[1]  # the one region rule honours mask_threshold
    assert m[19:45, 19:45].all() and m.sum() == 26 * 26


def test_fmd_missing_and_mismatched_masks(tmp_path: Path):
    root = write_fmd(tmp_path / "fmd", n=2)
    (root / "mask/metal/metal_000.jpg").unlink()
    Image.new("L", (10, 10)).save(root / "mask/wood/wood_001.jpg")  # wrong size
    Image.new("L", (64, 64)).save(root / "mask/wood/orphan.jpg")  # a mask without an image
    with pytest.raises(DatasetError) as e:
        load_test_set(f"fmd:{root}")
    msg = str(e.value)
    assert "2 image(s) without a usable mask" in msg
    assert "image/metal/metal_000.jpg: no mask" in msg
    assert "wood_001.jpg: image is 64x64 but its mask" in msg and "10x10" in msg
    assert "missing=skip" in msg
    ts = load_test_set(f"fmd:{root}?missing=skip")
    assert len(ts.regions) == 4
    assert any("2 image(s) skipped" in n for n in ts.notes) and any("without an image" in n for n in ts.notes)


def test_fmd_wrong_layout_and_unknown_class(tmp_path: Path):
    root = write_folder(tmp_path / "flat")
    with pytest.raises(DatasetError, match=r"not an FMD folder.*image/<class>/\*\.jpg"):
        load_test_set(f"fmd:{root}")
    fmd = write_fmd(tmp_path / "fmd", classes=("metal",), n=1)
    (fmd / "image/bricks").mkdir()
    with pytest.raises(DatasetError, match="class folder 'bricks' is not in the label map"):
        load_test_set(f"fmd:{fmd}")


def test_dms_loader(tmp_path: Path):
    root = write_dms(tmp_path / "dms", n=3)
    masks = tmp_path / "masks"
    ts = load_test_set(f"dms:{root}?masks={masks}")  # labels/test + images/test found in the root
    # per image: Metal and Wood kept; Sky unmapped, 'I cannot tell' and 'No label' non-material, Fabric speck < 1%
    assert len(ts.regions) == 6 and sorted(ts.classes) == ["metal", "wood"]
    r = next(r for r in ts.regions if r.label == "metal")
    assert r.extra["dms_value"] == DMS["Metal"] and r.extra["dms_name"] == "Metal"
    assert r.id == f"{r.image.stem}:{DMS['Metal']}" and r.mask.parent == masks
    lab = np.asarray(Image.open(root / "labels/test" / f"{r.image.stem}.png"))
    assert np.array_equal(load_mask(r.mask), lab == DMS["Metal"])  # materialised binary PNG
    assert ts.stats["dropped"] == {"non-material": 6, "below min_area": 3}
    assert ts.stats["unmapped"] == {"Sky": 3}
    notes = " ".join(ts.notes)
    assert "Sky (3)" in notes and "non-material" in notes and "smaller than 0.01" in notes
    # keep=all keeps unmapped materials under their DMS names; min_area=0 keeps the speck
    ts2 = load_test_set(f"dms:{root}?masks={masks}&keep=all&min_area=0")
    assert sorted(set(ts2.classes)) == ["Sky", "fabric", "metal", "wood"]
    # mask files are reused, not rewritten
    mtime = r.mask.stat().st_mtime_ns
    load_test_set(f"dms:{root}?masks={masks}")
    assert r.mask.stat().st_mtime_ns == mtime


def test_dms_images_elsewhere_and_errors(tmp_path: Path):
    root = write_dms(tmp_path / "dms", n=2)
    labels = root / "labels" / "test"
    images = root / "images"
    with pytest.raises(DatasetError, match="where are the RGB images"):
        load_test_set(f"dms:{labels}")
    ts = load_test_set(f"dms:{labels}?images={images}&masks={tmp_path / 'm'}")  # images/<split> found
    assert len(ts.regions) == 4
    # a label map without its RGB image
    (images / "test" / "oi_0001.jpg").unlink()
    with pytest.raises(DatasetError, match=r"oi_0001.png: no RGB image oi_0001\.\* in"):
        load_test_set(f"dms:{root}?masks={tmp_path / 'm'}")
    assert len(load_test_set(f"dms:{root}?masks={tmp_path / 'm'}&missing=skip").regions) == 2
    # values outside the DMS taxonomy
    bad = np.full((40, 40), 200, dtype=np.uint8)
    Image.fromarray(bad).save(labels / "oi_0000.png")
    with pytest.raises(DatasetError, match=r"oi_0000.png: label value\(s\) \[200\] outside the DMS taxonomy"):
        load_test_set(f"dms:{root}?masks={tmp_path / 'm'}&missing=skip")
    # a colour image is not a label map
    Image.new("RGB", (40, 40)).save(labels / "oi_0000.png")
    with pytest.raises(DatasetError, match="mode RGB"):
        load_test_set(f"dms:{root}?masks={tmp_path / 'm'}&missing=skip")


def test_dms_split_and_taxonomy_file(tmp_path: Path):
    root = write_dms(tmp_path / "dms", n=1, split="validation")
    with pytest.raises(DatasetError, match="choose a split with --split"):
        load_test_set(f"dms:{root}?masks={tmp_path / 'm'}")
    assert len(load_test_set(f"dms:{root}?masks={tmp_path / 'm'}", split="validation").regions) == 2
    names = json.loads(json.dumps(__import__("fmmc.taxonomy.taxonomy", fromlist=["x"]).dms_names()))
    (root / "taxonomy.json").write_text(json.dumps({"names": names}))
    assert len(load_test_set(f"dms:{root}?masks={tmp_path / 'm'}", split="validation").regions) == 2


def test_folder_loader(tmp_path: Path):
    root = write_folder(tmp_path / "g", classes=("metal", "wood"), n=3)
    (root / "loose.jpg").write_bytes((root / "metal" / "0.jpg").read_bytes())
    ts = load_test_set(f"folder:{root}")
    assert len(ts.regions) == 6 and all(r.mask is None for r in ts.regions)
    assert ts.regions[0].id == "metal/0.jpg" and any("loose" in n or "directly" in n for n in ts.notes)
    with pytest.raises(DatasetError, match="no class folders"):
        load_test_set(f"folder:{root / 'metal'}")


def test_jsonl_loader_splits(tmp_path: Path):
    root = write_train(tmp_path / "ds", n=2)
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    for i, x in enumerate(lines):
        x["split"] = "test" if i % 2 else "train"
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert len(load_test_set(str(root)).regions) == 3  # the 'test' split when present
    assert len(load_test_set(str(root), split="train").regions) == 3
    with pytest.raises(DatasetError, match="no region has split='val'"):
        load_test_set(str(root), split="val")
