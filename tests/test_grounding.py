"""Grounding DINO + SAM wrappers, through the real path: tiny save_pretrained dirs -> registry -> hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures_models import shared_tiny_model
from PIL import Image

from fmmc.core.registry import build
from fmmc.grounding.common import (
    Detection,
    MaskResult,
    box_iou,
    box_overlap_min,
    clip_box,
    mask_iou,
    mask_to_box,
    nms,
)


@pytest.fixture(scope="session")
def tiny_gd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_model("grounding_dino", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_model("sam", tmp_path_factory)


@pytest.fixture(scope="session")
def grounder(tiny_gd_dir: Path):
    return build("grounder", f"hf:{tiny_gd_dir}", device="cpu")


@pytest.fixture(scope="session")
def segmenter(tiny_sam_dir: Path):
    return build("segmenter", f"hf:{tiny_sam_dir}", device="cpu")


@pytest.fixture()
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))


# ---- pure ops -----------------------------------------------------------------------------------------
def test_box_ops_by_hand() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_overlap_min((0, 0, 100, 100), (10, 10, 20, 20)) == 1.0  # a part inside the object
    assert box_iou((0, 0, 100, 100), (10, 10, 20, 20)) == pytest.approx(0.01)
    assert clip_box((-5, -5, 200, 50), (100, 40)) == (0.0, 0.0, 100.0, 40.0)


def test_nms_keeps_best_and_separate_boxes() -> None:
    a, b, c = Detection((0, 0, 10, 10), 0.9), Detection((1, 0, 11, 10), 0.95), Detection((50, 50, 60, 60), 0.5)
    assert nms([a, b, c], 0.5) == [b, c]
    assert nms([a, b, c], 0.95) == [b, a, c]


def test_mask_helpers() -> None:
    m = np.zeros((10, 20), bool)
    m[2:5, 3:9] = True
    assert mask_to_box(m) == (3.0, 2.0, 9.0, 5.0)
    assert mask_to_box(np.zeros((4, 4), bool)) is None
    assert mask_iou(m, m) == 1.0
    r = MaskResult(m, 0.9)
    assert r.area == 18 and r.area_frac == pytest.approx(18 / 200) and r.box == (3.0, 2.0, 9.0, 5.0)


def test_grounding_text() -> None:
    from fmmc.grounding.grounder import grounding_text

    assert grounding_text("Cake-pan") == "cake pan."
    assert grounding_text(" Coffee  MUG. ") == "coffee mug."
    assert grounding_text(["red cup", "table."]) == "red cup. table."
    with pytest.raises(ValueError, match="object name"):
        grounding_text("  ")


# ---- registry + loading -------------------------------------------------------------------------------
def test_list_grounders_and_segmenters(capsys: pytest.CaptureFixture[str]) -> None:
    from fmmc.cli.main import main

    assert main(["list", "grounders"]) == 0
    assert "hf:IDEA-Research/grounding-dino-base" in capsys.readouterr().out
    assert main(["list", "segmenters"]) == 0
    assert "hf:facebook/sam-vit-base" in capsys.readouterr().out


def test_missing_weights_fail_with_a_fix(tmp_path: Path) -> None:
    from fmmc.core.hub import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="local path"):
        build("grounder", "hf:nobody/no-such-grounding-dino")
    with pytest.raises(WeightsUnavailableError, match="local path"):
        build("segmenter", f"hf:{tmp_path}")  # exists but empty


def test_segmenter_refuses_a_non_sam_checkpoint(tiny_gd_dir: Path) -> None:
    with pytest.raises(ValueError, match="SAM checkpoint"):
        build("segmenter", f"hf:{tiny_gd_dir}")


# ---- grounder -----------------------------------------------------------------------------------------
def test_detect_gives_sorted_boxes_inside_the_image(grounder, image: Image.Image) -> None:
    assert grounder.spec.startswith("hf:")
    dets = grounder.detect(image, "vase", box_threshold=0.0, text_threshold=0.0)
    assert dets, "random weights with threshold 0 must give boxes"
    scores = [d.score for d in dets]
    assert scores == sorted(scores, reverse=True)
    for d in dets:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
        assert isinstance(d.phrase, str)
    # NMS: no two kept boxes overlap more than the grounder's nms_iou
    assert all(box_iou(a.box, b.box) <= grounder.nms_iou for i, a in enumerate(dets) for b in dets[i + 1:])
    assert grounder.detect(image, "vase", box_threshold=1.0) == []


def test_detect_batch_matches_single(grounder, image: Image.Image) -> None:
    other = image.resize((40, 70))
    batch = grounder.detect_batch([image, other], ["vase", "cake pan"], box_threshold=0.2)
    assert len(batch) == 2
    for d in batch[1]:
        assert d.box[2] <= other.width and d.box[3] <= other.height
    # same-size images (no image padding), texts of different lengths (text padding): same as one by one
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    batch = grounder.detect_batch([image, flipped], ["vase", "cake pan"], box_threshold=0.2)
    for img, text, dets in zip([image, flipped], ["vase", "cake pan"], batch):
        single = grounder.detect(img, text, box_threshold=0.2)
        assert len(single) == len(dets)
        np.testing.assert_allclose([d.box for d in dets], [d.box for d in single], atol=0.05)
        np.testing.assert_allclose([d.score for d in dets], [d.score for d in single], atol=1e-4)
    with pytest.raises(ValueError, match="one text per image"):
        grounder.detect_batch([image], ["a", "b"])


# ---- segmenter ----------------------------------------------------------------------------------------
def test_segment_box_returns_masks_best_first(segmenter, image: Image.Image) -> None:
    results = segmenter.segment(image, box=(10, 5, 60, 50))
    assert len(results) == 3  # multimask output
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    for r in results:
        assert r.mask.dtype == bool and r.mask.shape == (image.height, image.width)
        assert r.stability is not None and 0.0 <= r.stability <= 1.0
    assert len(segmenter.segment(image, box=(10, 5, 60, 50), multimask=False)) == 1


def test_segment_matches_the_processor_reference(segmenter, image: Image.Image) -> None:
    """Our coordinate scaling + upsampling must equal transformers' processor path."""
    import torch

    proc, model = segmenter.processor, segmenter.model
    inputs = proc(images=image, input_boxes=[[[10, 5, 60, 50]]], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=True)
    ref = proc.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0][0]
    scores = out.iou_scores[0, 0]
    ours = segmenter.segment(image, box=(10, 5, 60, 50))
    for r in ours:
        k = int(torch.argmin((scores - r.score).abs()))
        assert np.mean(ref[k].numpy() == r.mask) > 0.99


def test_segment_points_and_errors(segmenter, image: Image.Image) -> None:
    res = segmenter.segment(image, points=[(20, 20), (70, 40)], point_labels=[1, 0])
    assert res and res[0].mask.shape == (60, 90)
    assert segmenter.segment(image, box=(0, 0, 90, 60), points=[(45, 30)])
    with pytest.raises(ValueError, match="needs a prompt"):
        segmenter.segment(image)
    with pytest.raises(ValueError, match="x0 < x1"):
        segmenter.segment(image, box=(50, 5, 10, 40))
    with pytest.raises(ValueError, match="one label per point"):
        segmenter.segment(image, points=[(1, 1), (2, 2)], point_labels=[1])


def test_embedding_is_cached_per_image(segmenter, image: Image.Image) -> None:
    first = segmenter.embed(image)
    assert segmenter.embed(image.copy()) is first  # same pixels: no second encoder pass
    assert segmenter.embed(image.rotate(90, expand=True)) is not first


def test_generate_filters_dedups_and_sorts(segmenter, image: Image.Image) -> None:
    everything = segmenter.generate(image, points_per_side=6, points_per_batch=10, pred_iou_thresh=-1,
                                    stability_thresh=-1, min_area_frac=0.0, dedup_iou=0.7)
    assert everything
    areas = [r.area for r in everything]
    assert areas == sorted(areas, reverse=True)
    for i, a in enumerate(everything):
        assert a.mask.shape == (60, 90) and a.area > 0
        for b in everything[i + 1:]:
            assert mask_iou(a.mask, b.mask) <= 0.7
    big = segmenter.generate(image, points_per_side=6, pred_iou_thresh=-1, stability_thresh=-1, min_area_frac=0.3)
    assert all(r.area_frac >= 0.3 for r in big)
    assert segmenter.generate(image, points_per_side=4, pred_iou_thresh=2.0) == []
    assert len(segmenter.generate(image, points_per_side=6, pred_iou_thresh=-1, stability_thresh=-1,
                                  min_area_frac=0.0, max_masks=2)) <= 2


def test_half_precision_paths(tiny_gd_dir: Path, tiny_sam_dir: Path, image: Image.Image) -> None:
    grounder = build("grounder", f"hf:{tiny_gd_dir}", device="auto", dtype="bfloat16")
    segmenter = build("segmenter", f"hf:{tiny_sam_dir}", device="auto", dtype="bfloat16")
    dets = grounder.detect(image, "vase", box_threshold=0.0)
    assert dets and all(isinstance(d.score, float) for d in dets)
    masks = segmenter.segment(image, box=dets[0].box)
    assert masks[0].mask.shape == (60, 90) and masks[0].mask.dtype == bool
    with pytest.raises(ValueError, match="unknown dtype"):
        build("segmenter", f"hf:{tiny_sam_dir}", dtype="int8")
