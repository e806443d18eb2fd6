"""Composite scenes from texture photos: a labelled dataset whose test split holds out whole photos.

Each scene is a random view of one photo (the *background*, class B) with a blob-shaped object cut from
a photo of another class A pasted on it (soft edge, drop shadow). Both are regions of the dataset: the
object (mask = blob, label A) and the background (mask = the rest, label B), so one image holds two
materials and the mask decides the answer. Views vary in scale, rotation, flips, colour and lighting.

Sources are split *before* any crop is made: a test scene uses test photos only, so the test accuracy
measures generalisation to unseen photos, not recall of crops.

    >>> from fmmc.demo.scenes import SceneConfig, assign_splits, build_dataset
    >>> splits = assign_splits(sources, test_fraction=1 / 3, seed=0)                    # doctest: +SKIP
    >>> info = build_dataset(sources, splits, images.open, "out/dataset", SceneConfig()) # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from tqdm.auto import tqdm

from fmmc.data.dataset import write_dataset
from fmmc.data.records import Region
from fmmc.demo.sources import Source

log = logging.getLogger(__name__)
MARKER = ".fmmc-demo-dataset"  # a dataset folder the demo may delete and rebuild


@dataclass(frozen=True)
class SceneConfig:
    image_size: int = 320
    per_class: int = 48  # scenes with each class as the object, over both splits
    test_fraction: float = 1 / 3  # of each class's photos (and, so, of its scenes)
    seed: int = 0
    object_area: tuple[float, float] = (0.15, 0.4)  # fraction of the image the object covers
    view_scale: tuple[float, float] = (0.25, 0.85)  # crop side / photo's short side


@dataclass
class DatasetInfo:
    root: Path
    splits: dict[str, str]  # source id -> train | test
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> regions
    dropped: list[str] = field(default_factory=list)  # classes with too few photos to split

    @property
    def labels(self) -> list[str]:
        return sorted({lab for c in self.counts.values() for lab in c})

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "splits": self.splits, "counts": self.counts, "dropped": self.dropped}


def assign_splits(sources: Sequence[Source], test_fraction: float = 1 / 3, seed: int = 0
                  ) -> tuple[dict[str, str], list[str]]:
    """Per class, a seeded ~``test_fraction`` of its photos (at least one) go to test, the rest to train.

    Returns ``(source id -> split, classes dropped)``; a class with fewer than two photos cannot be split
    by photo and is dropped.
    """
    by_label: dict[str, list[Source]] = {}
    for s in sources:
        by_label.setdefault(s.label, []).append(s)
    rng = random.Random(seed)
    splits: dict[str, str] = {}
    dropped = []
    for label in sorted(by_label):
        items = sorted(by_label[label], key=lambda s: s.id)
        if len(items) < 2:
            dropped.append(label)
            continue
        rng.shuffle(items)
        n_test = min(len(items) - 1, max(1, round(len(items) * test_fraction)))
        for k, s in enumerate(items):
            splits[s.id] = "test" if k < n_test else "train"
    return splits, dropped


# ---------- image operations (pure functions of their inputs and rng) ----------

def random_view(img: Image.Image, size: int, rng: np.random.Generator,
                scale: tuple[float, float] = (0.25, 0.85)) -> Image.Image:
    """A square ``size`` view: random crop scale and position, small rotation, 90-degree turns, flips."""
    w, h = img.size
    short = min(w, h)
    angle = float(rng.uniform(-20, 20))
    spread = abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))
    side = min(float(rng.uniform(*scale)) * short, short / spread)  # the rotated crop must fit the photo
    outer = min(side * spread, short)  # (rounding could push it a hair past the photo)
    x0 = float(rng.uniform(0, max(0.0, w - outer)))
    y0 = float(rng.uniform(0, max(0.0, h - outer)))
    out_outer = max(size, int(math.ceil(size * spread)) + 2)
    # resize first (cheap on large photos), then rotate and take the centre
    patch = img.resize((out_outer, out_outer), Image.BICUBIC, box=(x0, y0, x0 + outer, y0 + outer), reducing_gap=2.0)
    patch = patch.rotate(angle, resample=Image.BILINEAR)
    off = (out_outer - size) // 2
    patch = patch.crop((off, off, off + size, off + size))
    k = int(rng.integers(4))
    if k:
        patch = patch.transpose([Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270][k - 1])
    if rng.random() < 0.5:
        patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
    return patch


def jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Photometric changes a camera or light would make: exposure, contrast, saturation, hue, blur, a light ramp."""
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.75, 1.25)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.75, 1.3)))
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.7, 1.3)))
    if rng.random() < 0.5:
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-8, 9))) % 256
        img = Image.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < 0.08:
        img = img.convert("L").convert("RGB")
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    arr = np.asarray(img, dtype=np.float32)
    n = arr.shape[0]
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * np.linspace(-1, 1, n)[None, :] + np.sin(theta) * np.linspace(-1, 1, n)[:, None]) / 2
    arr = arr * (1 + float(rng.uniform(0, 0.25)) * ramp[..., None])
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def blob_mask(size: int, rng: np.random.Generator, area: tuple[float, float] = (0.15, 0.4)) -> np.ndarray:
    """An irregular object outline: a stretched circle with random low-frequency wobble, bool [size, size]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = rng.uniform(0.32, 0.68, 2) * size
    r0 = math.sqrt(float(rng.uniform(*area)) * size * size / math.pi)
    alpha = rng.uniform(0, np.pi)
    stretch = math.exp(float(rng.uniform(-0.35, 0.35)))
    u = ((xx - cx) * np.cos(alpha) + (yy - cy) * np.sin(alpha)) / stretch
    v = (-(xx - cx) * np.sin(alpha) + (yy - cy) * np.cos(alpha)) * stretch
    theta = np.arctan2(v, u)
    wobble = np.zeros_like(theta)
    for k in range(2, 6):
        wobble += rng.uniform(0, 0.22 / k**0.7) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) < r0 * (1 + wobble)


def compose(background: Image.Image, obj: Image.Image, mask: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Paste ``obj`` inside ``mask`` onto ``background`` with a soft edge and a drop shadow."""
    size = background.size[0]
    m = Image.fromarray(mask.astype(np.uint8) * 255)
    dx, dy = (rng.uniform(0.01, 0.035, 2) * size).astype(int)
    shifted = Image.new("L", m.size, 0)
    shifted.paste(m, (int(dx), int(dy)))
    shadow = np.asarray(shifted.filter(ImageFilter.GaussianBlur(size / 50)), dtype=np.float32) / 255
    bg = np.asarray(background, dtype=np.float32) * (1 - float(rng.uniform(0.2, 0.45)) * shadow[..., None])
    alpha = np.asarray(m.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)[..., None] / 255
    out = alpha * np.asarray(obj, dtype=np.float32) + (1 - alpha) * bg
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


# ---------- the dataset ----------

def scene_counts(per_class: int, test_fraction: float) -> dict[str, int]:
    n_test = max(1, round(per_class * test_fraction))
    return {"train": max(1, per_class - n_test), "test": n_test}


def prepare_root(root: Path) -> None:
    """Empty ``root`` for a new dataset; refuse to touch a folder the demo did not write."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise ValueError(f"{root} exists and is not a dataset written by `fmmc demo`; choose another --out")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by `fmmc demo`; deleted and rebuilt on each run\n")


def build_dataset(sources: Sequence[Source], splits: dict[str, str], open_image: Callable[[Source], Image.Image],
                  root: str | Path, cfg: SceneConfig, progress: bool = True, workers: int = 2) -> DatasetInfo:
    """Write scenes, masks and ``metadata.jsonl`` (fields: split, description, source, role) to ``root``."""
    root = Path(root)
    prepare_root(root)
    counts = scene_counts(cfg.per_class, cfg.test_fraction)
    plan = []  # (split, object source, background source, index)
    for s_idx, split in enumerate(("train", "test")):
        pool: dict[str, list[Source]] = {}
        for s in sources:
            if splits.get(s.id) == split:
                pool.setdefault(s.label, []).append(s)
        labels = sorted(pool)
        if len(labels) < 2:
            raise ValueError(f"the {split} split has photos of {len(labels)} class(es); scenes need two or more")
        for label in labels:
            for i in range(counts[split]):
                rng = np.random.default_rng([cfg.seed, s_idx, labels.index(label), i])
                obj = pool[label][i % len(pool[label])]  # every photo of the class is used equally
                others = [lab for lab in labels if lab != label]
                bg_label = others[int(rng.integers(len(others)))]
                bg = pool[bg_label][int(rng.integers(len(pool[bg_label])))]
                plan.append((split, obj, bg, i))
    def render(item: tuple[str, Source, Source, int]) -> list[Region]:
        return _render_scene(item, open_image, root, cfg)

    regions: list[Region] = []
    tally: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    # PIL and numpy release the GIL in the heavy calls: two threads give most of two cores
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for made in tqdm(pool.map(render, plan), total=len(plan), desc="scenes", unit="img", disable=not progress,
                         dynamic_ncols=True):
            for r in made:
                regions.append(r)
                tally[r.split][r.label] = tally[r.split].get(r.label, 0) + 1  # type: ignore[index]
    write_dataset(root, regions)
    info = DatasetInfo(root, {k: v for k, v in sorted(splits.items())}, tally)
    (root / "sources.json").write_text(json.dumps(
        {"splits": info.splits, "sources": [{"id": s.id, "class": s.label, "licence": s.licence,
                                             "split": splits.get(s.id)} for s in sources]}, indent=1))
    log.info("dataset %s: %s", root, {k: sum(v.values()) for k, v in tally.items()})
    return info


def _render_scene(item: tuple[str, Source, Source, int], open_image: Callable[[Source], Image.Image], root: Path,
                  cfg: SceneConfig) -> list[Region]:
    """Make, save and describe one scene: an image, two masks, two regions (object, background)."""
    split, obj, bg, i = item
    rng = np.random.default_rng([cfg.seed, 7, hash_id(obj.id), hash_id(bg.id), i])
    size = cfg.image_size
    background = jitter(random_view(open_image(bg), size, rng, cfg.view_scale), rng)
    thing = jitter(random_view(open_image(obj), size, rng, cfg.view_scale), rng)
    mask = blob_mask(size, rng, cfg.object_area)
    scene = compose(background, thing, mask, rng)
    stem = f"{split}/{obj.label}_{i:03d}"
    img_path = root / "images" / f"{stem}.jpg"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    scene.save(img_path, quality=int(rng.integers(85, 96)))
    out = []
    for role, src, m in (("object", obj, mask), ("background", bg, ~mask)):
        m_path = root / "masks" / f"{stem}_{role}.png"
        m_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(m.astype(np.uint8) * 255).save(m_path)
        out.append(Region(image=img_path, mask=m_path, label=src.label, split=split, id=f"{stem}/{role}",
                          description=src.descriptions[int(rng.integers(len(src.descriptions)))],
                          extra={"source": src.id, "role": role, "licence": src.licence}))
    return out


def hash_id(text: str) -> int:
    """A stable 32-bit number for a string (Python's hash() changes between runs)."""
    import zlib

    return zlib.crc32(text.encode())
