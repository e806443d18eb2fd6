"""How regions are drawn for a VLM, the prompt and its version, cleaning of replies."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fmmc.data.masks import mask_outline as outline
from fmmc.language.marking import (
    DEFAULT_PROMPT,
    OUTLINE_RGB,
    clean_description,
    crop_box,
    mark_region,
    prompt_version,
    region_prompt,
)


def _image(w: int = 200, h: int = 100) -> Image.Image:
    return Image.new("RGB", (w, h), (40, 120, 200))


def _mask(w: int = 200, h: int = 100, box: tuple[int, int, int, int] = (50, 20, 150, 80)) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[box[1]:box[3], box[0]:box[2]] = True
    return m


def test_outline_is_a_band_on_the_boundary():
    m = _mask()
    band = outline(m, width=4)
    assert band[20, 100] and band[19, 100] and band[79, 100] and band[50, 50]  # edges, both sides
    assert not band[50, 100]  # interior
    assert not band[0, 0]  # far outside
    assert band.sum() < m.sum()


def test_crop_box_pads_and_clips():
    assert crop_box(_mask()) == (40, 12, 160, 88)  # 10% of 100x60, at least 8 px
    assert crop_box(_mask(box=(0, 0, 10, 10)), min_pad=8) == (0, 0, 18, 18)
    with pytest.raises(ValueError, match="empty"):
        crop_box(np.zeros((5, 5), dtype=bool))


def test_mark_region_contour_and_crop():
    img, m = _image(), _mask()
    outlined, crop = mark_region(img, m, "contour+crop")
    arr = np.asarray(outlined)
    assert tuple(arr[20, 100]) == OUTLINE_RGB
    assert tuple(arr[50, 100]) == (40, 120, 200)  # the region itself is not painted over
    assert max(crop.size) >= 256  # small crops are enlarged
    assert np.asarray(crop).reshape(-1, 3).std(axis=0).max() < 1  # the crop is unmarked


def test_mark_region_modes_and_resizing():
    img, m = _image(3000, 1500), _mask(3000, 1500, (1000, 500, 1010, 505))  # tiny region, big image
    (outlined,) = mark_region(img, m, "contour", max_side=600)
    assert outlined.size == (600, 300)
    assert (np.asarray(outlined) == OUTLINE_RGB).all(axis=-1).any()  # still visible after downscaling
    (crop,) = mark_region(img, m, "crop")
    assert crop.size[0] >= 256
    (whole,) = mark_region(img, None, "contour+crop", max_side=300)
    assert whole.size == (300, 150)
    with pytest.raises(ValueError, match="marking"):
        mark_region(img, m, "glow")
    with pytest.raises(ValueError, match="mask is 5x5"):
        mark_region(img, np.ones((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        mark_region(_image(), np.zeros((100, 200), dtype=bool))


def test_prompt_and_version():
    text = region_prompt(DEFAULT_PROMPT, "contour+crop", whole_image=False)
    assert "outlined in red" in text and "second image" in text and "{region}" not in text
    assert "outlined" not in region_prompt(DEFAULT_PROMPT, "contour", whole_image=True)
    v = prompt_version(prompt=DEFAULT_PROMPT, marking="contour")
    assert v == prompt_version(marking="contour", prompt=DEFAULT_PROMPT)  # stable, order-free
    assert v != prompt_version(prompt=DEFAULT_PROMPT + " ", marking="contour")
    assert v != prompt_version(prompt=DEFAULT_PROMPT, marking="crop")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('  "Glossy, smooth white surface."\n', "Glossy, smooth white surface."),
        ("Description: matte\n grey  stone", "matte grey stone"),
        ("", ""),
    ],
)
def test_clean_description(raw: str, clean: str):
    assert clean_description(raw) == clean
