"""An offline stand-in for the paper's data: procedural material textures in every test-set layout.

    python -m fmmc.evaluation.toydata runs/offline/data          # or: fmmc reproduce configs/offline.yaml

No real photos can be downloaded here, so this writes small generated datasets with the same *layouts*
as the real ones: a training set (``train/metadata.jsonl`` with masks and descriptions), an FMD-layout
test set (``fmd/image|mask/<class>/*.jpg``, JPEG masks), a DMS-layout test set (``dms/labels/test/*.png``
label maps with several materials per image, non-material and unmapped values, RGB in
``dms/images/test``) and a Google-test-like folder (``google/<class>/*.jpg``, whole images).

Each class is a texture family (colour + pattern: woven, grain rings, brushed streaks, speckle, ...);
each sample jitters colour, scale and orientation and pastes the object as a random blob on another
class's texture, so the mask matters. Numbers measured on it show the pipeline works; they say nothing
about real materials.

:class:`StatsDescriber` is an offline describer (``fmmc.evaluation.toydata:build_stats_describer``): one
sentence from colour, brightness and texture statistics of the region. It stands in for a VLM where none
can run; the paper's describer is ``openai:<model>``.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
VERSION = 1
# class -> (base RGB, pattern, period in px at 128 px, contrast)
STYLES: dict[str, tuple[tuple[int, int, int], str, float, float]] = {
    "fabric": ((60, 80, 170), "weave", 6, 0.35), "foliage": ((50, 140, 40), "blotch", 10, 0.6),
    "glass": ((170, 210, 225), "gloss", 0, 0.5), "leather": ((120, 70, 40), "blotch", 3, 0.25),
    "metal": ((180, 180, 190), "stripes", 2.5, 0.2), "paper": ((235, 232, 220), "blotch", 2, 0.06),
    "plastic": ((220, 40, 60), "gloss", 0, 0.35), "stone": ((130, 125, 115), "speckle", 0, 0.5),
    "water": ((30, 90, 160), "waves", 14, 0.35), "wood": ((160, 100, 50), "rings", 5, 0.35),
    "ceramic": ((240, 240, 235), "gloss", 0, 0.25), "rubber": ((35, 35, 35), "blotch", 2, 0.15),
    "wax": ((240, 220, 150), "gloss", 0, 0.12), "wicker": ((200, 160, 90), "weave", 4, 0.6),
    "sponge": ((230, 210, 60), "holes", 0, 0.6), "fur": ((140, 110, 80), "stripes", 1.5, 0.5),
    "carpet": ((150, 40, 40), "blotch", 1.5, 0.5), "cardboard": ((190, 150, 100), "stripes", 6, 0.15),
    "concrete": ((150, 150, 145), "blotch", 1.2, 0.2), "tile": ((200, 200, 210), "grid", 16, 0.6),
    "gemstone": ((150, 30, 160), "grid", 7, 0.9),
}
FMD_CLASSES = ("fabric", "foliage", "glass", "leather", "metal", "paper", "plastic", "stone", "water", "wood")
# fmmc class -> a DMS name that maps to it (for the DMS-layout test set)
DMS_NAME = {"fabric": "Fabric/cloth", "foliage": "Foliage", "glass": "Glass", "leather": "Leather", "metal": "Metal",
            "paper": "Paper", "plastic": "Plastic non-clear", "stone": "Stone natural", "water": "Water", "wood": "Wood",
            "ceramic": "Ceramic", "carpet": "Carpet/rug", "tile": "Tile", "rubber": "Rubber/latex"}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    small = rng.random((max(2, int(h / max(scale, 1))), max(2, int(w / max(scale, 1)))))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def texture(rng: np.random.Generator, cls: str, h: int, w: int) -> np.ndarray:
    """An ``[h, w, 3]`` uint8 texture of class ``cls`` (jittered colour, scale and orientation)."""
    base, pattern, period, contrast = STYLES[cls]
    s = max(h, w) / 128.0
    period = period * s * rng.uniform(0.8, 1.25)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    if pattern == "stripes":
        v = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + 3 * _smooth_noise(rng, h, w, 16 * s))
    elif pattern == "waves":
        v = 0.5 + 0.5 * np.sin(2 * np.pi * (u + 6 * s * np.sin(yy / (9 * s))) / period)
    elif pattern == "rings":
        cy, cx = rng.uniform(-h, 2 * h), rng.uniform(-w, 2 * w)
        r = np.hypot((yy - cy) * 0.3, xx - cx) + 4 * s * _smooth_noise(rng, h, w, 12 * s)
        v = 0.5 + 0.5 * np.sin(2 * np.pi * r / period)
    elif pattern == "weave":
        x2 = xx * np.cos(theta) - yy * np.sin(theta)
        v = 0.5 + 0.25 * (np.sin(2 * np.pi * u / period) + np.sign(np.sin(2 * np.pi * x2 / (2 * period))))
    elif pattern == "grid":
        x2 = xx * np.cos(theta) - yy * np.sin(theta)
        v = ((np.mod(u, period) < period * 0.15) | (np.mod(x2, period) < period * 0.15)).astype(np.float32)
        v = 1 - v
    elif pattern == "speckle":
        v = (rng.random((h, w)) < 0.25).astype(np.float32) * 0.6 + 0.4 * _smooth_noise(rng, h, w, 6 * s)
    elif pattern == "holes":
        v = 1 - (_smooth_noise(rng, h, w, 3 * s) > 0.7).astype(np.float32)
    elif pattern == "gloss":
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        v = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.15 * max(h, w)) ** 2)) + 0.3 * u / max(h, w)
    else:  # blotch
        v = _smooth_noise(rng, h, w, period)
    v = (v - v.mean()) / (v.std() + 1e-6)
    color = np.clip(np.array(base, dtype=np.float32) + rng.normal(0, 12, 3), 0, 255)
    img = color[None, None] * (1 + contrast * 0.5 * v[..., None]) + rng.normal(0, 4, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def blob_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random smooth blob covering roughly 20-50% of the image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.25, 0.4) * h, rng.uniform(0.25, 0.4) * w
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.6 * (_smooth_noise(rng, h, w, max(h, w) / 4) - 0.5)
    return d < 1.0


def sample(rng: np.random.Generator, cls: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An object of ``cls`` pasted on another class's texture, and its mask."""
    others = [c for c in STYLES if c != cls]
    bg = texture(rng, others[int(rng.integers(len(others)))], size, size)
    mask = blob_mask(rng, size, size)
    return np.where(mask[..., None], texture(rng, cls, size, size), bg), mask


class StatsDescriber:
    """Describes a region from pixel statistics: colour name, brightness, saturation, texture strength."""

    needs_image = True

    def __init__(self) -> None:
        self.spec = "fmmc.evaluation.toydata:build_stats_describer"
        self.prompt_version = "stats-v1"

    def describe(self, image: Image.Image, mask: np.ndarray | None, region: Any = None) -> str:
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        sel = np.ones(arr.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        r, g, b = (float(arr[..., c][sel].mean()) for c in range(3))
        hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
        gray = arr.mean(-1)
        gy, gx = np.abs(np.diff(gray, axis=0))[:, :-1], np.abs(np.diff(gray, axis=1))[:-1, :]
        inner = sel[1:, 1:] & sel[:-1, :-1]
        energy = float((gx + gy)[inner].mean()) if inner.any() else 0.0
        ratio = float(gx[inner].mean() / (gy[inner].mean() + 1e-6)) if inner.any() else 1.0
        return (f"a {_level(val, ('dark', 'medium-toned', 'bright'))}, {_level(sat, ('greyish', 'muted', 'vivid'))} "
                f"{_hue_name(hue, sat, val)} surface with {_level(energy * 8, ('a smooth', 'a fine', 'a coarse'))} "
                f"{'streaky' if ratio > 1.6 or ratio < 0.6 else 'even'} texture")


def _level(v: float, words: tuple[str, str, str]) -> str:
    return words[0] if v < 0.33 else words[1] if v < 0.66 else words[2]


def _hue_name(h: float, s: float, v: float) -> str:
    if s < 0.15:
        return "white" if v > 0.8 else "black" if v < 0.2 else "grey"
    names = ((0.04, "red"), (0.11, "orange"), (0.18, "yellow"), (0.45, "green"), (0.55, "cyan"), (0.75, "blue"),
             (0.9, "purple"), (1.01, "red"))
    name = next(n for limit, n in names if h < limit)
    return "brown" if name in ("orange", "red") and v < 0.7 and s < 0.75 else name


def build_stats_describer(**_: Any) -> StatsDescriber:
    return StatsDescriber()


def _save(path: Path, arr: np.ndarray, **kw: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def build_toy_data(out: str | Path, per_class: int = 12, test_per_class: int = 6, size: int = 128, seed: int = 0,
                   dms_images: int = 24) -> Path:
    """Write every layout under ``out`` (skipped when ``out/.complete`` matches these settings)."""
    from fmmc.taxonomy.taxonomy import dms_names

    out = Path(out)
    settings = {"version": VERSION, "per_class": per_class, "test_per_class": test_per_class, "size": size,
                "seed": seed, "dms_images": dms_images}
    marker = out / ".complete"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        log.info("toy data in %s is up to date", out)
        return out
    rng = np.random.default_rng(seed)
    describer = StatsDescriber()
    lines = []
    for cls in STYLES:
        for k in range(per_class):
            img, mask = sample(rng, cls, size)
            name = f"{cls}_{k:03d}"
            _save(out / "train/images" / f"{name}.jpg", img, quality=92)
            _save(out / "train/masks" / f"{name}.png", mask.astype(np.uint8) * 255)
            lines.append({"file_name": f"images/{name}.jpg", "mask_file_name": f"masks/{name}.png", "label": cls,
                          "description": describer.describe(Image.fromarray(img), mask)})
    (out / "train/metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for cls in FMD_CLASSES:  # FMD layout, JPEG masks
        for k in range(test_per_class):
            img, mask = sample(rng, cls, size)
            _save(out / "fmd/image" / cls / f"{cls}_moderate_{k:03d}_new.jpg", img, quality=90)
            _save(out / "fmd/mask" / cls / f"{cls}_moderate_{k:03d}_new.jpg", mask.astype(np.uint8) * 255, quality=90)
    for cls in STYLES:  # Google-test-like: whole-image close-ups
        for k in range(max(2, test_per_class // 2)):
            _save(out / "google" / cls / f"{cls}_{k:03d}.jpg", texture(rng, cls, size, size), quality=90)
    _write_dms(out / "dms", rng, dms_images, size, dms_names())
    marker.write_text(json.dumps(settings))
    log.info("toy data written to %s", out)
    return out


def _write_dms(root: Path, rng: np.random.Generator, n: int, size: int, names: list[str]) -> None:
    """Label maps: left/right materials, a sky band (unmapped), an 'I cannot tell' patch, a tiny speck."""
    idx = {name: i for i, name in enumerate(names)}
    classes = list(DMS_NAME)
    for k in range(n):
        a, b = rng.choice(len(classes), 2, replace=False)
        label = np.zeros((size, size), dtype=np.uint8)  # 0 = "No label" border
        cut = int(rng.integers(size // 3, 2 * size // 3))
        label[size // 5:-2, 2:cut] = idx[DMS_NAME[classes[a]]]
        label[size // 5:-2, cut:-2] = idx[DMS_NAME[classes[b]]]
        label[2:size // 5, 2:-2] = idx["Sky"]
        label[-size // 6:-2, 2:size // 6] = idx["I cannot tell"]
        label[size // 2, size // 2] = idx["Metal"] if classes[a] != "metal" else idx["Wood"]  # below min_area
        img = np.zeros((size, size, 3), dtype=np.uint8)
        for value in np.unique(label):
            name = names[value]
            cls = next((c for c, dn in DMS_NAME.items() if dn == name), None)
            tex = texture(rng, cls, size, size) if cls else np.full((size, size, 3), (135, 180, 235) if name == "Sky"
                                                                     else (90, 90, 90), dtype=np.uint8)
            img = np.where((label == value)[..., None], tex, img)
        _save(root / "images/test" / f"oi_{k:05d}.jpg", img, quality=90)
        _save(root / "labels/test" / f"oi_{k:05d}.png", label)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmmc.evaluation.toydata", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=12)
    p.add_argument("--test-per-class", type=int, default=6)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_toy_data(args.out, args.per_class, args.test_per_class, args.size, args.seed)
    print(f"toy data in {args.out}: train/ (metadata.jsonl), fmd/, dms/, google/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
