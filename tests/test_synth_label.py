"""Auto-labelling: the accept/reject rules by hand, the Labeler with stub models, and end to end with tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_models import shared_tiny_model
from PIL import Image

from fmmc.grounding.common import Detection, MaskResult
from fmmc.synth.label import (
    OUTPUT_KEYS,
    REJECT_REASONS,
    STATUSES,
    LabelConfig,
    Labeler,
    decide,
    is_all_black,
    mask_relpath,
    rival_instances,
)

W, H = 100, 80
CFG = LabelConfig(min_det_score=0.35, min_mask_score=0.8, min_area_frac=0.01, max_area_frac=0.9,
                  max_instances=1, dominance_margin=0.15, instance_overlap=0.5)


def det(score: float, box: tuple[float, float, float, float] = (10, 10, 60, 60)) -> Detection:
    return Detection(box, score, "vase")


def mask(area_px: int, score: float = 0.95) -> MaskResult:
    m = np.zeros((H, W), bool)
    m.flat[:area_px] = True
    return MaskResult(m, score)


# ---- the rules, by hand -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("detections", "masks", "status", "reason"),
    [
        ([], [], "rejected", "object not found"),
        ([det(0.30)], [mask(2000)], "rejected", "low detection score"),
        ([det(0.60)], [mask(2000)], "ok", None),
        # a second box nearly as confident, elsewhere: two objects, which one has the material?
        ([det(0.60), det(0.50, (70, 10, 95, 40))], [mask(2000)], "rejected", "several instances"),
        # ... but a clearly weaker second box is not a rival
        ([det(0.60), det(0.40, (70, 10, 95, 40))], [mask(2000)], "ok", None),
        # ... nor is a box inside the best one (a part, or a duplicate)
        ([det(0.60), det(0.58, (20, 20, 40, 40))], [mask(2000)], "ok", None),
        ([det(0.60)], [mask(2000, score=0.5)], "rejected", "low mask score"),
        ([det(0.60)], [mask(50)], "rejected", "mask too small"),
        ([det(0.60)], [mask(0, score=0.99)], "rejected", "mask too small"),
        ([det(0.60)], [], "rejected", "mask too small"),
        ([det(0.60)], [mask(7500)], "rejected", "mask too large"),
    ],
)
def test_decide_by_hand(detections: list[Detection], masks: list[MaskResult], status: str, reason: str | None) -> None:
    got_status, got_reason, chosen = decide(detections, masks, (W, H), CFG)
    assert (got_status, got_reason) == (status, reason)
    if detections:
        assert chosen is not None and chosen.detection.score == max(d.score for d in detections)
    else:
        assert chosen is None
    if status == "ok":
        assert chosen is not None and chosen.mask is masks[0]


def test_decide_picks_best_mask_and_allows_more_instances() -> None:
    low, high = mask(2000, 0.85), mask(3000, 0.97)
    status, _, chosen = decide([det(0.7)], [low, high], (W, H), CFG)
    assert status == "ok" and chosen is not None and chosen.mask is high
    two = [det(0.60), det(0.55, (70, 10, 95, 40))]
    assert decide(two, [high], (W, H), LabelConfig(max_instances=2))[0] == "ok"
    assert rival_instances(two, CFG) == [two[1]]


def test_decide_rejects_a_mask_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="does not match"):
        decide([det(0.7)], [MaskResult(np.ones((10, 10), bool), 0.9)], (W, H), CFG)


def test_label_config_validation() -> None:
    with pytest.raises(ValueError, match="min_det_score"):
        LabelConfig(min_det_score=1.5)
    with pytest.raises(ValueError, match="min_area_frac"):
        LabelConfig(min_area_frac=0.5, max_area_frac=0.2)
    with pytest.raises(ValueError, match="max_instances"):
        LabelConfig(max_instances=0)
    from fmmc.core.config import load_config

    assert load_config(LabelConfig, overrides=["min_mask_score=0.9", "device=cpu"]).min_mask_score == 0.9


def test_mask_paths_are_safe_and_distinct() -> None:
    assert mask_relpath({"id": "vase-ceramic-0001"}) == "masks/vase-ceramic-0001.png"
    a, b = mask_relpath({"id": "a/b:c"}), mask_relpath({"id": "a_b_c"})
    assert a != b and "/" not in a[len("masks/"):] and ":" not in a
    assert mask_relpath({"id": "../../etc/passwd"}).startswith("masks/") and ".." not in mask_relpath({"id": ".."})


def test_all_black() -> None:
    assert is_all_black(Image.new("RGB", (512, 512)), 4.0)
    assert not is_all_black(Image.new("RGB", (512, 512), (30, 20, 10)), 4.0)


# ---- the Labeler with stub models (deterministic) -------------------------------------------------------
class StubGrounder:
    spec = "stub:grounder"

    def __init__(self, by_object: dict[str, list[Detection]], fail_on: str | None = None) -> None:
        self.by_object, self.fail_on, self.batches = by_object, fail_on, 0

    def detect_batch(self, images: list[Image.Image], texts: list[str], **_: Any) -> list[list[Detection]]:
        self.batches += 1
        if self.fail_on in texts:
            raise RuntimeError("batch poisoned")
        return [self.detect(im, t) for im, t in zip(images, texts)]

    def detect(self, image: Image.Image, text: str, **_: Any) -> list[Detection]:
        if text == self.fail_on:
            raise RuntimeError("CUDA out of memory (simulated)")
        return list(self.by_object.get(text, []))


class StubSegmenter:
    spec = "stub:segmenter"

    def segment(self, image: Image.Image, box: tuple[float, ...], **_: Any) -> list[MaskResult]:
        m = np.zeros((image.height, image.width), bool)
        x0, y0, x1, y1 = (int(v) for v in box)
        m[y0:y1, x0:x1] = True
        return [MaskResult(m, 0.95)]


def _write_items(root: Path) -> list[dict[str, Any]]:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = []
    for k, obj in enumerate(["vase", "mug", "ghost", "vase", "spoon", "vase"]):
        name = f"images/{k:04d}.png"
        Image.fromarray(rng.integers(30, 255, (H, W, 3), dtype=np.uint8)).save(root / name)
        items.append({"id": f"{obj}-ceramic-{k:04d}", "image": name, "object": obj, "material": "ceramic",
                      "submaterial": "porcelain", "label": "ceramic", "prompt": f"a porcelain ceramic {obj}",
                      "seed": k, "model_id": "tiny"})
    Image.new("RGB", (W, H)).save(root / "images/0003.png")  # the safety checker's black frame
    (root / "images/0005.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # truncated write
    items.append({"id": "no-object", "image": "images/0000.png", "material": "ceramic", "label": "ceramic"})
    return items


def test_labeler_with_stub_models(tmp_path: Path) -> None:
    items = _write_items(tmp_path)
    grounder = StubGrounder({"vase": [det(0.7, (10, 10, 60, 50))], "mug": [det(0.2)],
                             "spoon": [det(0.6), det(0.55, (70, 5, 95, 30))]})
    labeler = Labeler(LabelConfig(batch_size=4), tmp_path, grounder=grounder, segmenter=StubSegmenter())
    out = labeler(items)
    assert [o["id"] for o in out] == [i["id"] for i in items]
    got = {o["id"]: (o["status"], o["reason"]) for o in out}
    assert got == {
        "vase-ceramic-0000": ("ok", None),
        "mug-ceramic-0001": ("rejected", "low detection score"),
        "ghost-ceramic-0002": ("rejected", "object not found"),
        "vase-ceramic-0003": ("rejected", "all-black image"),
        "spoon-ceramic-0004": ("rejected", "several instances"),
        "vase-ceramic-0005": got["vase-ceramic-0005"],
        "no-object": got["no-object"],
    }
    assert got["vase-ceramic-0005"][0] == "rejected" and got["vase-ceramic-0005"][1].startswith("unreadable image: ")
    assert got["no-object"][0] == "failed" and "object" in got["no-object"][1]
    ok = out[0]
    for key in ("object", "material", "submaterial", "label", "prompt", "seed", "model_id", "image"):
        assert ok[key] == items[0][key]  # input fields pass through
    assert set(OUTPUT_KEYS) <= set(ok)
    assert ok["box"] == [10, 10, 60, 50] and ok["det_score"] == 0.7 and ok["mask_score"] == 0.95
    assert ok["area_frac"] == pytest.approx(50 * 40 / (W * H), abs=1e-4)
    assert ok["grounder"] == "stub:grounder" and ok["segmenter"] == "stub:segmenter"
    m = np.asarray(Image.open(tmp_path / ok["mask"]))
    assert m.shape == (H, W) and set(np.unique(m)) == {0, 255} and (m > 0).sum() == 50 * 40
    assert not list((tmp_path / "masks").glob(".*tmp"))  # atomic write left no temp file
    assert all(o["mask"] is None for o in out[1:])  # rejected masks are not written by default
    json.dumps(out)  # results are JSON-serialisable manifest lines


def test_one_failing_item_does_not_stop_the_batch(tmp_path: Path) -> None:
    items = _write_items(tmp_path)[:3]
    grounder = StubGrounder({"vase": [det(0.7)]}, fail_on="mug")
    out = Labeler(LabelConfig(), tmp_path, grounder=grounder, segmenter=StubSegmenter())(items)
    assert [o["status"] for o in out] == ["ok", "failed", "rejected"]
    assert "CUDA out of memory" in out[1]["reason"]


def test_rejected_masks_can_be_kept_for_inspection(tmp_path: Path) -> None:
    items = _write_items(tmp_path)[:1]
    grounder = StubGrounder({"vase": [det(0.7, (0, 0, W, H))]})
    out = Labeler(LabelConfig(save_rejected_masks=True), tmp_path, grounder=grounder, segmenter=StubSegmenter())(items)
    assert (out[0]["status"], out[0]["reason"]) == ("rejected", "mask too large")
    assert (tmp_path / out[0]["mask"]).is_file()


# ---- end to end with the tiny random models (real registry/hub path) -----------------------------------
@pytest.fixture(scope="session")
def tiny_gd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_model("grounding_dino", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_model("sam", tmp_path_factory)


def test_labeler_end_to_end_with_tiny_models(tmp_path: Path, tiny_gd_dir: Path, tiny_sam_dir: Path) -> None:
    items = _write_items(tmp_path)
    # random weights: permissive gates so some items pass and the files are written
    cfg = LabelConfig(grounder=f"hf:{tiny_gd_dir}", segmenter=f"hf:{tiny_sam_dir}", device="cpu", box_threshold=0.0,
                      text_threshold=0.0, min_det_score=0.0, min_mask_score=-1.0, min_area_frac=0.0,
                      max_area_frac=1.0, max_instances=1000, batch_size=3)
    labeler = Labeler(cfg, tmp_path)
    assert labeler.grounder_spec == f"hf:{tiny_gd_dir}"
    out = labeler(items)
    assert len(out) == len(items)
    statuses = [o["status"] for o in out]
    assert set(statuses) <= set(STATUSES)
    assert statuses.count("ok") >= 2, [(o["id"], o["status"], o["reason"]) for o in out]
    for o in out:
        if o["status"] == "rejected":
            assert o["reason"] in REJECT_REASONS or o["reason"].startswith("unreadable image: ")
        elif o["status"] == "failed":
            assert o["reason"]
        else:
            assert o["reason"] is None
            img = Image.open(tmp_path / o["image"])
            m = Image.open(tmp_path / o["mask"])
            assert m.mode == "L" and m.size == img.size
            assert set(np.unique(np.asarray(m))) <= {0, 255}
            assert len(o["box"]) == 4 and 0.0 < o["area_frac"] <= 1.0
    assert out[3]["reason"] == "all-black image"
    assert out[5]["reason"].startswith("unreadable image: ")
