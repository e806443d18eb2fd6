"""SAM 3 as an `hf:` segmenter (text prompt -> instance masks), against plain transformers.

transformers' SAM 3 image processor needs torchvision, so CI runs this file in its second environment
(``.ci/run``). A tiny random-init ``Sam3Model`` + ``Sam3Processor`` (``tests/fixtures_sam3.py``) is saved and
loaded back through ``build("segmenter", "hf:<dir>")``; fmmc's instances must equal the processor -> model ->
``post_process_instance_segmentation`` chain's, best score first, and the same instance must come out of
``predict(object=...)``'s resolution and of the ``sam3`` synth labeler, with no grounder.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision", reason="torchvision: CI runs this file in its second environment")

from fixtures_sam3 import make_tiny_sam3  # noqa: E402

from fmmc.core.registry import build, registry  # noqa: E402

THRESHOLD = 0.25  # the tiny random model's instance scores sit around 0.25: some pass, some do not


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory):
    return make_tiny_sam3(tmp_path_factory.mktemp("tiny_sam3"))


@pytest.fixture(scope="module")
def sam3(sam3_dir):
    return build("segmenter", f"hf:{sam3_dir}")


def _image(w: int = 90, h: int = 60, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _reference(path, img: Image.Image, phrase: str) -> dict:
    from transformers import AutoProcessor, Sam3Model

    processor = AutoProcessor.from_pretrained(path)
    model = Sam3Model.from_pretrained(path).eval()
    inputs = processor(images=img, text=phrase, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return processor.post_process_instance_segmentation(out, threshold=THRESHOLD, target_sizes=[(img.height,
                                                                                                   img.width)])[0]


def test_sam3_text_masks_match_plain_transformers(sam3_dir, sam3):
    assert type(sam3).__name__ == "Sam3Segmenter" and type(sam3.model).__name__ == "Sam3Model"
    img = _image()
    for phrase in ("vase", "cup"):  # the second phrase reuses the cached vision features of the same image
        got = sam3.segment_text(img, phrase, threshold=THRESHOLD)
        want = _reference(sam3_dir, img, phrase)
        order = torch.argsort(want["scores"], descending=True).tolist()
        assert 0 < len(got) == len(order) < 8, (phrase, len(got))  # the threshold kept some of the 8 queries
        assert [round(r.score, 5) for r in got] == [round(float(want["scores"][i]), 5) for i in order]
        for r, i in zip(got, order):
            assert r.mask.shape == (60, 90) and r.mask.dtype == bool
            assert np.array_equal(r.mask, want["masks"][i].numpy().astype(bool)), (phrase, i)
            det = r.extra["detection"]
            assert det.phrase == phrase and np.allclose(det.box, want["boxes"][i].numpy(), atol=1e-4)
    assert sam3.segment_text(img, "vase", threshold=1.0) == []


def test_sam3_object_prompt_needs_no_grounder(sam3):
    from fmmc.grounding.prompts import resolve_prompt, set_component

    img = _image(seed=1)
    model = SimpleNamespace(config=SimpleNamespace(grounder="hf:/nowhere/grounder"), device="cpu", components={})
    set_component(model, "segmenter", sam3)
    region = resolve_prompt(model, img, object="vase", box_threshold=THRESHOLD)
    best = sam3.segment_text(img, "vase", threshold=THRESHOLD)[0]
    assert region.source == "object" and np.array_equal(region.mask, best.mask) and region.score == best.score
    assert region.detection == best.extra["detection"]
    assert "grounder" not in model.components  # the (unloadable) grounder was never built
    with pytest.raises(ValueError, match="text only"):
        resolve_prompt(model, img, point=(5, 5))


def test_sam3_labeler_labels_in_one_step(sam3_dir, sam3, tmp_path):
    from fmmc.synth.label import LabelConfig

    (tmp_path / "images").mkdir()
    img = _image(seed=2)
    img.save(tmp_path / "images/vase-0001.png")
    cfg = LabelConfig(device="cpu", box_threshold=THRESHOLD, min_det_score=THRESHOLD, max_instances=8,
                      min_area_frac=0.0, max_area_frac=1.0)
    labeler = build("labeler", f"sam3:{sam3_dir}", cfg=cfg, root=tmp_path)
    assert labeler.one_step and labeler.grounder is labeler.segmenter
    [out] = labeler([{"id": "vase-0001", "image": "images/vase-0001.png", "object": "vase"}])
    best = sam3.segment_text(img, "vase", threshold=THRESHOLD)[0]
    assert out["status"] == "ok", out
    assert out["det_score"] == out["mask_score"] == round(best.score, 4)
    assert out["segmenter"] == out["grounder"] == f"hf:{sam3_dir}"
    written = np.asarray(Image.open(tmp_path / out["mask"])) > 0
    assert np.array_equal(written, best.mask)


def test_sam3_is_listed_and_refuses_what_it_cannot_do(sam3, tmp_path_factory, tmp_path):
    from fixtures_models import shared_tiny_model

    assert any("sam3" in spec for spec, _ in registry("segmenter").specs())
    assert "sam3" in registry("labeler").entries
    with pytest.raises(ValueError, match="text only"):
        sam3.segment(_image(), box=(1, 1, 5, 5))
    sam_dir = shared_tiny_model("sam", tmp_path_factory)  # a SAM (box prompts) checkpoint is no SAM 3
    with pytest.raises(ValueError, match="needs a SAM 3 checkpoint"):
        build("labeler", f"sam3:{sam_dir}", cfg=None, root=tmp_path)
