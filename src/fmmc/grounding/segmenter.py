"""Promptable masks (box / points) and automatic whole-image masks: SAM through transformers.

    >>> from fmmc.core.registry import build
    >>> seg = build("segmenter", "hf:facebook/sam-vit-base", device="auto")          # doctest: +SKIP
    >>> best = seg.segment(image, box=(40, 30, 300, 280))[0]                         # doctest: +SKIP
    >>> best.mask.shape, best.score                                                  # doctest: +SKIP
    ((480, 640), 0.97)
    >>> regions = seg.generate(image, points_per_side=16)   # every object/part, largest first  # doctest: +SKIP

The image embedding (the expensive ViT pass) of the last image is cached, so several prompts on one
image cost one encoder pass. ``SamModel`` checkpoints (``facebook/sam-vit-base|large|huge``, SlimSAM,
local dirs) and ``Sam2Model`` ones (``facebook/sam2.1-hiera-tiny|small|base-plus|large``, ``sam2-hiera-*``)
run the same code. Each family's masks are upscaled as its own processor does: SAM pads after resizing
(upscale to the padded input, crop, resize to the image), SAM 2 stretches the image to a square (masks go
straight to the image's size). transformers' SAM 2 image processor needs torchvision, so CI tests SAM 2 in
its second environment (``tests/test_tv_sam2.py``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from fmmc.core.device import resolve_device
from fmmc.core.hub import load_pretrained
from fmmc.grounding.common import MaskResult, resolve_dtype

log = logging.getLogger(__name__)

DEFAULT_SEGMENTER = "facebook/sam-vit-base"
_UPSCALE_CHUNK = 16  # masks upsampled at once: bounds memory at 16 x padded-size floats


@dataclass
class _Embedded:
    """An image passed through the encoder, with the geometry needed to map prompts and masks."""

    key: tuple[Any, ...]
    embeddings: Any  # tensor [1, C, h, w] (SAM) or list of tensors (SAM 2)
    original: tuple[int, int]  # (H, W) of the image
    reshaped: tuple[int, int]  # (H, W) after resizing, before padding
    padded: tuple[int, int]  # (H, W) the encoder saw
    stretched: bool = False  # SAM 2: the image was resized to ``padded`` without padding


class Segmenter:
    """Load once; ``segment`` with a box and/or points, or ``generate`` masks for the whole image."""

    def __init__(self, source: str = DEFAULT_SEGMENTER, device: str = "cpu", dtype: str | None = None) -> None:
        from transformers import AutoModel, AutoProcessor

        if not source:
            raise ValueError(f"segmenter needs a hub id or local dir, e.g. hf:{DEFAULT_SEGMENTER}")
        self.source = source
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.spec = f"hf:{source}"
        self.processor = load_pretrained(AutoProcessor.from_pretrained, source, "segmenter processor")
        model = load_pretrained(AutoModel.from_pretrained, source, "segmenter")
        if not (hasattr(model, "get_image_embeddings") and hasattr(model, "prompt_encoder")):
            raise ValueError(
                f"{source!r} loads as {type(model).__name__}, not a promptable segmenter; use a SAM checkpoint "
                f"such as hf:{DEFAULT_SEGMENTER}"
            )
        self.model = model.to(self.device, self.dtype).eval()
        self._lock = threading.Lock()
        self._cache: _Embedded | None = None
        log.info("segmenter %s (%s) on %s (%s)", source, type(model).__name__, self.device, self.dtype)

    # ---- encoder -------------------------------------------------------------------------------------
    def embed(self, image: Image.Image) -> _Embedded:
        """Encode ``image`` (cached: the same pixels are encoded once)."""
        import torch

        image = image if image.mode == "RGB" else image.convert("RGB")
        key = (image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        cached = self._cache
        if cached is not None and cached.key == key:
            return cached
        enc = self.processor(images=image, return_tensors="pt")
        pixel_values = enc["pixel_values"].to(self.device, self.dtype)
        with self._lock, torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixel_values)
        padded = (int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
        reshaped = padded
        if "reshaped_input_sizes" in enc:  # SAM pads after resizing; SAM 2 stretches to a square
            reshaped = tuple(int(v) for v in enc["reshaped_input_sizes"][0].tolist())  # type: ignore[assignment]
        emb = _Embedded(key, embeddings, (image.height, image.width), reshaped, padded,
                        stretched="reshaped_input_sizes" not in enc)
        self._cache = emb
        return emb

    # ---- prompted masks --------------------------------------------------------------------------------
    def segment(self, image: Image.Image, box: Sequence[float] | None = None,
                points: Sequence[Sequence[float]] | None = None, point_labels: Sequence[int] | None = None,
                multimask: bool = True) -> list[MaskResult]:
        """Masks for one prompt (a box, points, or both), best predicted IoU first.

        ``box`` is ``(x0, y0, x1, y1)`` and ``points`` are ``(x, y)`` in image pixels; ``point_labels``
        are 1 (on the object, the default) or 0 (background).
        """
        if box is None and not points:
            raise ValueError("segment() needs a prompt: box=(x0, y0, x1, y1) and/or points=[(x, y), ...]")
        emb = self.embed(image)
        kwargs: dict[str, Any] = {}
        if box is not None:
            if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
                raise ValueError(f"box {tuple(box)} must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1")
            kwargs["input_boxes"] = self._scale(emb, np.asarray(box, dtype=np.float64).reshape(1, 1, 4))
        if points:
            pts = np.asarray(points, dtype=np.float64).reshape(1, 1, -1, 2)
            labels = np.ones(pts.shape[2], dtype=np.int64) if point_labels is None else np.asarray(point_labels)
            if labels.shape != (pts.shape[2],):
                raise ValueError(f"got {pts.shape[2]} points but {labels.size} point_labels; give one label per point")
            kwargs["input_points"] = self._scale(emb, pts)
            kwargs["input_labels"] = self._tensor(labels.reshape(1, 1, -1), integer=True)
        logits, scores = self._decode(emb, multimask, **kwargs)  # [1, 1, K, h, w], [1, 1, K]
        logits, scores = logits[0, 0], scores[0, 0]
        order = scores.argsort(descending=True)
        full = self._upscale(emb, logits[order])
        stability = _stability(full, offset=1.0)
        return [MaskResult(mask=(full[i] > 0).numpy(), score=float(scores[order[i]]), stability=float(stability[i]))
                for i in range(len(order))]

    # ---- automatic masks -------------------------------------------------------------------------------
    def generate(self, image: Image.Image, points_per_side: int = 16, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.86, stability_thresh: float = 0.9, min_area_frac: float = 0.002,
                 dedup_iou: float = 0.7, max_masks: int | None = None) -> list[MaskResult]:
        """Masks for everything in the image from a ``points_per_side`` x ``points_per_side`` point grid.

        Keeps masks whose predicted IoU and stability pass the thresholds, drops near-duplicates (mask
        IoU above ``dedup_iou``, keeping the better score) and masks under ``min_area_frac`` of the
        image, and returns them largest first. Cost: one encoder pass + ``points_per_side**2 /
        points_per_batch`` decoder passes.
        """
        import torch

        if points_per_side < 1 or points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be >= 1")
        emb = self.embed(image)
        h, w = emb.original
        ticks = (np.arange(points_per_side) + 0.5) / points_per_side
        grid = np.stack(np.meshgrid(ticks * w, ticks * h), axis=-1).reshape(-1, 2)
        cand_logits, cand_scores, cand_stab = [], [], []
        for start in range(0, len(grid), points_per_batch):
            pts = grid[start:start + points_per_batch].reshape(1, -1, 1, 2)
            labels = self._tensor(np.ones(pts.shape[:3], dtype=np.int64), integer=True)
            logits, scores = self._decode(emb, True, input_points=self._scale(emb, pts), input_labels=labels)
            logits, scores = logits[0].flatten(0, 1), scores[0].flatten()  # [P*K, h, w], [P*K]
            logits = _crop_valid(logits, emb)
            stab = _stability(logits, offset=1.0)
            keep = (scores > pred_iou_thresh) & (stab > stability_thresh) & ((logits > 0).flatten(1).any(1))
            cand_logits.append(logits[keep])
            cand_scores.append(scores[keep])
            cand_stab.append(stab[keep])
        logits = torch.cat(cand_logits)
        if len(logits) == 0:
            return []
        scores, stab = torch.cat(cand_scores), torch.cat(cand_stab)
        keep_idx = _dedup(logits > 0, scores, dedup_iou)  # cheap pass at low resolution
        results: list[MaskResult] = []
        kept = torch.zeros((len(keep_idx), h * w), dtype=torch.bool)  # exact pass at full resolution
        kept_area = torch.zeros(len(keep_idx))
        for start in range(0, len(keep_idx), _UPSCALE_CHUNK):
            idx = keep_idx[start:start + _UPSCALE_CHUNK]
            full = self._upscale(emb, logits[idx], cropped=True) > 0
            for j, i in enumerate(idx.tolist()):
                flat = full[j].flatten()
                area = float(flat.sum())
                if area < max(1.0, min_area_frac * h * w):
                    continue
                n = len(results)
                inter = (kept[:n] & flat).sum(1).float()
                if n and bool((inter / (kept_area[:n] + area - inter) > dedup_iou).any()):
                    continue
                kept[n], kept_area[n] = flat, area
                results.append(MaskResult(mask=full[j].numpy(), score=float(scores[i]), stability=float(stab[i])))
        results.sort(key=lambda r: -r.area)
        return results[:max_masks] if max_masks else results

    # ---- helpers ---------------------------------------------------------------------------------------
    def _tensor(self, array: np.ndarray, integer: bool = False) -> Any:
        import torch

        t = torch.as_tensor(array)
        return t.to(self.device, torch.int64) if integer else t.to(self.device, self.dtype)

    def _scale(self, emb: _Embedded, coords: np.ndarray) -> Any:
        """Pixel coordinates of the original image -> the model's resized input frame."""
        (oh, ow), (rh, rw) = emb.original, emb.reshaped
        c = np.array(coords, dtype=np.float64, copy=True)
        flat = c.reshape(*c.shape[:-1], -1, 2)
        flat[..., 0] *= rw / ow
        flat[..., 1] *= rh / oh
        return self._tensor(flat.reshape(c.shape).astype(np.float32))

    def _decode(self, emb: _Embedded, multimask: bool, **prompts: Any) -> tuple[Any, Any]:
        import torch

        with self._lock, torch.inference_mode():
            out = self.model(image_embeddings=emb.embeddings, multimask_output=multimask, **prompts)
        return out.pred_masks.float().cpu(), out.iou_scores.float().cpu()

    def _upscale(self, emb: _Embedded, logits: Any, cropped: bool = False) -> Any:
        """Low-res logits ``[N, h, w]`` -> logits at the image's size ``[N, H, W]`` (as the processor does)."""
        import torch
        import torch.nn.functional as F

        outs = []
        for start in range(0, len(logits), _UPSCALE_CHUNK):
            x = logits[start:start + _UPSCALE_CHUNK][:, None]
            if emb.stretched:  # SAM 2's post_process_masks: one resize to the image
                outs.append(F.interpolate(x, emb.original, mode="bilinear", align_corners=False)[:, 0])
                continue
            if cropped:  # already cut to the valid (unpadded) region at low resolution
                x = F.interpolate(x, emb.reshaped, mode="bilinear", align_corners=False)
            else:
                x = F.interpolate(x, emb.padded, mode="bilinear", align_corners=False)
                x = x[..., : emb.reshaped[0], : emb.reshaped[1]]
            outs.append(F.interpolate(x, emb.original, mode="bilinear", align_corners=False)[:, 0])
        return torch.cat(outs) if outs else logits.new_zeros((0, *emb.original))


def _crop_valid(logits: Any, emb: _Embedded) -> Any:
    """Cut low-res logits ``[N, h, w]`` to the part that covers the image, not the padding."""
    h, w = logits.shape[-2:]
    vh = max(1, round(h * emb.reshaped[0] / emb.padded[0]))
    vw = max(1, round(w * emb.reshaped[1] / emb.padded[1]))
    return logits[..., :vh, :vw]


def _stability(logits: Any, offset: float = 1.0, threshold: float = 0.0) -> Any:
    """SAM's stability score: IoU of the masks thresholded at ``threshold +- offset`` (1 = crisp)."""
    import torch

    hi = (logits > threshold + offset).flatten(1).sum(1)
    lo = (logits > threshold - offset).flatten(1).sum(1)
    return torch.where(lo > 0, hi / lo.clamp(min=1), torch.zeros_like(hi, dtype=torch.float32))


def _dedup(masks: Any, scores: Any, iou_threshold: float, work_size: int = 64) -> Any:
    """Greedy NMS on mask IoU at no more than ``work_size`` pixels a side; indices kept, best score first."""
    import torch
    import torch.nn.functional as F

    x = masks[:, None].float()
    if max(x.shape[-2:]) > work_size:
        h, w = x.shape[-2:]
        s = work_size / max(h, w)
        x = (F.interpolate(x, (max(1, round(h * s)), max(1, round(w * s))), mode="area") > 0.5).float()
    small = x[:, 0].flatten(1)  # [N, S]
    areas = small.sum(1)
    kept: list[int] = []
    for i in scores.argsort(descending=True).tolist():
        if kept:
            k = torch.tensor(kept)
            inter = small[k] @ small[i]
            if bool((inter / (areas[k] + areas[i] - inter).clamp(min=1) > iou_threshold).any()):
                continue
        kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def build_hf_segmenter(source: str = DEFAULT_SEGMENTER, device: str = "cpu", dtype: str | None = None,
                       **_: Any) -> Any:
    """Registry factory for ``hf:<hub id or dir>`` segmenters: SAM / SAM 2, or SAM 3 (text prompts,
    ``fmmc.grounding.sam3``) when the checkpoint's ``config.json`` says so."""
    from transformers import AutoConfig

    from fmmc.grounding.sam3 import Sam3Segmenter, is_sam3

    source = source or DEFAULT_SEGMENTER
    if is_sam3(load_pretrained(AutoConfig.from_pretrained, source, "segmenter config")):
        return Sam3Segmenter(source, device=device, dtype=dtype)
    return Segmenter(source, device=device, dtype=dtype)
