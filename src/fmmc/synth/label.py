"""Auto-labelling: ground the prompt's object (Grounding DINO), mask it (SAM), label only that region.

The generate stage knows what each image shows ("a porcelain ceramic vase"), so the object name grounds
a box, the box prompts SAM, and the material label is attached to that mask only (the paper's semantic
grounding, 98% label accuracy on manually checked samples). Images where this is unreliable are
rejected with a reason instead of labelled wrongly.

    >>> from fmmc.synth.label import LabelConfig, Labeler
    >>> labeler = Labeler(LabelConfig(device="auto"), root=Path("runs/synth"))     # doctest: +SKIP
    >>> labeler([{"id": "vase-0001", "image": "images/vase-0001.png", "object": "vase",
    ...           "material": "ceramic", "submaterial": "porcelain", "label": "ceramic"}])  # doctest: +SKIP
    [{..., "status": "ok", "reason": None, "mask": "masks/vase-0001.png", "box": [88, 40, 402, 498], ...}]

Models load once in ``Labeler.__init__`` (so one Ray actor holds one copy); ``__call__`` takes a batch.
The accept/reject rules are the pure function :func:`decide`, testable without models.

Item contract. In: ``{"id", "image" (path relative to root), "object", "material", "submaterial",
"label", "prompt", "seed", "model_id", ...}``; only ``image`` and ``object`` are read. Out: the same
dict (every input key kept) plus

- ``status``: ``"ok"`` | ``"rejected"`` (a final, data-level verdict) | ``"failed"`` (an error; rerun it)
- ``reason``: None when ok; one of :data:`REJECT_REASONS` or ``"unreadable image: <problem>"`` when
  rejected; ``"<bad item|grounding error|segmentation error>: <Exception>: <message>"`` when failed
- ``mask``: ``"masks/<id>.png"`` relative to root (single channel, 0/255, the image's size, written
  atomically) when ok, else None (unless ``save_rejected_masks``)
- ``box``: ``[x0, y0, x1, y1]`` int pixels of the best box; ``det_score``, ``mask_score``,
  ``area_frac`` (mask area / image area) floats; ``n_detections`` int (boxes above ``box_threshold``);
  each None where that stage was not reached
- ``grounder``, ``segmenter``: the specs of the models used
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmmc.core.io import atomic_file
from fmmc.data.imageio import ImageError, load_image
from fmmc.grounding.common import Detection, MaskResult, box_overlap_min

log = logging.getLogger(__name__)

OK, REJECTED, FAILED = "ok", "rejected", "failed"
STATUSES = (OK, REJECTED, FAILED)
REJECT_REASONS = (  # plus "unreadable image: <problem>"; failed items say "<stage> error: <exception>"
    "object not found", "low detection score", "several instances", "low mask score", "mask too small",
    "mask too large", "all-black image",
)
OUTPUT_KEYS = ("status", "reason", "mask", "box", "det_score", "mask_score", "area_frac", "n_detections",
               "grounder", "segmenter")


@dataclass
class LabelConfig:
    """Models and the rules that accept or reject one generated image."""

    grounder: str = "hf:IDEA-Research/grounding-dino-base"
    segmenter: str = "hf:facebook/sam-vit-base"
    device: str = "auto"  # "cpu", "cuda", "cuda:1", "auto"
    dtype: str = "float32"  # "bfloat16" halves memory on GPU
    box_threshold: float = 0.3  # Grounding DINO boxes kept at all (candidates and rival instances)
    text_threshold: float = 0.25
    min_det_score: float = 0.35  # the chosen (best) box must reach this
    min_mask_score: float = 0.8  # SAM's predicted IoU of the chosen mask; -1 accepts any
    min_area_frac: float = 0.01  # mask area / image area
    max_area_frac: float = 0.95
    max_instances: int = 1  # instances allowed (the best box + rivals)
    dominance_margin: float = 0.15  # a box scoring within this of the best one is a rival instance ...
    instance_overlap: float = 0.5  # ... unless it overlaps the best box more than this (intersection / smaller)
    black_level: float = 4.0  # images whose mean pixel value is below this are "all-black" (safety-filtered)
    multimask: bool = True  # SAM returns 3 candidate masks; the best predicted IoU wins
    batch_size: int = 8  # images per grounder forward pass
    save_rejected_masks: bool = False  # also write masks of rejected images (for inspecting the rules)

    def __post_init__(self) -> None:
        for name in ("box_threshold", "text_threshold", "min_det_score", "min_area_frac", "max_area_frac",
                     "dominance_margin", "instance_overlap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"LabelConfig.{name}={value!r}: must be between 0 and 1")
        if self.min_mask_score > 1.0:
            raise ValueError(f"LabelConfig.min_mask_score={self.min_mask_score!r}: SAM scores are <= 1")
        if self.min_area_frac > self.max_area_frac:
            raise ValueError(f"LabelConfig: min_area_frac {self.min_area_frac} > max_area_frac {self.max_area_frac}")
        if self.max_instances < 1 or self.batch_size < 1:
            raise ValueError("LabelConfig: max_instances and batch_size must be >= 1")


@dataclass
class Choice:
    """What :func:`decide` picked: the best box and (once segmented) its best mask."""

    detection: Detection
    mask: MaskResult | None = None


# ---- the rules (pure) ------------------------------------------------------------------------------
def rival_instances(detections: Sequence[Detection], cfg: LabelConfig) -> list[Detection]:
    """Boxes other than the best that score nearly as high and are not inside/around the best box."""
    if not detections:
        return []
    top = max(detections, key=lambda d: d.score)
    return [d for d in detections if d is not top and d.score >= top.score - cfg.dominance_margin
            and box_overlap_min(d.box, top.box) <= cfg.instance_overlap]


def check_detections(detections: Sequence[Detection], cfg: LabelConfig) -> tuple[str | None, Detection | None]:
    """``(reason, best box)``; ``reason`` is None when the boxes allow segmenting the best one."""
    if not detections:
        return "object not found", None
    top = max(detections, key=lambda d: d.score)
    if top.score < cfg.min_det_score:
        return "low detection score", top
    if 1 + len(rival_instances(detections, cfg)) > cfg.max_instances:
        return "several instances", top
    return None, top


def decide(detections: Sequence[Detection], masks: Sequence[MaskResult], image_size: tuple[int, int],
           cfg: LabelConfig) -> tuple[str, str | None, Choice | None]:
    """Accept or reject one image: ``(status, reason, chosen)``.

    ``detections`` are the grounder's boxes for the object name, ``masks`` the segmenter's masks for the
    best box (best predicted IoU first; may be empty when the boxes already decide), ``image_size`` is
    (width, height). ``chosen`` carries the best box and mask, also for rejections, for inspection.
    """
    reason, top = check_detections(detections, cfg)
    if top is None:
        return REJECTED, reason, None
    if reason is not None:
        return REJECTED, reason, Choice(top)
    if not masks:
        return REJECTED, "mask too small", Choice(top)
    best = max(masks, key=lambda m: m.score)
    w, h = image_size
    if best.mask.shape != (h, w):
        raise ValueError(f"mask shape {best.mask.shape} does not match the {w}x{h} image (expected ({h}, {w}))")
    chosen = Choice(top, best)
    if best.score < cfg.min_mask_score:
        return REJECTED, "low mask score", chosen
    frac = best.area / float(w * h)
    if best.area == 0 or frac < cfg.min_area_frac:
        return REJECTED, "mask too small", chosen
    if frac > cfg.max_area_frac:
        return REJECTED, "mask too large", chosen
    return OK, None, chosen


def is_all_black(image: Image.Image, black_level: float) -> bool:
    """True for the blank frames diffusion safety checkers return (mean pixel value under ``black_level``)."""
    small = image.convert("L").resize((64, 64), Image.Resampling.BOX) if max(image.size) > 64 else image.convert("L")
    return float(np.asarray(small, dtype=np.float32).mean()) < black_level


def mask_relpath(item: dict[str, Any]) -> str:
    """Where an item's mask goes, relative to the root: ``masks/<id>.png`` (ids made filename-safe)."""
    ident = str(item.get("id") or Path(str(item.get("image", "item"))).stem)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ident).strip("._") or "item"
    if safe != ident:  # keep distinct ids distinct after sanitising
        safe = f"{safe[:80]}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"
    return f"masks/{safe}.png"


def write_mask(mask: np.ndarray, path: Path) -> None:
    """Single-channel PNG, 0 background / 255 region, written atomically (temp file + rename)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask for {path} must be a 2-D [H, W] array, got shape {mask.shape}")
    with atomic_file(path, binary=True) as f:
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(f, format="PNG")


# ---- the labeller ------------------------------------------------------------------------------------
class Labeler:
    """Callable on a batch of generated items; see the module docstring for the item contract.

    ``grounder``/``segmenter`` may be passed in (already built, e.g. shared with the web service);
    otherwise they are built from ``cfg.grounder``/``cfg.segmenter`` through the registry.
    """

    def __init__(self, cfg: LabelConfig | None = None, root: str | Path = ".", *, grounder: Any = None,
                 segmenter: Any = None) -> None:
        from fmmc.core.registry import build

        self.cfg = cfg or LabelConfig()
        self.root = Path(root)
        self.segmenter = segmenter or build("segmenter", self.cfg.segmenter, device=self.cfg.device,
                                            dtype=self.cfg.dtype)
        # SAM 3 (fmmc.grounding.sam3) finds and masks the object from its name in one step: no grounder, and
        # its instance score is both det_score and mask_score (min_det_score gates it; min_mask_score is unused)
        self.one_step = grounder is None and hasattr(self.segmenter, "segment_text")
        self.rules = replace(self.cfg, min_mask_score=-1.0) if self.one_step else self.cfg
        self.grounder = self.segmenter if self.one_step else (
            grounder or build("grounder", self.cfg.grounder, device=self.cfg.device, dtype=self.cfg.dtype))
        self.grounder_spec = str(getattr(self.grounder, "spec", None) or self.cfg.grounder)
        self.segmenter_spec = str(getattr(self.segmenter, "spec", None) or self.cfg.segmenter)

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(items), self.cfg.batch_size):
            out.extend(self._label_batch(items[start:start + self.cfg.batch_size]))
        if out:
            counts = {s: sum(r["status"] == s for r in out) for s in STATUSES}
            log.info("labelled %d items: %s", len(out), counts)
        return out

    # one batch: read images, ground them together, segment each
    def _label_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = [self._blank(item) for item in items]
        pending: list[tuple[int, Image.Image, str]] = []
        for i, item in enumerate(items):
            try:
                obj = item.get("object")
                if not isinstance(obj, str) or not obj.strip():
                    raise ValueError("item has no 'object' name to ground (the generate stage writes it)")
                rel = item.get("image")
                if not isinstance(rel, str) or not rel:
                    raise ValueError("item has no 'image' path (relative to the synth root)")
                try:
                    image = load_image(self.root / rel)
                except ImageError as e:
                    self._finish(results[i], REJECTED, f"unreadable image: {e.problem}")
                    continue
                if is_all_black(image, self.cfg.black_level):
                    self._finish(results[i], REJECTED, "all-black image")
                    continue
                pending.append((i, image, obj))
            except Exception as e:  # noqa: BLE001 - one bad item must not stop the batch
                self._fail(results[i], "bad item", e)
        if self.one_step:
            for i, image, obj in pending:
                try:
                    found = list(self.segmenter.segment_text(image, obj, threshold=self.cfg.box_threshold))
                    self._segment_and_decide(items[i], results[i], image, [r.extra["detection"] for r in found],
                                             found)
                except Exception as e:  # noqa: BLE001
                    self._fail(results[i], "segmentation error", e)
            return results
        detections = self._detect(pending, results)
        for (i, image, _), dets in zip(pending, detections):
            if dets is None:
                continue
            try:
                self._segment_and_decide(items[i], results[i], image, dets)
            except Exception as e:  # noqa: BLE001
                self._fail(results[i], "segmentation error", e)
        return results

    def _detect(self, pending: list[tuple[int, Image.Image, str]],
                results: list[dict[str, Any]]) -> list[list[Detection] | None]:
        if not pending:
            return []
        kw = {"box_threshold": self.cfg.box_threshold, "text_threshold": self.cfg.text_threshold}
        try:
            return list(self.grounder.detect_batch([p[1] for p in pending], [p[2] for p in pending], **kw))
        except Exception as e:  # noqa: BLE001 - retry one by one so only the culprit fails
            log.warning("batched grounding failed (%s); retrying %d images one by one", e, len(pending))
        out: list[list[Detection] | None] = []
        for i, image, obj in pending:
            try:
                out.append(list(self.grounder.detect(image, obj, **kw)))
            except Exception as e:  # noqa: BLE001
                self._fail(results[i], "grounding error", e)
                out.append(None)
        return out

    def _segment_and_decide(self, item: dict[str, Any], result: dict[str, Any], image: Image.Image,
                            dets: list[Detection], instances: list[MaskResult] | None = None) -> None:
        """``instances``: SAM 3's masks, one per detection (``extra["detection"]``), instead of asking SAM."""
        result["n_detections"] = len(dets)
        reason, top = check_detections(dets, self.rules)
        masks: list[MaskResult] = []
        if reason is None and top is not None:
            masks = ([r for r in instances if r.extra.get("detection") is top] if instances is not None else
                     list(self.segmenter.segment(image, box=top.box, multimask=self.cfg.multimask)))
        status, reason, chosen = decide(dets, masks, image.size, self.rules)
        if chosen is not None:
            result["box"] = [int(round(v)) for v in chosen.detection.box]
            result["det_score"] = round(float(chosen.detection.score), 4)
            if chosen.mask is not None:
                result["mask_score"] = round(float(chosen.mask.score), 4)
                result["area_frac"] = round(chosen.mask.area / float(image.width * image.height), 4)
                if status == OK or self.cfg.save_rejected_masks:
                    rel = mask_relpath(item)
                    write_mask(chosen.mask.mask, self.root / rel)
                    result["mask"] = rel
        self._finish(result, status, reason)

    def _blank(self, item: dict[str, Any]) -> dict[str, Any]:
        out = dict(item)
        out.update({k: None for k in OUTPUT_KEYS})
        out["grounder"], out["segmenter"] = self.grounder_spec, self.segmenter_spec
        return out

    @staticmethod
    def _finish(result: dict[str, Any], status: str, reason: str | None) -> None:
        result["status"], result["reason"] = status, reason

    def _fail(self, result: dict[str, Any], what: str, error: Exception) -> None:
        log.warning("item %s: %s: %s", result.get("id"), what, error, exc_info=log.isEnabledFor(logging.DEBUG))
        self._finish(result, FAILED, f"{what}: {type(error).__name__}: {str(error)[:300]}")
