"""Safe image and mask loading: every failure names the file and says how to fix it.

Handles EXIF rotation, CMYK, 16-bit, palette and alpha images (all become 8-bit RGB), refuses
decompression bombs and truncated files before they reach a model.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger uploads are almost always mistakes or attacks
MASK_THRESHOLD = 128  # non-binary masks (JPEG, anti-aliased): pixels >= this are the region (see mask_from_array)


class ImageError(ValueError):
    """An image or mask that cannot be used; the message names the file and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}: {problem}" + (f" ({fix})" if fix else ""))


def _open(source: str | Path | bytes | IO[bytes], name: str, max_pixels: int,
          draft: tuple[int, int] | None = None) -> Image.Image:
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            raise ImageError(name, "is a folder, not an image file", "give the image file's path")
        if not p.is_file():
            raise ImageError(name, "file not found", "check the path")
        if p.stat().st_size == 0:
            raise ImageError(name, "file is empty (0 bytes)", "re-copy or regenerate the image")
        fp: IO[bytes] | Path = p
    else:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        if isinstance(source, bytes) and not source:
            raise ImageError(name, "empty upload (0 bytes)", "send the image file's bytes")
    img: Image.Image | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(name, f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}",
                                 "downscale it, or raise max_pixels if you trust the file")
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)  # decode at a reduced scale that is still >= draft: much faster
            img.load()
    except Exception as e:
        if img is not None:
            img.close()  # a failed decode must not leave the file open
        err = _decode_error(e, name)
        if err is e:
            raise
        raise err from e
    return img


def _decode_error(e: Exception, name: str) -> Exception:
    """The :class:`ImageError` for what opening or decoding ``name`` raised. Pillow's decoders raise many types
    on truncated or corrupted bytes, at open and at load time (OSError, SyntaxError, ValueError such as
    "Truncated IHDR chunk" or "Invalid dimensions", struct.error, IndexError, TypeError, EOFError, zlib.error,
    DecompressionBombError, ...): each is this file's problem. Only a MemoryError is passed on as it is."""
    if isinstance(e, ImageError):
        return e
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageError(name, f"refused as a decompression bomb: {e}", "downscale the image")
    if isinstance(e, UnidentifiedImageError):
        return ImageError(name, "not an image file PIL can read", "convert it to JPEG or PNG")
    if isinstance(e, OSError) and e.errno is not None:  # the file system, not the bytes
        return ImageError(name, f"cannot read the file: {e.strerror}", "check that it exists and is readable")
    if isinstance(e, MemoryError):
        return e
    what = str(e).strip() or type(e).__name__
    return ImageError(name, f"truncated or corrupt image: {what}", "re-copy or regenerate the file")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16-bit and float are rescaled, alpha composited onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # CMYK, L, YCbCr, 1, RGBA-composited
    return img


def load_image(
    source: str | Path | bytes | IO[bytes],
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Load an image as upright 8-bit RGB (EXIF orientation applied).

    ``draft=(w, h)`` lets JPEG decoding skip detail a model resizing to about that size would drop
    (the result is still at least that large, and keeps the aspect ratio).
    """
    name = name or (str(source) if isinstance(source, (str, Path)) else "<upload>")
    img = _open(source, name, max_pixels, draft)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose an otherwise good image
        pass
    return to_rgb(img)


def load_mask(
    source: str | Path | bytes | IO[bytes],
    size: tuple[int, int] | None = None,
    name: str | None = None,
    threshold: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Load a mask as a bool array ``[H, W]`` with the one mask rule (:func:`mask_from_array`).

    ``size`` is the image's (width, height); a mask of another size is an error.
    """
    name = name or (str(source) if isinstance(source, (str, Path)) else "<mask>")
    img = _open(source, name, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        pass
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        arr = np.asarray(img.convert("RGBA"))
        arr = np.where(arr[..., 3] > 0, arr[..., :3].max(axis=-1), 0)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
    else:
        arr = np.asarray(img.convert("L"))
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        raise ImageError(name, f"mask is {arr.shape[1]}x{arr.shape[0]} but its image is {size[0]}x{size[1]}",
                         "masks must have the image's size; regenerate or resize the mask with nearest-neighbour")
    return mask_from_array(arr, name, threshold)


def mask_from_array(arr: np.ndarray, name: str = "mask", threshold: int | None = None) -> np.ndarray:
    """The one mask rule, for files and arrays alike -> bool ``[H, W]``.

    * bool arrays are taken as they are;
    * a *binary* mask (0 and one other value: 0/1, 0/255, ...) -> every non-zero pixel is the region;
    * any other mask (JPEG masks such as FMD's, anti-aliased PNGs, soft masks) -> pixels ``>= threshold``,
      where ``threshold`` defaults to :data:`MASK_THRESHOLD` (128, the middle of 8-bit grey).

    An explicit ``threshold`` always applies (``>= threshold``), binary or not. An empty result is an error.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        arr = arr.max(axis=-1)
    if arr.ndim != 2:
        raise ImageError(name, f"mask must be 2-D [H, W], got shape {tuple(arr.shape)}", "pass a single-channel mask")
    if arr.dtype == bool:
        mask = arr
    elif threshold is not None:
        mask = arr >= threshold
    else:
        mask = arr > 0 if _binary(arr) else arr >= MASK_THRESHOLD
    if not mask.any():
        raise ImageError(name, "mask is empty (no pixel inside the region)", "drop this region or fix its mask")
    return mask


def _binary(arr: np.ndarray) -> bool:
    """0 and at most one other value (what ``np.unique`` would say, without sorting a photo-sized mask:
    four linear passes, which matters because the mask rule runs for every region the feature path loads)."""
    if arr.size == 0 or arr.min() != 0:
        return False
    top = arr.max()
    return top == 0 or int(np.count_nonzero(arr)) == int(np.count_nonzero(arr == top))


def box_to_mask(box: tuple[float, float, float, float], size: tuple[int, int], name: str = "box") -> np.ndarray:
    """A bool mask ``[H, W]`` for box ``(x0, y0, x1, y1)`` in pixels; ``size`` is (width, height)."""
    w, h = size
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{name} {tuple(box)} has zero or negative area; expected x0 < x1 and y0 < y1")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise ValueError(f"{name} {tuple(box)} lies outside the {w}x{h} image")
    xi0, yi0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    xi1, yi1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    mask = np.zeros((h, w), dtype=bool)
    mask[yi0:yi1, xi0:xi1] = True
    return mask


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the upright image (EXIF orientation applied), read from the header only.
    Any failure is an :class:`ImageError` naming the file."""
    if not Path(path).is_file():
        raise ImageError(path, "file not found", "check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # header only: nothing is decoded
            with Image.open(path) as im:
                size = im.size
                try:
                    orientation = im.getexif().get(0x0112, 1)
                except Exception:  # noqa: BLE001 - a broken EXIF block: the stored size
                    orientation = 1
    except Exception as e:
        err = _decode_error(e, str(path))
        if err is e:
            raise
        raise err from e
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
