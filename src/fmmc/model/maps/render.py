"""Drawing material maps: taxonomy colours blended over the photo, region outlines, a legend, PNG bytes.

    >>> import numpy as np
    >>> from fmmc.taxonomy import load_taxonomy
    >>> labels = np.full((4, 6), 255, np.uint8); labels[:, :3] = 4       # metal on the left, nothing right
    >>> colorize(labels, load_taxonomy())[0, 0].tolist()
    [127, 127, 127]
    >>> int(boundaries(labels).sum())                                     # one pixel per row, where the label changes
    4

Pure numpy + PIL; nothing here knows about models.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fmmc.taxonomy import Taxonomy

UNLABELLED = 255
UNLABELLED_RGB = (40, 40, 40)


def palette(taxonomy: Taxonomy) -> np.ndarray:
    """``[256, 3]`` uint8 colours: class ``i`` -> ``taxonomy.color(i)``, 255 (unlabelled) -> dark grey."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for i in range(min(len(taxonomy), UNLABELLED)):
        lut[i] = taxonomy.color(i)
    lut[UNLABELLED] = UNLABELLED_RGB
    return lut


def hex_color(rgb: Sequence[int]) -> str:
    """``(31, 119, 180)`` -> ``"#1f77b4"``."""
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def colorize(labels: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    """uint8 ``[H, W, 3]`` colour image of a label map."""
    return palette(taxonomy)[labels]


def boundaries(ids: np.ndarray) -> np.ndarray:
    """Bool ``[H, W]``: pixels whose right or lower neighbour belongs to another region/class."""
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


def _thicken(edge: np.ndarray, radius: int) -> np.ndarray:
    out = edge.copy()
    for _ in range(max(0, radius)):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def legend_panel(entries: Sequence[tuple[str, tuple[int, int, int], float]], height: int, scale: float = 1.0) -> Image.Image:
    """A white panel listing ``(name, colour, fraction of the image)`` rows, at least ``height`` pixels tall."""
    size = max(11, int(14 * scale))
    font = _font(size)
    row = int(size * 1.6)
    pad = int(size * 0.8)
    width = int(size * 13)
    need = pad * 2 + row * (len(entries) + 1)
    panel = Image.new("RGB", (width, max(height, need)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    draw.text((pad, pad), "materials", fill=(0, 0, 0), font=font)
    for k, (name, rgb, frac) in enumerate(entries):
        y = pad + row * (k + 1)
        draw.rectangle([pad, y + 2, pad + size, y + 2 + size], fill=tuple(rgb), outline=(0, 0, 0))
        draw.text((pad + int(size * 1.5), y), f"{name}  {frac * 100:.0f}%", fill=(0, 0, 0), font=font)
    return panel


def overlay_image(image: Image.Image, labels: np.ndarray, taxonomy: Taxonomy, alpha: float = 0.5,
                  region_ids: np.ndarray | None = None, outlines: bool = True, legend: bool = True) -> Image.Image:
    """The photo with class colours blended in (unlabelled pixels left as they are), outlines, and a legend."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"label map {labels.shape} and image {rgb.shape[:2]} differ in size (H, W)")
    colours = colorize(labels, taxonomy).astype(np.float32)
    labelled = (labels != UNLABELLED)[..., None]
    out = np.where(labelled, (1 - alpha) * rgb + alpha * colours, rgb)
    if outlines:
        radius = max(0, round(max(labels.shape) / 800))
        edge = _thicken(boundaries(region_ids if region_ids is not None else labels), radius)
        out[edge] = (255, 255, 255)
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    if not legend:
        return img
    total = labels.size
    counts = np.bincount(labels.ravel(), minlength=256)
    order = [int(i) for i in np.argsort(-counts) if counts[i] > 0]
    entries = [(taxonomy.names[i] if i != UNLABELLED else "unlabelled",
                tuple(int(v) for v in palette(taxonomy)[i]), counts[i] / total) for i in order]
    panel = legend_panel(entries, img.height, scale=max(1.0, img.height / 500))
    canvas = Image.new("RGB", (img.width + panel.width, max(img.height, panel.height)), (255, 255, 255))
    canvas.paste(img, (0, 0))
    canvas.paste(panel, (img.width, 0))
    return canvas


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """PNG-encode a PIL image or a uint8 array (``[H, W]`` grey or ``[H, W, 3]`` RGB)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def png_base64(image: Image.Image | np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")
