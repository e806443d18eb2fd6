"""OWLv2 and MM-Grounding-DINO (the LLMDet architecture) as `hf:` grounders, next to Grounding DINO.

Tiny random-init models of the real architectures with their real processors (PIL backends: no torchvision),
saved and loaded back through ``build("grounder", "hf:<dir>")``; fmmc's detections are checked against the
plain transformers processor -> model -> post-process chain, and OWLv2's boxes against a hand computation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import shared_tiny_model
from PIL import Image

from fmmc.core.registry import build, registry
from fmmc.grounding.common import Detection, clip_box, nms


@pytest.fixture(scope="session")
def owlv2_dir(tmp_path_factory):
    return shared_tiny_model("owlv2", tmp_path_factory)


@pytest.fixture(scope="session")
def mm_gdino_dir(tmp_path_factory):
    return shared_tiny_model("mm_grounding_dino", tmp_path_factory)


def _image(w: int = 90, h: int = 60, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _as_set(dets: list[Detection]) -> set[tuple]:
    return {(tuple(round(v, 3) for v in d.box), round(d.score, 5), d.phrase) for d in dets}


def test_owlv2_detect_matches_plain_transformers(owlv2_dir):
    from transformers import AutoProcessor, Owlv2ForObjectDetection

    img = _image()
    grounder = build("grounder", f"hf:{owlv2_dir}")
    assert grounder.owl
    got = grounder.detect(img, "Vase", box_threshold=0.2)
    processor = AutoProcessor.from_pretrained(owlv2_dir)
    model = Owlv2ForObjectDetection.from_pretrained(owlv2_dir).eval()
    inputs = processor(images=[img], text=[["a photo of a vase"]], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    scores = torch.sigmoid(out.logits[0, :, 0])
    cx, cy, w, h = out.pred_boxes[0].unbind(-1)
    side = max(img.size)  # OWLv2 pads to a square: boxes are fractions of the longer side
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * side
    want = [Detection(clip_box(b, img.size), float(s), "vase") for b, s in zip(boxes.tolist(), scores.tolist())
            if s > 0.2]
    want = nms([d for d in want if (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]) > 0], grounder.nms_iou)
    assert got and _as_set(got) == _as_set(want)
    assert all(0 <= d.box[0] < d.box[2] <= 90 and 0 <= d.box[1] < d.box[3] <= 60 for d in got)


def test_owlv2_batch_one_query_per_phrase(owlv2_dir):
    grounder = build("grounder", f"hf:{owlv2_dir}")
    a, b = _image(seed=1), _image(64, 64, seed=2)
    batch = grounder.detect_batch([a, b], ["cup", ["red cup", "table"]], box_threshold=0.0)
    assert _as_set(batch[0]) == _as_set(grounder.detect(a, "cup", box_threshold=0.0))
    assert {d.phrase for d in batch[1]} <= {"red cup", "table"} and batch[1]


def test_mm_grounding_dino_matches_plain_transformers(mm_gdino_dir):
    from transformers import AutoProcessor, MMGroundingDinoForObjectDetection

    img = _image(seed=3)
    grounder = build("grounder", f"hf:{mm_gdino_dir}")
    assert type(grounder.model).__name__ == "MMGroundingDinoForObjectDetection" and not grounder.owl
    got = grounder.detect(img, ["Cup", "table"], box_threshold=0.0, text_threshold=0.0)
    processor = AutoProcessor.from_pretrained(mm_gdino_dir)
    model = MMGroundingDinoForObjectDetection.from_pretrained(mm_gdino_dir).eval()
    inputs = processor(images=[img], text=["cup. table."], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    res = processor.post_process_grounded_object_detection(out, inputs["input_ids"], threshold=0.0,
                                                           text_threshold=0.0, target_sizes=[(60, 90)])[0]
    assert got and got[0].score == pytest.approx(float(res["scores"].max()), abs=1e-5)
    want_boxes = {tuple(round(v, 3) for v in clip_box(b, img.size)) for b in res["boxes"].tolist()}
    assert {tuple(round(v, 3) for v in d.box) for d in got} <= want_boxes


def test_new_grounders_are_listed():
    listed = dict(registry("grounder").specs())
    assert any("owlv2" in spec for spec in listed) and any("mm_grounding_dino" in spec for spec in listed)
