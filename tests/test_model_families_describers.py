"""Local describers whose processors need no torchvision: Florence-2 (DaViT + BART, task tokens) and SmolVLM
(Idefics3: SigLIP-style vision + Llama, chat template), tiny random copies saved to disk and loaded back through
``hf:<dir>``; each reply's token ids must equal plain transformers ``generate`` on the same inputs.

Qwen2.5-VL and Qwen3-VL processors need torchvision (their video processor): ``test_tv_describers.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_describers import make_tiny_florence2, make_tiny_smolvlm, plain_chat_generate
from PIL import Image

from fmmc.core.registry import build

MAX_NEW = 6


@pytest.fixture(scope="module")
def tiny_florence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_florence2(tmp_path_factory.mktemp("tiny-florence2"))


def _image_and_mask() -> tuple[Image.Image, np.ndarray]:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:40, 20:50] = True
    return img, mask


def _plain_generate(directory: Path, image: Image.Image, text: str) -> torch.Tensor:
    """Plain transformers: the processor on (image, task text), then greedy ``generate``."""
    from transformers import Florence2ForConditionalGeneration, Florence2Processor

    processor = Florence2Processor.from_pretrained(directory)
    model = Florence2ForConditionalGeneration.from_pretrained(directory).eval()
    with torch.inference_mode():
        return model.generate(**processor(text=text, images=image, return_tensors="pt"), do_sample=False,
                              max_new_tokens=MAX_NEW)


def test_florence2_region_is_box_tokens_and_matches_plain_generate(tiny_florence: Path):
    d = build("describer", f"hf:{tiny_florence}", max_new_tokens=MAX_NEW)
    img, mask = _image_and_mask()
    images, text = d.request(img, mask)
    # box (20, 10, 50, 40) of an 80x60 image in 1000 bins: floor(20/80*1000), floor(10/60*1000), ...
    assert text == "<REGION_TO_DESCRIPTION><loc_250><loc_166><loc_625><loc_666>"
    assert len(images) == 1 and images[0].size == img.size
    ids = d.token_ids(img, mask)
    assert torch.equal(ids, _plain_generate(tiny_florence, img, text))  # whole decoder output, no prompt to cut
    reply = d.describe(img, mask)
    assert reply and reply == " ".join(d.processor.batch_decode(ids, skip_special_tokens=True)[0].split())


def test_florence2_crop_and_whole_image_ask_for_a_caption(tiny_florence: Path):
    img, mask = _image_and_mask()
    crop = build("describer", f"hf:{tiny_florence}", marking="crop", max_new_tokens=MAX_NEW)
    images, text = crop.request(img, mask)
    assert text == "<MORE_DETAILED_CAPTION>" and images[0].size != img.size  # the enlarged close-up
    assert torch.equal(crop.token_ids(img, mask), _plain_generate(tiny_florence, images[0], text))
    whole_images, whole_text = crop.request(img, None)
    assert whole_text == "<MORE_DETAILED_CAPTION>" and whole_images[0].size == img.size
    box = build("describer", f"hf:{tiny_florence}", max_new_tokens=MAX_NEW)
    assert box.marking == "box" and box.prompt_version != crop.prompt_version


def test_florence2_rejects_outline_markings_and_free_prompts(tiny_florence: Path):
    with pytest.raises(ValueError, match="marking 'contour'.*box, crop"):
        build("describer", f"hf:{tiny_florence}", marking="contour")
    with pytest.raises(ValueError, match="Florence-2, which answers fixed task tokens"):
        build("describer", f"hf:{tiny_florence}", prompt="Describe {region}.")


@pytest.fixture(scope="module")
def tiny_smolvlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm"))


@pytest.mark.parametrize("marking", ["contour", "contour+crop"])
def test_smolvlm_matches_plain_generate(tiny_smolvlm: Path, marking: str):
    d = build("describer", f"hf:{tiny_smolvlm}", marking=marking, max_new_tokens=MAX_NEW)
    img, mask = _image_and_mask()
    images, text = d.request(img, mask)
    assert len(images) == (2 if marking == "contour+crop" else 1) and "outlined in red" in text
    # the real Idefics3 processor cut each image into 32 px tiles + a global view, 4 image tokens each
    inputs = d.model_inputs(images, text)
    assert inputs["pixel_values"].shape[1] == 5 * len(images)
    ids = d.token_ids(img, mask)
    assert ids.shape == (1, MAX_NEW) and torch.equal(ids, plain_chat_generate(tiny_smolvlm, images, text, MAX_NEW))
    assert d.describe(img, mask) == " ".join(d.processor.batch_decode(ids, skip_special_tokens=True)[0].split())
