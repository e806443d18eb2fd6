"""What Florence-2 is shown and asked: a task token, not a chat template; the region as ``<loc_*>`` box tokens.

    >>> images, text = florence_request(processor, image, mask, marking="box")   # doctest: +SKIP
    >>> text                                                                     # doctest: +SKIP
    '<REGION_TO_DESCRIPTION><loc_250><loc_166><loc_625><loc_666>'

Florence-2 (``Florence2ForConditionalGeneration``, native in transformers; ``florence-community/*`` ids)
answers fixed tasks only, so fmmc's free-text prompt does not apply. ``box`` (its default) shows the whole
image and asks ``<REGION_TO_DESCRIPTION>`` of the mask's bounding box, quantized to 1000 bins by the
processor's own quantizer; ``crop`` shows the padded close-up (:func:`fmmc.language.marking.mark_region`)
and asks ``<MORE_DETAILED_CAPTION>``, as does a whole-image region.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from fmmc.data.masks import mask_bbox
from fmmc.language.marking import mark_region, resize_max

FLORENCE_MARKINGS = ("box", "crop")
REGION_TASK = "<REGION_TO_DESCRIPTION>"
CAPTION_TASK = "<MORE_DETAILED_CAPTION>"


def is_florence(processor: Any) -> bool:
    """True for a Florence-2 processor (task tokens, no chat template)."""
    return type(processor).__name__.startswith("Florence2")


def florence_request(
    processor: Any, image: Image.Image, mask: np.ndarray | None, marking: str = "box", max_side: int | None = 768,
) -> tuple[list[Image.Image], str]:
    """The images and the task text for one region (``mask=None``: the whole image, captioned)."""
    if marking not in FLORENCE_MARKINGS:
        raise ValueError(f"Florence-2 describers take marking {' or '.join(FLORENCE_MARKINGS)}, not {marking!r} "
                         "(it cannot be told about a drawn outline)")
    image = image.convert("RGB")
    if mask is None:
        return [resize_max(image, max_side)], CAPTION_TASK
    if marking == "crop":
        return mark_region(image, mask, "crop", max_side=max_side), CAPTION_TASK
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}")
    box = mask_bbox(mask)
    if box is None:
        raise ValueError("mask is empty (no region to describe)")
    q = processor.post_processor.quantize(torch.tensor([box], dtype=torch.float64), size=image.size)[0].tolist()
    return [resize_max(image, max_side)], REGION_TASK + "".join(f"<loc_{int(v)}>" for v in q)
