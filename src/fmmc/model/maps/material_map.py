"""``MaterialMap``: a per-pixel material label map, its confidence, and the regions it was painted from.

    >>> mmap = model.segment("kitchen.jpg")                 # doctest: +SKIP
    >>> mmap.label_at(120, 80)                              # doctest: +SKIP
    ('wood', 0.93)
    >>> mmap.save("out/", image)                            # labels.png, overlay.png, regions.json  # doctest: +SKIP

``labels`` holds class indices of the model's taxonomy (uint8); 255 marks pixels no region covers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmmc.model.maps.render import UNLABELLED, hex_color, overlay_image, palette
from fmmc.taxonomy import Taxonomy

log = logging.getLogger(__name__)


@dataclass
class MapRegion:
    """One classified region of a map (a SAM mask, or all pixels of one class in grid mode)."""

    id: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels (right/bottom exclusive)
    area: int  # pixels of the region's own mask
    visible_area: int  # pixels where this region is the one shown (smaller regions are painted on top)
    label_index: int
    probs: np.ndarray  # [K] class probabilities
    score: float | None = None  # SAM's predicted IoU (sam mode)
    mask: np.ndarray | None = field(default=None, repr=False)  # bool mask at the map's working size

    def top(self, names: tuple[str, ...], k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(names[i], float(self.probs[i])) for i in order]

    def to_json(self, names: tuple[str, ...], k: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "bbox": [int(v) for v in self.bbox], "area": int(self.area),
            "visible_area": int(self.visible_area), "label": names[self.label_index],
            "confidence": round(float(self.probs[self.label_index]), 6),
            "top": [{"label": lab, "prob": round(p, 6)} for lab, p in self.top(names, k)],
        }
        if self.score is not None:
            out["score"] = round(float(self.score), 4)
        return out


@dataclass
class MaterialMap:
    labels: np.ndarray  # uint8 [H, W]; 255 = unlabelled
    confidence: np.ndarray  # float32 [H, W]; probability of the shown class (0 where unlabelled)
    regions: list[MapRegion]
    taxonomy: Taxonomy
    mode: str
    region_ids: np.ndarray | None = None  # int32 [H, W]: index into ``regions`` shown at each pixel, -1 none
    meta: dict[str, Any] = field(default_factory=dict)

    UNLABELLED = UNLABELLED

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.labels.shape[1]), int(self.labels.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        return self.taxonomy.names

    def label_at(self, x: int, y: int) -> tuple[str | None, float]:
        """(class name, probability) at pixel (x, y); (None, 0.0) where no region covers it."""
        v = int(self.labels[y, x])
        return (None, 0.0) if v == UNLABELLED else (self.names[v], float(self.confidence[y, x]))

    def class_fractions(self) -> dict[str, float]:
        """Fraction of the image each class covers (``"unlabelled"`` included when present)."""
        counts = np.bincount(self.labels.ravel(), minlength=256)
        total = self.labels.size
        out = {self.names[i]: counts[i] / total for i in range(len(self.names)) if counts[i]}
        if counts[UNLABELLED]:
            out["unlabelled"] = counts[UNLABELLED] / total
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def legend(self) -> list[dict[str, Any]]:
        """Classes present in the map with their colour and share, largest first."""
        lut = palette(self.taxonomy)
        out = []
        for name, frac in self.class_fractions().items():
            i = UNLABELLED if name == "unlabelled" else self.names.index(name)
            out.append({"index": i, "label": name, "color": hex_color(lut[i]),
                        "fraction": round(float(frac), 6)})
        return out

    def to_json(self, top_k: int = 5) -> dict[str, Any]:
        w, h = self.size
        return {"mode": self.mode, "width": w, "height": h, "unlabelled_value": UNLABELLED,
                "classes": list(self.names), "legend": self.legend(),
                "regions": [r.to_json(self.names, top_k) for r in self.regions], **self.meta}

    def labels_image(self) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.labels, dtype=np.uint8))

    def confidence_image(self) -> Image.Image:
        """Confidence as 8-bit grey (prob * 255)."""
        return Image.fromarray((self.confidence * 255).round().clip(0, 255).astype(np.uint8))

    def overlay(self, image: Image.Image, alpha: float = 0.5, legend: bool = True, outlines: bool = True) -> Image.Image:
        img = image.convert("RGB")
        if img.size != self.size:
            img = img.resize(self.size, Image.BILINEAR)
        return overlay_image(img, self.labels, self.taxonomy, alpha, self.region_ids, outlines, legend)

    def save(self, out_dir: str | Path, image: Image.Image, top_k: int = 5) -> dict[str, Path]:
        """Write ``labels.png`` (class indices), ``overlay.png`` and ``regions.json`` to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"labels": out / "labels.png", "overlay": out / "overlay.png", "regions": out / "regions.json"}
        self.labels_image().save(paths["labels"])
        self.overlay(image).save(paths["overlay"])
        data = self.to_json(top_k)
        data["colors"] = {n: hex_color(self.taxonomy.color(i)) for i, n in enumerate(self.names)}
        paths["regions"].write_text(json.dumps(data, indent=1))
        log.info("material map written to %s", out)
        return paths
