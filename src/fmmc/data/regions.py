"""The one region rule: (image + mask | box | nothing) -> decoded RGB pixels and a bool mask.

Every caller that turns a region into pixels goes through here: training, ``predict`` (one image, a
folder, a dataset), evaluation, the web service, material maps, describers, zero-shot baselines and the
synth review page. So one photo gives the same pixels, and the same answer, wherever it enters.

    >>> img, mask = resolve_region("photo.jpg", box=(10, 10, 200, 200))       # doctest: +SKIP
    >>> img, mask = load_region(region)                                      # a dataset Region  # doctest: +SKIP

Decode rule (:data:`DECODE_RULE`): images are decoded at full size (no JPEG draft decoding), EXIF
orientation applied, converted to 8-bit RGB (:func:`fmmc.data.imageio.load_image`). A path, the file's
bytes and an already-open PIL image therefore give identical pixels; the backbone's resize happens later,
in one place (:func:`fmmc.vision.extractor.to_pixels`).

Mask rule (:func:`fmmc.data.imageio.mask_from_array`): a binary mask (0 and one other value) is its
non-zero pixels; any other mask (JPEG masks such as FMD's, anti-aliased PNGs) is thresholded at
``mask_threshold`` (default :data:`~fmmc.data.imageio.MASK_THRESHOLD` = 128: pixels >= 128). A mask file
wins over a box; a mask must have the image's size and cannot be empty. ``mask_threshold`` is an option of
the API (``predict(..., mask_threshold=)``), the CLI (``--mask-threshold``), the service (form field
``mask_threshold``) and datasets (a ``mask_threshold`` key in ``metadata.jsonl``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmmc.data.imageio import (
    DEFAULT_MAX_PIXELS,
    MASK_THRESHOLD,
    ImageError,
    box_to_mask,
    load_image,
    load_mask,
    mask_from_array,
    to_rgb,
)
from fmmc.data.records import Region

DECODE_RULE = "full"  # recorded with every cached feature: the pixels a region decodes to
# draft: the feature path's opt-in JPEG draft decode (see load_region); torchvision: its opt-in decode by
# torchvision on the model's device (fmmc.vision.tv_decode), which takes only region_mask from here
DECODE_RULES = ("full", "draft", "torchvision")
MASK_RULE = f"binary-nonzero-else-ge-{MASK_THRESHOLD}"

ImageInput = str | Path | bytes | Image.Image | np.ndarray
MaskInput = str | Path | bytes | np.ndarray


def as_image(image: ImageInput, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any image input -> upright 8-bit RGB, by the decode rule (paths and bytes: full-size decode)."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise ImageError(name or "<array>", f"image array has dtype {arr.dtype}", "pass uint8 [H, W, 3] pixels")
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
            raise ImageError(name or "<array>", f"image array has shape {arr.shape}", "pass [H, W] or [H, W, 3]")
        return to_rgb(Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr))
    return load_image(image, name=name, max_pixels=max_pixels)


def as_mask(mask: MaskInput, size: tuple[int, int], name: str | None = None, threshold: int | None = None,
            max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any mask input -> bool ``[H, W]`` for an image of ``size`` (width, height), by the mask rule."""
    if isinstance(mask, np.ndarray):
        where = name or "mask array"
        m = mask_from_array(mask, where, threshold)
        if m.shape != (size[1], size[0]):
            raise ImageError(where, f"mask is {m.shape[1]}x{m.shape[0]} but its image is {size[0]}x{size[1]}",
                             "masks must have the image's size (H, W)")
        return m
    return load_mask(mask, size=size, name=name, threshold=threshold, max_pixels=max_pixels)


def resolve_region(image: ImageInput, mask: MaskInput | None = None, box: Any = None, *,
                   mask_threshold: int | None = None, name: str | None = None, mask_name: str | None = None,
                   box_name: str = "box", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, np.ndarray | None]:
    """(RGB image, bool mask ``[H, W]`` or None for the whole image): a mask wins over a box."""
    img = as_image(image, name=name, max_pixels=max_pixels)
    if mask is not None:
        return img, as_mask(mask, img.size, name=mask_name, threshold=mask_threshold, max_pixels=max_pixels)
    if box is not None:
        return img, box_to_mask(tuple(box), img.size, name=box_name)
    return img, None


def region_threshold(region: Region) -> int | None:
    """The mask threshold a dataset line asks for (``mask_threshold`` key), None = the default rule."""
    t = region.extra.get("mask_threshold")
    return None if t is None else int(t)


def load_region(region: Region, image: Image.Image | None = None,
                draft: tuple[int, int] | None = None) -> tuple[Image.Image, np.ndarray | None]:
    """A dataset :class:`Region` -> (RGB image, bool mask or None), by the one rule. ``image``: the
    region's image already decoded by this rule (regions of one photo share one decode).

    ``draft=(w, h)`` is the feature path's ``decoder="pil-draft"`` (:data:`DECODE_RULES`): a JPEG is decoded
    at the smallest DCT scale still at least ``(w, h)`` (2-4x faster for photos much larger than the model's
    input), EXIF applied; the mask is still read, checked and returned at the file's full size, and the
    caller pools it onto the backbone's grid, which does not depend on the decoded size. Other formats
    decode as usual. Nothing else (describers, SAM prompts, the page) uses it.
    """
    if draft is None or image is not None:
        return resolve_region(region.image if image is None else image, region.mask, region.box,
                              mask_threshold=region_threshold(region), box_name=f"box of region {region.id!r}")
    from fmmc.data.imageio import image_size

    full = image_size(region.image)  # upright (EXIF applied), from the header
    return load_image(region.image, draft=draft), region_mask(region, full)


def region_mask(region: Region, size: tuple[int, int]) -> np.ndarray | None:
    """The region's bool mask (None: the whole image) for its image's upright ``size`` (width, height),
    without decoding the image: for decoders that decode it elsewhere (draft, torchvision)."""
    if region.mask is not None:
        return as_mask(region.mask, size, threshold=region_threshold(region))
    if region.box is not None:
        return box_to_mask(tuple(region.box), size, name=f"box of region {region.id!r}")
    return None

