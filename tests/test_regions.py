"""Region prompts (fmmc.grounding.prompts): point / box / object -> mask, with fakes for the decision logic and the
tiny random SAM + Grounding DINO for the real path (model.predict and `fmmc predict`)."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures_serve import overrides, scene, tiny_component_dirs, tiny_model_dir
from PIL import Image

from fmmc.grounding import Detection, MaskResult
from fmmc.grounding.prompts import (
    PromptError,
    RegionNotFound,
    check_box,
    check_point,
    component_spec,
    get_component,
    mask_rle,
    mask_summary,
    resolve_prompt,
    set_component,
)

W, H = 40, 30
IMG = Image.new("RGB", (W, H), (120, 120, 120))


def _mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


class FakeSegmenter:
    def __init__(self, results: list[MaskResult]) -> None:
        self.results = results
        self.calls: list[dict] = []

    def segment(self, image, box=None, points=None, point_labels=None):
        self.calls.append({"box": box, "points": points, "point_labels": point_labels})
        return self.results


class FakeGrounder:
    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections
        self.texts: list[str] = []

    def detect(self, image, text, box_threshold=0.35, text_threshold=0.25):
        self.texts.append(text)
        return sorted((d for d in self.detections if d.score > box_threshold), key=lambda d: -d.score)


def fake_model(segmenter=None, grounder=None, config=None):
    model = SimpleNamespace(config=config or {}, device="cpu", components={})
    if segmenter is not None:
        set_component(model, "segmenter", segmenter)
    if grounder is not None:
        set_component(model, "grounder", grounder)
    return model


# ----- pure checks -----
def test_check_point_inside_and_outside():
    assert check_point((0, 0), (W, H)) == (0.0, 0.0)
    assert check_point([39.5, 29.9], (W, H)) == (39.5, 29.9)
    for bad in [(40, 5), (5, 30), (-1, 5), (5, -0.1)]:
        with pytest.raises(PromptError, match="outside the 40x30 image"):
            check_point(bad, (W, H))
    with pytest.raises(PromptError, match="finite"):
        check_point((float("nan"), 1), (W, H))
    with pytest.raises(PromptError, match="two numbers"):
        check_point((1, 2, 3), (W, H))


def test_check_box_area_and_clipping():
    assert check_box((-5, -5, 10, 10), (W, H)) == (0.0, 0.0, 10.0, 10.0)
    with pytest.raises(PromptError, match="zero or negative area"):
        check_box((5, 5, 5, 20), (W, H))
    with pytest.raises(PromptError, match="zero or negative area"):
        check_box((10, 10, 2, 20), (W, H))
    with pytest.raises(PromptError, match="outside the 40x30 image"):
        check_box((50, 5, 60, 20), (W, H))
    assert issubclass(PromptError, ValueError) and issubclass(RegionNotFound, ValueError)


def test_mask_summary_and_rle_round_trip():
    m = _mask(3, 4, 10, 6)
    assert mask_summary(m) == {"bbox": [3, 4, 10, 6], "area": 14}
    assert mask_summary(np.zeros((2, 2), bool)) == {"bbox": None, "area": 0}
    rle = mask_rle(m)
    flat = np.zeros(m.size, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        flat[pos:pos + c] = val
        pos, val = pos + c, not val
    assert pos == m.size
    assert np.array_equal(flat.reshape(m.shape, order="F"), m)
    assert mask_rle(np.ones((2, 2), bool))["counts"] == [0, 4]


# ----- decision logic with fakes -----
def test_point_prefers_a_mask_containing_the_point():
    far = MaskResult(_mask(20, 0, 40, 10), score=0.9)
    near = MaskResult(_mask(0, 0, 10, 10), score=0.5)
    model = fake_model(FakeSegmenter([far, near]))
    r = resolve_prompt(model, IMG, point=(5, 5))
    assert r.source == "point" and r.score == 0.5 and r.mask[5, 5]


def test_empty_masks_raise_instead_of_guessing():
    model = fake_model(FakeSegmenter([MaskResult(np.zeros((H, W), bool), 0.9)]))
    with pytest.raises(RegionNotFound, match="no region"):
        resolve_prompt(model, IMG, point=(5, 5))


def test_object_not_found_never_returns_a_region():
    seg = FakeSegmenter([MaskResult(_mask(0, 0, 5, 5), 0.9)])
    model = fake_model(seg, FakeGrounder([Detection((1, 1, 9, 9), 0.2, "mug")]))
    with pytest.raises(RegionNotFound, match="object 'the mug' not found"):
        resolve_prompt(model, IMG, object="the mug", box_threshold=0.35)
    assert seg.calls == []


def test_object_uses_the_best_detection_box_for_sam():
    seg = FakeSegmenter([MaskResult(_mask(2, 2, 8, 8), 0.8)])
    dets = [Detection((1, 1, 9, 9), 0.5, "mug"), Detection((10, 10, 30, 25), 0.9, "mug")]
    model = fake_model(seg, FakeGrounder(dets))
    r = resolve_prompt(model, IMG, object="mug")
    assert seg.calls[0]["box"] == (10, 10, 30, 25)
    assert r.source == "object" and r.detection.score == 0.9
    assert r.to_json()["detection"]["box"] == [10.0, 10.0, 30.0, 25.0]


def test_refine_false_keeps_rectangles():
    seg = FakeSegmenter([])
    model = fake_model(seg, FakeGrounder([Detection((10, 10, 30, 25), 0.9, "mug")]))
    r = resolve_prompt(model, IMG, box=(2, 3, 12, 13), refine=False)
    assert r.source == "rectangle" and mask_summary(r.mask) == {"bbox": [2, 3, 12, 13], "area": 100}
    r = resolve_prompt(model, IMG, object="mug", refine=False)
    assert mask_summary(r.mask)["bbox"] == [10, 10, 30, 25]
    assert seg.calls == []


def test_box_and_point_go_to_sam_together():
    seg = FakeSegmenter([MaskResult(_mask(2, 2, 8, 8), 0.8)])
    r = resolve_prompt(fake_model(seg), IMG, box=(0, 0, 20, 20), point=(4, 4), refine=True)
    assert r.source == "box+point" and seg.calls[0]["box"] == (0, 0, 20, 20) and seg.calls[0]["points"] == [(4.0, 4.0)]


def test_bad_prompt_combinations():
    model = fake_model(FakeSegmenter([]), FakeGrounder([]))
    with pytest.raises(PromptError, match="one kind of prompt"):
        resolve_prompt(model, IMG, object="mug", point=(1, 1))
    with pytest.raises(PromptError, match="no region prompt"):
        resolve_prompt(model, IMG)
    with pytest.raises(PromptError, match="non-empty"):
        resolve_prompt(model, IMG, object="  ")


def test_components_come_from_config_and_are_built_once(monkeypatch):
    built = []

    def slow_build(kind, spec, **kwargs):
        time.sleep(0.05)
        built.append((kind, spec))
        return object()

    monkeypatch.setattr("fmmc.core.registry.build", slow_build)
    model = SimpleNamespace(config=SimpleNamespace(segmenter="hf:/somewhere/sam"), components={})
    assert component_spec(model, "segmenter") == "hf:/somewhere/sam"
    assert component_spec(model, "grounder") == "hf:IDEA-Research/grounding-dino-base"
    got = []
    threads = [threading.Thread(target=lambda: got.append(get_component(model, "segmenter"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [("segmenter", "hf:/somewhere/sam")]
    assert len({id(g) for g in got}) == 1


# ----- the real path: trained tiny model + tiny SAM / Grounding DINO -----
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


def test_predict_with_point_returns_the_mask(model, comp):
    img = Image.fromarray(scene())
    assert component_spec(model, "segmenter") == comp["segmenter"]
    pred = model.predict(img, point=(30, 60))
    assert pred.mask is not None and pred.mask.shape == (120, 160) and pred.mask.any()
    out = pred.to_json(3)
    assert out["mask"]["area"] == int(pred.mask.sum()) and len(out["mask"]["bbox"]) == 4
    assert out["region"]["source"] == "point"
    assert abs(sum(pred.probs) - 1) < 1e-4


def test_predict_object_and_errors(model):
    img = Image.fromarray(scene())
    pred = model.predict(img, object="mug", box_threshold=0.0)  # random grounder: boxes score ~1
    assert pred.extra["region"]["source"] == "object" and pred.mask.any()
    with pytest.raises(RegionNotFound, match="object 'mug' not found"):
        model.predict(img, object="mug", box_threshold=1.0)
    with pytest.raises(ValueError, match="outside the 160x120 image"):
        model.predict(img, point=(500, 5))
    with pytest.raises(ValueError, match="zero or negative area"):
        model.predict(img, box=(5, 5, 5, 50), refine=True)
    with pytest.raises(ValueError, match="not both"):
        model.predict(img, mask=np.ones((120, 160), bool), point=(5, 5))
    plain = model.predict(img, box=(0, 0, 80, 120))  # no prompt: the box itself, as before
    assert plain.to_json()["mask"] == {"bbox": [0, 0, 80, 120], "area": 80 * 120}


def test_cli_predict_point_saves_mask_and_prints_json(model_dir, comp, tmp_path, capsys):
    from fmmc.cli.main import main

    img_path = tmp_path / "scene.png"
    Image.fromarray(scene()).save(img_path)
    mask_path = tmp_path / "mask.png"
    rc = main(["predict", str(model_dir), str(img_path), "--point", "30,60", "--segmenter", comp["segmenter"],
               "--json", "--save-mask", str(mask_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    saved = np.asarray(Image.open(mask_path)) > 0
    assert saved.shape == (120, 160) and out["mask"]["area"] == int(saved.sum())
    rc = main(["predict", str(model_dir), str(img_path), "--object", "mug", "--box-threshold", "1.0",
               "--grounder", comp["grounder"], "--segmenter", comp["segmenter"]])
    assert rc == 1 and "not found" in capsys.readouterr().err
