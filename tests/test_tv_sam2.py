"""SAM 2 / 2.1 as an `hf:` segmenter (box and point prompts), against plain transformers.

transformers' SAM 2 image processor needs torchvision, which does not import beside the main venv's torch,
so CI runs this file in its second environment (torch 2.14.1 + torchvision 0.29.1, ``.ci/run``). A tiny
random-init ``Sam2Model`` + ``Sam2Processor`` is saved and loaded back through ``build("segmenter", "hf:<dir>")``;
fmmc's masks must equal the processor -> model -> ``post_process_masks`` chain's, best predicted IoU first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import shared_tiny_model
from PIL import Image

pytest.importorskip("torchvision", reason="torchvision: CI runs this file in its second environment")

from fmmc.core.registry import build, registry  # noqa: E402


@pytest.fixture(scope="session")
def sam2_dir(tmp_path_factory):
    return shared_tiny_model("sam2", tmp_path_factory)


def _image(w: int = 90, h: int = 60, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _reference(path, img: Image.Image, **prompts) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoProcessor, Sam2Model

    processor = AutoProcessor.from_pretrained(path)
    model = Sam2Model.from_pretrained(path).eval()
    inputs = processor(images=img, return_tensors="pt", **prompts)
    with torch.no_grad():
        out = model(**inputs, multimask_output=True)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0]  # [K, H, W]
    return masks.numpy().astype(bool), out.iou_scores[0, 0].numpy()


@pytest.mark.parametrize("prompt", ["box", "point"])
def test_sam2_prompt_masks_match_plain_transformers(sam2_dir, prompt):
    img = _image()
    seg = build("segmenter", f"hf:{sam2_dir}")
    assert type(seg.model).__name__ == "Sam2Model"
    if prompt == "box":
        got = seg.segment(img, box=(10, 8, 60, 50))
        want, scores = _reference(sam2_dir, img, input_boxes=[[[10, 8, 60, 50]]])
    else:
        got = seg.segment(img, points=[(30, 20)])
        want, scores = _reference(sam2_dir, img, input_points=[[[[30, 20]]]], input_labels=[[[1]]])
    order = np.argsort(-scores, kind="stable")
    assert [r.mask.shape for r in got] == [(60, 90)] * len(order)
    assert [round(r.score, 5) for r in got] == [round(float(scores[i]), 5) for i in order]
    for r, i in zip(got, order):
        agree = (r.mask == want[i]).mean()
        assert agree > 0.995, (prompt, i, agree)  # bilinear upsampling order may flip a few edge pixels


def test_sam2_is_listed():
    assert any("sam2" in spec for spec, _ in registry("segmenter").specs())
