"""Uploaded files -> images and masks, with every failure a 400 ``bad_image`` naming the upload.

    pixels = header_pixels(data, "image 'mug.jpg'", max_pixels)   # header only: 413 over the limit
    img = decode_image(data, "image 'mug.jpg'", max_pixels)        # the one decode rule (load_image)

Decoding goes through :func:`fmmc.data.imageio.load_image` / :func:`fmmc.data.regions.as_mask`, like
everywhere else; this module only names the upload and turns whatever a corrupt file makes Pillow raise
(``OSError``, ``SyntaxError``, ``ValueError``, ``EOFError``, ``struct.error``, ...) into one line.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from fmmc.serve.errors import ApiError

IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp", "image/tiff", "image/gif"}
GENERIC_TYPES = {"", "application/octet-stream"}  # no type given: the decoder decides
_FIX = "re-export it as JPEG or PNG"


def upload_name(upload: Any, field: str) -> str:
    """How messages name an upload: ``image 'mug.jpg'`` (or just the field when no file name was sent)."""
    return f"{field} {upload.filename!r}" if getattr(upload, "filename", None) else field


def check_type(upload: Any, field: str) -> None:
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype not in IMAGE_TYPES | GENERIC_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"{upload_name(upload, field)} has type {ctype!r}; send a JPEG, PNG, WebP, BMP, TIFF or GIF")


def header_pixels(data: bytes, name: str, max_pixels: int) -> int:
    """Width x height from the file's header (nothing decoded): 400 for an empty upload, 413 over
    ``max_pixels``, 0 when the header cannot be read (decoding then says why, as a 400)."""
    if not data:
        raise ApiError(400, "bad_image", f"{name}: empty upload (0 bytes); send the image file's bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        raise ApiError(413, "image_too_large", f"{name}: {e}; downscale it") from e
    except Exception:  # noqa: BLE001 - unreadable: the decode says why, as a 400
        return 0
    if w * h > max_pixels:
        raise ApiError(413, "image_too_large", f"{name}: image is {w}x{h} = {w * h:,} pixels, over the limit of "
                                               f"{max_pixels:,}; downscale it")
    return w * h


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Upload bytes -> RGB image (the one decode rule); any failure is a 400 naming ``name``."""
    from fmmc.data.imageio import load_image

    header_pixels(data, name, max_pixels)
    try:
        return load_image(data, name=name, max_pixels=max_pixels)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a corrupt file makes Pillow raise
        raise bad_image(e, name) from e


def decode_mask(data: bytes, size: tuple[int, int], name: str, threshold: int | None, max_pixels: int) -> Any:
    """Mask upload -> bool ``[H, W]`` of the image's ``size`` (the one mask rule); failures as decode_image."""
    from fmmc.data.regions import as_mask

    header_pixels(data, name, max_pixels)
    try:
        return as_mask(data, size, name=name, threshold=threshold, max_pixels=max_pixels)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise bad_image(e, name) from e


def bad_image(e: BaseException, name: str) -> ApiError:
    """The 400 for a decode failure: the library's own message when it names the file, else Pillow's, prefixed."""
    from fmmc.data.imageio import ImageError

    if isinstance(e, ApiError):
        return e
    if isinstance(e, ImageError):
        return ApiError(400, "bad_image", f"{e.path}: {e.problem}" + (f" ({e.fix})" if e.fix else ""))
    detail = " ".join(str(e).split()) or type(e).__name__
    return ApiError(400, "bad_image", f"{name}: truncated or corrupt image ({detail}); {_FIX}")
