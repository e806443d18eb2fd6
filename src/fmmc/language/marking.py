"""How a region is shown to a VLM: a red outline on the image, optionally a close-up crop; and the prompt.

    >>> images = mark_region(image, mask, marking="contour+crop")   # [outlined image, crop]  # doctest: +SKIP
    >>> text = region_prompt(DEFAULT_PROMPT, marking="contour+crop", whole_image=False)

The paper prompts GPT-4v to describe the material appearance of the masked region; a VLM sees no
mask, so the region is drawn on the image (a visual prompt). Everything that changes what the VLM sees
or is asked goes into :func:`prompt_version`, which is part of the description cache key.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np
from PIL import Image

from fmmc.data.masks import mask_bbox, mask_outline

MARKINGS = ("contour", "contour+crop", "crop")
OUTLINE_RGB = (255, 0, 0)

DEFAULT_SYSTEM = "You describe the visual appearance of materials in photographs, precisely and briefly."
# {region} is filled from REGION_PHRASES (it depends on the marking); the text is otherwise free to change.
DEFAULT_PROMPT = (
    "Look at {region}. In ONE sentence of at most 25 words, describe the appearance of its material: "
    "texture, reflectance (matte, glossy, metallic), colour and translucency. "
    "Do not name the object. Reply with the sentence only."
)
REGION_PHRASES = {
    "contour": "the region outlined in red",
    "contour+crop": "the region outlined in red in the first image (the second image is a close-up of it)",
    "crop": "this close-up of a surface",
    "whole": "the main surface in this image",
}


def resize_max(img: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is None or max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)


def crop_box(mask: np.ndarray, pad: float = 0.1, min_pad: int = 8) -> tuple[int, int, int, int]:
    """The mask's bounding box ``(x0, y0, x1, y1)``, padded by ``pad`` of its size (at least ``min_pad`` px)."""
    box = mask_bbox(mask)
    if box is None:
        raise ValueError("mask is empty")
    x0, y0, x1, y1 = box
    px = max(min_pad, round((x1 - x0) * pad))
    py = max(min_pad, round((y1 - y0) * pad))
    h, w = mask.shape
    return max(0, x0 - px), max(0, y0 - py), min(w, x1 + px), min(h, y1 + py)


def mark_region(
    image: Image.Image,
    mask: np.ndarray | None,
    marking: str = "contour+crop",
    max_side: int | None = 1024,
    line_width: int | None = None,
    min_crop_side: int = 256,
) -> list[Image.Image]:
    """The images a VLM is shown for a region (RGB, at most ``max_side`` pixels on the long side).

    ``mask=None`` (whole image) gives the image alone. ``line_width`` defaults to 0.6% of the long side
    (at least 4 px) of the resized image.
    """
    if marking not in MARKINGS:
        raise ValueError(f"unknown marking {marking!r}; use one of {', '.join(MARKINGS)}")
    image = image.convert("RGB")
    if mask is None:
        return [resize_max(image, max_side)]
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}")
    if not mask.any():
        raise ValueError("mask is empty (no region to describe)")
    out = []
    if marking in ("contour", "contour+crop"):
        small = resize_max(image, max_side)
        small_mask = mask
        if small.size != image.size:
            m = Image.fromarray(mask.astype(np.uint8) * 255).resize(small.size, Image.Resampling.NEAREST)
            small_mask = np.asarray(m) > 127
            if not small_mask.any():  # a region smaller than one pixel after resizing: keep its location
                ys, xs = np.nonzero(mask)
                small_mask = np.zeros((small.height, small.width), dtype=bool)
                small_mask[int(ys.mean() * small.height / image.height), int(xs.mean() * small.width / image.width)] = True
        width = line_width or max(4, round(0.006 * max(small.size)))
        arr = np.array(small)
        arr[mask_outline(small_mask, width)] = OUTLINE_RGB
        out.append(Image.fromarray(arr))
    if marking in ("contour+crop", "crop"):
        crop = image.crop(crop_box(mask))
        if max(crop.size) < min_crop_side:  # tiny regions: enlarge so the VLM sees texture, not a dot
            scale = min_crop_side / max(crop.size)
            crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.Resampling.BICUBIC)
        out.append(resize_max(crop, max_side))
    return out


def region_prompt(prompt: str, marking: str, whole_image: bool) -> str:
    """``prompt`` with ``{region}`` filled in for this marking (or for a whole-image region)."""
    phrase = REGION_PHRASES["whole" if whole_image else marking]
    return prompt.replace("{region}", phrase)


def prompt_version(**settings: Any) -> str:
    """A short stable hash of everything that decides what a describer is shown and asked."""
    blob = json.dumps({**settings, "phrases": REGION_PHRASES, "outline": OUTLINE_RGB}, sort_keys=True, default=str)
    return "p-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def clean_description(text: str) -> str:
    """One line without surrounding quotes or a leading 'Description:' label, in either order
    (``"Description: shiny steel"`` and ``Description: "shiny steel"`` both give ``shiny steel``)."""
    text = " ".join(text.split())
    for _ in range(2):  # quotes around a label, or a label before quotes
        text = _strip_quotes(_LABEL.sub("", _strip_quotes(text), count=1))
    return text


_LABEL = re.compile(r"^[*_#\s]{0,3}description[*_\s]{0,2}:[*_]{0,2}\s*", re.IGNORECASE)


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        return text[1:-1].strip()
    return text
