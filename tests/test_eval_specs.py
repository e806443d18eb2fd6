"""Every pluggable part by spec through the one registry: `fmmc list datasets|baselines|llms`, test sets and
zero-shot baselines dispatched by the registry (built-in and a user's `package.module:function`), and the one
DMS reader shared by `fmmc eval dms:` and the material-map evaluation."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures_eval import DMS, write_dms, write_folder
from PIL import Image

from fmmc.cli.main import main
from fmmc.core.registry import registry
from fmmc.data.dataset import DatasetError
from fmmc.data.imageio import image_size
from fmmc.data.readers.dms import dms_pairs
from fmmc.data.readers.spec import load_test_set, parse_data_spec
from fmmc.evaluation.models import load_eval_model
from fmmc.model.maps import evaluate_maps, load_dms_pairs
from fmmc.model.maps.evaluate import source_lut
from fmmc.taxonomy import load_taxonomy
from fmmc.taxonomy.taxonomy import dms_names

TAX = load_taxonomy()


# ------------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("kind, expected", [
    ("datasets", ["fmd:", "dms:", "folder:", "jsonl:"]),
    ("baselines", ["clip:", "vlm:openai:"]),
    ("llms", ["none", "openai:"]),
])
def test_list_new_kinds(kind: str, expected: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(["list", kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all("\t" in line for line in lines)
    for prefix in expected:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)


def test_unknown_dataset_spec_gives_the_registry_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(ValueError, match=r"(?s)unknown dataset spec 'fmdx:/data/x'.*fmd:/path.*fmmc list datasets") as e:
        load_test_set("fmdx:/data/x")
    assert "dms:/path" in str(e.value) and "folder:/path" in str(e.value)
    # through the CLI: exit code 1 and the same message
    rc = main(["eval", "runs/none", "--data", "fmdx:/data/x", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 1 and "unknown dataset spec" in capsys.readouterr().err
    with pytest.raises(ValueError, match="give the path after 'fmd:'"):
        parse_data_spec("fmd:")


def test_load_test_set_dispatches_through_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = write_folder(tmp_path / "g", classes=("metal", "wood"), n=2)
    # the built-in folder: entry is what load_test_set calls (no if/elif of its own)
    (tmp_path / "spy_readers.py").write_text(
        "from fmmc.data.readers.folder import load_folder\n"
        "CALLS = []\n"
        "def spy(root, map=None, *, split=None, cache_dir=None):\n"
        "    CALLS.append((root, split))\n"
        "    return load_folder(root, map, split=split, cache_dir=cache_dir)\n"
        "def mine(split=None, cache_dir=None, label='wood', root=''):\n"
        "    from fmmc.data.records import Region\n"
        "    from pathlib import Path\n"
        "    return [Region(image=p, label=label, id=p.name) for p in sorted(Path(root).glob('*.jpg'))]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = registry("dataset")
    monkeypatch.setitem(reg.entries, "folder", replace(reg.entries["folder"], target="spy_readers:spy"))
    ts = load_test_set(f"folder:{root}", split="test")
    import spy_readers

    assert spy_readers.CALLS == [(str(root), "test")] and len(ts.regions) == 4
    assert ts.spec == f"folder:{root}" and any("--split test ignored" in n for n in ts.notes)
    # a user's reader by 'package.module:function', options as keyword arguments
    ts = load_test_set(f"spy_readers:mine?label=metal&root={root / 'wood'}")
    assert [r.label for r in ts.regions] == ["metal", "metal"] and ts.kind == "spy_readers:mine"
    sys.modules.pop("spy_readers", None)


def test_zeroshot_baselines_dispatch_through_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "my_baselines.py").write_text(
        "from types import SimpleNamespace\n"
        "def build(**kwargs):\n"
        "    return SimpleNamespace(kwargs=kwargs, config={'kind': 'mine'})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_eval_model("zeroshot:my_baselines:build?alpha=1&taxonomy=default", cache_dir=tmp_path / "c")
    assert m.spec == "zeroshot:my_baselines:build?alpha=1&taxonomy=default"
    assert m.kwargs == {"alpha": "1", "taxonomy": "default", "cache_dir": tmp_path / "c", "device": "cpu"}
    with pytest.raises(ValueError, match=r"unknown zero-shot baseline 'zeroshot:blip:x': not a built-in \(zeroshot:clip:.*'blip' does not import"):
        load_eval_model("zeroshot:blip:x")
    with pytest.raises(ValueError, match="the only VLM provider is 'openai'"):
        load_eval_model("zeroshot:vlm:gpt-4o")
    sys.modules.pop("my_baselines", None)


# ------------------------------------------------------------------------------------------- one DMS reader
def _region_images(spec: str, masks: Path, split: str | None = None) -> set[Path]:
    ts = load_test_set(f"{spec}{'&' if '?' in spec else '?'}masks={masks}&keep=all&min_area=0", split=split)
    return {r.image for r in ts.regions}


def _pair_images(root: Path, split: str | None = None, images: Path | None = None) -> set[Path]:
    return {img for img, _ in load_dms_pairs(root, split=split, images=images)[0]}


def test_one_dms_tree_gives_both_readers_the_same_images(tmp_path: Path):
    masks = tmp_path / "m"
    # labels/test + images/test (lower case)
    a = write_dms(tmp_path / "a", n=3)
    assert _region_images(f"dms:{a}", masks) == _pair_images(a) == {a / "images/test" / f"oi_{k:04d}.jpg" for k in range(3)}
    # DMS's own spelling: Labels/test (and IMAGES/Test): the region reader used to reject it
    b = write_dms(tmp_path / "b", n=2)
    (b / "labels").rename(b / "Labels")
    (b / "images").rename(b / "IMAGES")
    (b / "IMAGES/test").rename(b / "IMAGES/Test")
    got = _region_images(f"dms:{b}", masks)
    assert got == _pair_images(b) and len(got) == 2
    # no split given: test only, for both (the map evaluator used to mix in every split)
    write_dms(b / "_extra", n=1, split="train")
    shutil.move(str(b / "_extra/labels/train"), b / "Labels/train")
    shutil.move(str(b / "_extra/images/train"), b / "IMAGES/train")
    assert _region_images(f"dms:{b}", masks) == _pair_images(b) == got
    train = {b / "IMAGES/train/oi_0000.jpg"}
    assert _region_images(f"dms:{b}", masks, split="train") == _pair_images(b, split="train") == train
    # a folder of label maps with the images elsewhere
    labels = a / "labels" / "test"
    assert _region_images(f"dms:{labels}?images={a / 'images'}", masks) == _pair_images(labels, images=a / "images")


def test_dms_files_are_matched_and_decoded_alike(tmp_path: Path):
    masks = tmp_path / "m"
    root = write_dms(tmp_path / "dms", n=3)
    lab, img = root / "labels/test", root / "images/test"
    (lab / "oi_0001.png").rename(lab / "oi_0001.PNG")  # upper-case extensions count
    (img / "oi_0001.jpg").rename(img / "oi_0001.JPG")
    Image.open(img / "oi_0002.jpg").save(img / "oi_0002.png")  # one stem, two images: the first by name
    found = dms_pairs(root)
    assert [p.name for p, _ in found.pairs] == ["oi_0000.jpg", "oi_0001.JPG", "oi_0002.jpg"] and not found.missing
    assert _region_images(f"dms:{root}", masks) == _pair_images(root) == {p for p, _ in found.pairs}
    # a label map without its image: the region reader says so (or skips it), the map evaluator skips it
    (img / "oi_0000.jpg").unlink()
    with pytest.raises(DatasetError, match=r"oi_0000.png: no RGB image oi_0000\.\*"):
        load_test_set(f"dms:{root}?masks={masks}")
    assert _region_images(f"dms:{root}?missing=skip", masks) == _pair_images(root) == {p for p, _ in found.pairs[1:]}


def test_palette_label_maps_and_name_case_decode_the_same(tmp_path: Path):
    """A palette PNG is its indices for both readers; taxonomy.json names map case-insensitively for both."""
    masks = tmp_path / "m"
    root = write_dms(tmp_path / "dms", n=1)
    lab_path = root / "labels/test/oi_0000.png"
    arr = np.asarray(Image.open(lab_path))
    pal = Image.fromarray(arr, mode="P")
    pal.putpalette([c for v in range(256) for c in ((255, 0, 0) if v == DMS["Wood"] else (v, 255 - v, 7))])
    pal.save(lab_path)
    ts = load_test_set(f"dms:{root}?masks={masks}")
    assert sorted({r.label for r in ts.regions}) == ["metal", "wood"]

    class WoodEverywhere:  # a "model" that paints every pixel wood
        taxonomy = TAX

        def segment(self, image, mode, **_):
            return SimpleNamespace(labels=np.full((image.height, image.width), TAX.index("wood"), dtype=np.uint8))

    pairs, names = load_dms_pairs(root)
    report = evaluate_maps(WoodEverywhere(), pairs, names=names)
    # the palette's indices (52 = Wood), not its grey levels; the Fabric speck counts too (no min_area for pixels)
    assert report["images"] == 1 and set(report["per_class"]) == {"fabric", "metal", "wood"}
    assert report["per_class"]["wood"]["acc"] == 1.0 and report["per_class"]["metal"]["acc"] == 0.0
    # lower-case names in taxonomy.json: the same regions and the same lookup table
    (root / "taxonomy.json").write_text(json.dumps({"names": [n.lower() for n in dms_names()]}))
    lower = load_dms_pairs(root)[1]
    assert sorted({r.label for r in load_test_set(f"dms:{root}?masks={masks}").regions}) == ["metal", "wood"]
    assert np.array_equal(source_lut(TAX, lower), source_lut(TAX, dms_names()))


def test_values_outside_the_taxonomy_are_rejected_by_both(tmp_path: Path):
    root = write_dms(tmp_path / "dms", n=2)
    Image.fromarray(np.full((40, 40), 200, dtype=np.uint8)).save(root / "labels/test/oi_0000.png")
    with pytest.raises(DatasetError, match=r"oi_0000.png: label value\(s\) \[200\] outside the DMS taxonomy"):
        load_test_set(f"dms:{root}?masks={tmp_path / 'm'}")
    pairs, names = load_dms_pairs(root)

    class Nothing:
        taxonomy = TAX

        def segment(self, image, mode, **_):
            return SimpleNamespace(labels=np.zeros((image.height, image.width), dtype=np.uint8))

    report = evaluate_maps(Nothing(), pairs, names=names)
    assert report["images"] == 1 and "outside the DMS taxonomy" in report["failures"][0][1]


def test_readers_take_image_sizes_upright(tmp_path: Path):
    img = Image.new("RGB", (30, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 20 wide, 30 high
    img.save(tmp_path / "r.jpg", exif=exif)
    img.save(tmp_path / "p.jpg")
    assert image_size(tmp_path / "r.jpg") == (20, 30) and image_size(tmp_path / "p.jpg") == (30, 20)
