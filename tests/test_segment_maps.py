"""Material maps (fmmc.model.maps): pure painting / upsampling / metric math checked by hand, then grid and SAM
maps from a trained tiny model, `fmmc segment` end to end and the DMS evaluation on a synthetic fixture."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_serve import DMS_INDEX, make_dms_fixture, overrides, scene, tiny_component_dirs, tiny_model_dir
from PIL import Image

from fmmc.model.maps import MaterialMap, evaluate_maps, load_dms_pairs, map_metrics
from fmmc.model.maps.evaluate import confusion, source_lut
from fmmc.model.maps.render import UNLABELLED, boundaries, overlay_image
from fmmc.model.maps.segment import _constant_text, interp_matrix, paint, upsample_argmax
from fmmc.taxonomy import load_taxonomy

TAX = load_taxonomy()


# ----- pure pieces -----
@pytest.mark.parametrize("n_out,n_in", [(7, 3), (64, 4), (5, 5), (3, 8), (1, 1)])
def test_interp_matrix_matches_torch_bilinear(n_out, n_in):
    x = torch.randn(2, n_in, n_in + 1)
    ref = F.interpolate(x[None], size=(n_out, n_out + 2), mode="bilinear", align_corners=False)[0]
    ours = interp_matrix(n_out, n_in) @ x @ interp_matrix(n_out + 2, n_in + 1).T
    assert torch.allclose(ours, ref, atol=1e-5)


def test_upsample_argmax_agrees_with_full_interpolation():
    logits = torch.randn(4, 3, 5)
    labels, conf, sums, counts = upsample_argmax(logits, (300, 41))  # 300 rows: more than one row chunk
    full = F.interpolate(logits[None], size=(300, 41), mode="bilinear", align_corners=False)[0].softmax(0)
    p, lab = full.max(0)
    assert np.array_equal(labels, lab.numpy()) and np.allclose(conf, p.numpy(), atol=1e-5)
    assert counts.sum() == 300 * 41
    for c in range(4):
        if counts[c]:
            assert np.allclose(sums[c], full[:, lab == c].sum(1).numpy(), rtol=1e-4)


def test_paint_puts_small_regions_on_top():
    big = np.ones((4, 4), bool)
    small = np.zeros((4, 4), bool)
    small[1:3, 1:3] = True
    probs = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    labels, conf, ids = paint([big, small], probs)
    assert labels[0, 0] == 1 and labels[1, 1] == 0 and ids[1, 1] == 1 and conf[1, 1] == pytest.approx(0.8)
    labels, _, ids = paint([small], probs[1:])
    assert labels[0, 0] == UNLABELLED and ids[0, 0] == -1


def test_map_metrics_by_hand():
    # class a: 4 pixels, 3 right, 1 called b; class b: 4 pixels, 2 right, 2 unlabelled
    m = map_metrics(np.array([[3, 1, 0], [0, 2, 2]]), ["a", "b"])
    assert m["pixel_acc"] == pytest.approx(5 / 8)
    assert m["per_class"]["a"]["iou"] == pytest.approx(3 / 4)  # 3 / (4 + 3 - 3)
    assert m["per_class"]["b"]["iou"] == pytest.approx(2 / 5)  # 2 / (4 + 3 - 2)
    assert m["miou"] == pytest.approx((3 / 4 + 2 / 5) / 2) and m["macc"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert m["unlabelled_pixels"] == 2
    absent = map_metrics(np.array([[2, 0, 0], [0, 0, 0]]), ["a", "b"])
    assert list(absent["per_class"]) == ["a"] and absent["miou"] == 1.0  # b has no ground truth: not averaged


def test_confusion_ignores_255_and_counts_unlabelled():
    gt = np.array([[0, 1, 255]], np.uint8)
    pred = np.array([[0, 255, 1]], np.uint8)
    assert confusion(gt, pred, 2).tolist() == [[1, 0, 0], [0, 0, 1]]


def test_dms_values_map_onto_the_taxonomy():
    lut = source_lut(TAX)
    assert lut[DMS_INDEX["wood"]] == TAX.index("wood") and lut[DMS_INDEX["foliage"]] == TAX.index("foliage")
    assert lut[0] == 255 and lut[38] == 255  # "No label", "Sky": ignored
    assert lut[33] == lut[34] == TAX.index("plastic")  # both DMS plastics
    assert source_lut(TAX, label_map=None)[3] == 3


def test_overlay_and_boundaries():
    labels = np.full((10, 12), UNLABELLED, np.uint8)
    labels[:, :6] = TAX.index("metal")
    assert boundaries(labels).sum() == 10
    img = Image.new("RGB", (12, 10), (0, 0, 0))
    out = overlay_image(img, labels, TAX, alpha=1.0, outlines=False, legend=False)
    assert out.getpixel((0, 0)) == TAX.color(TAX.index("metal")) and out.getpixel((11, 0)) == (0, 0, 0)
    assert overlay_image(img, labels, TAX).width > 12  # legend panel appended


def test_grid_mode_needs_a_vision_head():
    lang = SimpleNamespace(config=SimpleNamespace(streams="language"), encoder=SimpleNamespace(extractor=None))
    from fmmc.model.maps.segment import grid_map

    with pytest.raises(ValueError, match="streams=vision"):
        grid_map(lang, Image.new("RGB", (8, 8)), classes=None, description=None)
    both = SimpleNamespace(config=SimpleNamespace(streams="both", describer="openai:x"),
                           encoder=SimpleNamespace(text_encoder=object(), describer=SimpleNamespace(spec="openai:x")))
    with pytest.raises(ValueError, match="train a vision-only model"):
        _constant_text(both, None)


# ----- with the trained tiny model -----
@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def comp(tmp_path_factory):
    return overrides(tiny_component_dirs(tmp_path_factory))


@pytest.fixture(scope="session")
def model(model_dir, comp):
    from fmmc.model.classifier import MaterialClassifier

    return MaterialClassifier.from_pretrained(model_dir, **comp)


SAM_OPTS = {"points_per_side": 4, "pred_iou_thresh": -1.0, "stability_thresh": -1.0}  # random SAM: keep its masks


def test_grid_map_labels_the_scene(model):
    img = Image.fromarray(scene((192, 128)))
    mmap = model.segment(img, mode="grid")
    assert isinstance(mmap, MaterialMap) and mmap.labels.shape == (128, 192) and mmap.mode == "grid"
    assert (mmap.labels != UNLABELLED).all()
    wood, foliage = TAX.index("wood"), TAX.index("foliage")
    assert (mmap.labels[:, :40] == wood).mean() > 0.8 and (mmap.labels[:, -40:] == foliage).mean() > 0.8
    assert sum(r.area for r in mmap.regions) == 128 * 192
    assert mmap.label_at(5, 5)[0] == "wood" and 0 < mmap.label_at(5, 5)[1] <= 1
    restricted = model.segment(img, mode="grid", classes=["metal", "wood"])
    assert set(np.unique(restricted.labels)) <= {TAX.index("metal"), wood}


def test_sam_map_paints_regions(model):
    img = Image.fromarray(scene())
    mmap = model.segment(img, mode="sam", **SAM_OPTS)
    assert mmap.mode == "sam" and mmap.labels.shape == (120, 160) and mmap.regions
    areas = [r.area for r in mmap.regions]
    assert areas == sorted(areas, reverse=True)
    assert sum(r.visible_area for r in mmap.regions) == int((mmap.region_ids >= 0).sum())
    shown = mmap.region_ids[mmap.region_ids >= 0]
    assert np.array_equal(mmap.labels[mmap.region_ids >= 0],
                          np.array([mmap.regions[i].label_index for i in shown], dtype=np.uint8))
    big = model.segment(img.resize((640, 480)), mode="sam", max_side=200, **SAM_OPTS)  # worked on at 200 px
    assert big.labels.shape == (480, 640)


def test_sam_map_with_no_regions_is_unlabelled(model):
    mmap = model.segment(Image.fromarray(scene()), mode="sam", points_per_side=2, pred_iou_thresh=2.0)
    assert mmap.regions == [] and (mmap.labels == UNLABELLED).all()


def test_cli_segment_writes_labels_overlay_regions(model_dir, comp, tmp_path, capsys):
    from fmmc.cli.main import main

    img_path = tmp_path / "scene.png"
    Image.fromarray(scene()).save(img_path)
    for mode in ("grid", "sam"):
        out = tmp_path / mode
        rc = main(["segment", str(model_dir), str(img_path), "--out", str(out), "--mode", mode, "--segmenter",
                   comp["segmenter"], "--points-per-side", "4", "--pred-iou-thresh", "-1", "--stability-thresh", "-1"])
        assert rc == 0
        labels = np.asarray(Image.open(out / "labels.png"))
        assert labels.shape == (120, 160) and labels.dtype == np.uint8
        assert Image.open(out / "overlay.png").height == 120
        data = json.loads((out / "regions.json").read_text())
        assert data["mode"] == mode and data["regions"] and {"bbox", "area", "label", "top"} <= set(data["regions"][0])
        assert set(np.unique(labels)) <= {TAX.index(r["label"]) for r in data["regions"]} | {UNLABELLED}
    assert "regions" in capsys.readouterr().out


def test_evaluate_maps_on_a_dms_fixture(model, model_dir, tmp_path, capsys):
    root = make_dms_fixture(tmp_path / "dms")
    pairs, names = load_dms_pairs(root, split="test")
    assert len(pairs) == 3 and names[52] == "Wood"
    assert len(load_dms_pairs(root, images=root / "images")[0]) == 3
    report = evaluate_maps(model, pairs, mode="grid", names=names)
    assert report["images"] == 3 and set(report["per_class"]) == {"wood", "foliage"}
    assert report["pixels"] == 3 * (120 - 4) * 160  # the "No label" strip is ignored
    assert report["pixel_acc"] > 0.7 and 0 <= report["miou"] <= 1

    class Oracle:  # a "model" whose maps are the ground truth: every metric must be exactly 1
        taxonomy = TAX

        def segment(self, img, mode, **_):
            gt = source_lut(TAX)[np.asarray(Image.open(root / "labels" / "test" / "img0.png"))]
            return SimpleNamespace(labels=np.where(gt == 255, UNLABELLED, gt))

    perfect = evaluate_maps(Oracle(), pairs[:1], names=names)
    assert perfect["pixel_acc"] == perfect["miou"] == perfect["macc"] == 1.0

    from fmmc.cli.main import main

    out = tmp_path / "report.json"
    assert main(["segment", str(model_dir), "--eval-dms", str(root), "--mode", "grid", "--out", str(out), "--quiet"]) == 0
    assert "mIoU" in capsys.readouterr().out and json.loads(out.read_text())["images"] == 3
    with pytest.raises(ValueError, match="no label PNGs"):
        load_dms_pairs((tmp_path / "empty").mkdir() or tmp_path / "empty")
