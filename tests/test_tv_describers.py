"""Qwen2.5-VL and Qwen3-VL as ``hf:`` describers (chat template), against plain transformers ``generate``.

Their processors include a video processor that needs torchvision, so CI runs this file in its second
environment (``.ci/run``). Tiny random-init models of the real architectures + the real processors are saved
and loaded back through ``build("describer", "hf:<dir>")``; the reply's token ids must equal those of the
chat template -> processor -> ``generate`` chain on the same marked images and prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_describers import make_tiny_qwen_vl, plain_chat_generate
from PIL import Image

pytest.importorskip("torchvision", reason="torchvision: CI runs this file in its second environment")

from fmmc.core.registry import build  # noqa: E402

MAX_NEW = 6


@pytest.fixture(scope="module", params=["2.5", "3"])
def tiny_qwen(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen_vl(tmp_path_factory.mktemp(f"tiny-qwen{request.param}-vl"), version=request.param)


def _image_and_mask() -> tuple[Image.Image, np.ndarray]:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:40, 20:50] = True
    return img, mask


def test_qwen_vl_matches_plain_generate(tiny_qwen: Path):
    d = build("describer", f"hf:{tiny_qwen}", marking="contour+crop", max_new_tokens=MAX_NEW)
    img, mask = _image_and_mask()
    images, text = d.request(img, mask)
    rendered = d.processor.apply_chat_template(d.messages(images, text), add_generation_prompt=True, tokenize=False)
    assert rendered.count("<|vision_start|><|image_pad|><|vision_end|>") == 2 and rendered.endswith("assistant\n")
    inputs = d.model_inputs(images, text)
    # the processor expands each <|image_pad|> to its merged-patch count: image_grid_thw.prod() / 2**2
    n_pad = int((inputs["input_ids"] == d.processor.image_token_id).sum())
    assert n_pad == int(inputs["image_grid_thw"].prod(dim=1).sum()) // 4 and n_pad > 2
    ids = d.token_ids(img, mask)
    assert ids.shape == (1, MAX_NEW) and torch.equal(ids, plain_chat_generate(tiny_qwen, images, text, MAX_NEW))
    assert d.describe(img, mask) == " ".join(d.processor.batch_decode(ids, skip_special_tokens=True)[0].split())
    whole = d.token_ids(img, None)
    assert torch.equal(whole, plain_chat_generate(tiny_qwen, [img], d.request(img, None)[1], MAX_NEW))
