"""Whole-image material maps from a trained classifier, two ways.

    >>> from fmmc.model.maps import segment_image
    >>> mmap = segment_image(model, image, mode="sam")    # SAM proposes regions, each one classified  # doctest: +SKIP
    >>> mmap = segment_image(model, image, mode="grid")   # every backbone patch classified (fast)      # doctest: +SKIP

``sam``: SAM's automatic masks (a point grid) are classified in one batch, sharing ONE backbone pass:
a mask's pooled feature only depends on which patch cells it covers, so the feature map is computed once
and pooled per mask (identical to classifying each mask on its own). Regions are painted largest first,
so small regions stay on top; pixels no region covers stay 255 ("unlabelled").

``grid``: no SAM. Each patch is treated as a one-cell region (a max- or mean-pool over one cell is the
patch feature itself), passed through the head, and the logits are upsampled bilinearly to the image
size before the softmax. It needs a head that can run on vision features alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from fmmc.model.maps.material_map import MapRegion, MaterialMap
from fmmc.model.maps.render import UNLABELLED

log = logging.getLogger(__name__)

MODES = ("sam", "grid")
_ROW_CHUNK = 256  # output rows upsampled at once in grid mode


def segment_image(model: Any, image: Image.Image, mode: str = "sam", *, classes: list[str] | str | None = None,
                  description: str | None = None, points_per_side: int = 16, pred_iou_thresh: float = 0.86,
                  stability_thresh: float = 0.9, min_area_frac: float = 0.002, max_regions: int = 64,
                  max_side: int = 1024) -> MaterialMap:
    """A :class:`MaterialMap` of ``image`` (see the module docstring for the modes).

    ``classes``: the names to choose among (None: the classes the model was trained on, ``"all"``: the
    whole taxonomy, as :meth:`MaterialClassifier.classify`); ``description`` is the language-stream text
    for every region (two-stream models). SAM options: ``points_per_side``, ``pred_iou_thresh``,
    ``stability_thresh``, ``min_area_frac``, ``max_regions`` (largest kept). ``max_side``: SAM mode works
    on a copy at most this many pixels on its long side (SAM itself sees 1024) and scales the result back.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose 'sam' (SAM regions, classified) or 'grid' (patch grid, no SAM)")
    if len(model.taxonomy) > UNLABELLED:
        raise ValueError(f"material maps store labels as uint8: at most {UNLABELLED} classes, got {len(model.taxonomy)}")
    image = image.convert("RGB")
    if mode == "grid":
        return grid_map(model, image, classes=classes, description=description)
    return sam_map(model, image, classes=classes, description=description, points_per_side=points_per_side,
                   pred_iou_thresh=pred_iou_thresh, stability_thresh=stability_thresh, min_area_frac=min_area_frac,
                   max_regions=max_regions, max_side=max_side)


# ----- shared pieces ------------------------------------------------------------------------------------------
def classify_masks(model: Any, image: Image.Image, masks: Sequence[np.ndarray],
                   classes: list[str] | str | None = None,
                   description: str | Sequence[str | None] | None = None) -> np.ndarray:
    """Class probabilities ``[N, K]`` for ``N`` masks of one image, with a single backbone pass
    (:meth:`MaterialClassifier.classify`, the one forward)."""
    from fmmc.model.prediction import RegionInput

    if not masks:
        return np.zeros((0, len(model.taxonomy)), dtype=np.float32)
    descs = [description] * len(masks) if description is None or isinstance(description, str) else list(description)
    items = [RegionInput(image, m, d, classes) for m, d in zip(masks, descs)]
    try:
        preds = model.classify(items)
    except ValueError as e:
        enc = model.encoder
        if enc.text_encoder is None or all(d is not None for d in descs):
            raise
        raise ValueError(f"cannot describe map regions with describer {getattr(enc.describer, 'spec', '?')!r}: "
                         f"{e}. Pass description=..., or load the model with describer='none' or an "
                         "image describer (e.g. 'openai:gpt-4o-mini')") from e
    return np.stack([p.probs for p in preds]).astype(np.float32)


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    return np.minimum((np.arange(n_out) * n_in / n_out).astype(np.int64), n_in - 1)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    from fmmc.data.masks import mask_bbox

    box = mask_bbox(mask)
    if box is None:
        raise ValueError("empty map region")
    return box


# ----- sam mode -----------------------------------------------------------------------------------------------
def paint(masks: Sequence[np.ndarray], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint masks largest first (small ones end on top) -> (labels uint8, confidence float32, region ids int32).

    ``masks`` must already be sorted largest first; region id ``k`` is ``masks[k]``.
    """
    h, w = masks[0].shape if len(masks) else (0, 0)
    labels = np.full((h, w), UNLABELLED, dtype=np.uint8)
    conf = np.zeros((h, w), dtype=np.float32)
    ids = np.full((h, w), -1, dtype=np.int32)
    for k, (m, p) in enumerate(zip(masks, probs)):
        c = int(np.argmax(p))
        labels[m] = c
        conf[m] = p[c]
        ids[m] = k
    return labels, conf, ids


def sam_map(model: Any, image: Image.Image, *, classes: list[str] | str | None, description: str | None,
            points_per_side: int, pred_iou_thresh: float, stability_thresh: float, min_area_frac: float,
            max_regions: int, max_side: int) -> MaterialMap:
    from fmmc.grounding.prompts import component_spec, get_component

    if model.config.null_mask:
        log.warning("this model was trained with null_mask (whole images): its region labels may be unreliable")
    full_w, full_h = image.size
    work = image
    if max_side and max(full_w, full_h) > max_side:
        s = max_side / max(full_w, full_h)
        work = image.resize((max(1, round(full_w * s)), max(1, round(full_h * s))), Image.BILINEAR)
    segmenter = get_component(model, "segmenter")
    results = segmenter.generate(work, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                                 stability_thresh=stability_thresh, min_area_frac=min_area_frac, max_masks=max_regions)
    results = sorted(results, key=lambda r: -r.area)
    masks = [np.asarray(r.mask, dtype=bool) for r in results]
    log.info("sam map: %d regions from a %dx%d point grid", len(masks), points_per_side, points_per_side)
    meta = {"segmenter": component_spec(model, "segmenter"), "points_per_side": points_per_side}
    if not masks:
        log.warning("the segmenter proposed no region: the whole map is unlabelled (lower pred_iou_thresh?)")
        return MaterialMap(np.full((full_h, full_w), UNLABELLED, np.uint8), np.zeros((full_h, full_w), np.float32),
                           [], model.taxonomy, "sam", np.full((full_h, full_w), -1, np.int32), meta)
    probs = classify_masks(model, work, masks, classes, description)
    labels, conf, ids = paint(masks, probs)
    if work.size != image.size:  # back to the photo's size (nearest neighbour)
        rows, cols = _nearest_index(full_h, work.height), _nearest_index(full_w, work.width)
        labels, conf, ids = labels[rows][:, cols], conf[rows][:, cols], ids[rows][:, cols]
    sx, sy = full_w / work.width, full_h / work.height
    visible = np.bincount(ids[ids >= 0].ravel(), minlength=len(masks))
    regions = []
    for k, (m, p, r) in enumerate(zip(masks, probs, results)):
        x0, y0, x1, y1 = _bbox(m)
        bbox = (int(x0 * sx), int(y0 * sy), min(full_w, round(x1 * sx)), min(full_h, round(y1 * sy)))
        regions.append(MapRegion(k, bbox, round(int(m.sum()) * sx * sy), int(visible[k]), int(np.argmax(p)), p,
                                 float(r.score), m))
    return MaterialMap(labels, conf, regions, model.taxonomy, "sam", ids, meta)


# ----- grid mode ----------------------------------------------------------------------------------------------
def interp_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """``[n_out, n_in]`` weights of 1-D linear interpolation, as ``F.interpolate(..., "bilinear",
    align_corners=False)`` computes it; bilinear upsampling of ``X [h, w]`` is ``Ay @ X @ Ax.T``."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = src - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m.float()


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinearly upsample ``logits [K, h, w]`` to ``size`` = (H, W), softmax per pixel, in row chunks.

    Returns (labels uint8 [H, W], confidence float32 [H, W], per-class sums of the probability vectors
    of the pixels labelled with that class [K, K], pixel counts per class [K]). Memory stays at
    ``K x 256 x W`` floats whatever the image size.
    """
    k, h, w = logits.shape
    out_h, out_w = size
    ay, ax = interp_matrix(out_h, h), interp_matrix(out_w, w)
    labels = np.empty((out_h, out_w), dtype=np.uint8)
    conf = np.empty((out_h, out_w), dtype=np.float32)
    sums = torch.zeros(k, k)
    counts = torch.zeros(k)
    for r0 in range(0, out_h, _ROW_CHUNK):
        rows = torch.einsum("rh,khw->krw", ay[r0:r0 + _ROW_CHUNK], logits) @ ax.T  # [K, r, W]
        probs = rows.softmax(dim=0)
        p, lab = probs.max(dim=0)
        labels[r0:r0 + len(p)] = lab.numpy().astype(np.uint8)
        conf[r0:r0 + len(p)] = p.numpy()
        flat = lab.reshape(-1)
        sums.index_add_(0, flat, probs.reshape(k, -1).T)
        counts += torch.bincount(flat, minlength=k).float()
    return labels, conf, sums.numpy(), counts.numpy()


def _constant_text(model: Any, description: str | None) -> torch.Tensor | None:
    """The text embedding every patch gets in grid mode, or a clear error when there is none."""
    enc = model.encoder
    streams = model.config.streams
    if streams == "vision" or enc.text_encoder is None:
        return None
    spec = getattr(enc.describer, "spec", model.config.describer)
    if description is None and spec != "none":
        raise ValueError(
            f"grid mode classifies image patches with the vision stream, but this model (streams={streams}) also "
            f"needs a description per region from describer {spec!r}. Pass description='...' (used for every "
            "patch), use mode='sam', or train a vision-only model (`fmmc train ... streams=vision`)"
        )
    with torch.inference_mode():
        return enc.text_encoder.encode([description or ""])


def grid_map(model: Any, image: Image.Image, *, classes: list[str] | str | None,
             description: str | None) -> MaterialMap:
    streams = model.config.streams
    if streams == "language" or model.encoder.extractor is None:
        raise ValueError("grid mode needs a vision stream, and this model is language-only; use mode='sam' or "
                         "train a vision model (`fmmc train ... streams=vision`)")
    ex = model.encoder.extractor
    if "cls" in ex.pooling.split("+"):
        raise ValueError("grid mode needs a model trained with pooling=max or mean (this one pools the global "
                         "token, which has no per-patch equivalent); use mode='sam'")
    txt = _constant_text(model, description)
    feats, (h, w) = ex.cell_features(image)  # each patch as a one-cell region, pooled as the model's regions
    scaled = model.logits(feats, None if txt is None else txt.expand(h * w, -1))
    n_cls = scaled.shape[1]
    keep = model.class_indices(classes) or list(range(n_cls))  # a class subset: upsample only those logits
    grid_logits = scaled[:, keep].T.reshape(len(keep), h, w).float()
    sub_labels, conf, sub_sums, sub_counts = upsample_argmax(grid_logits, (image.height, image.width))
    labels = np.asarray(keep, dtype=np.uint8)[sub_labels]
    sums = np.zeros((n_cls, n_cls), dtype=np.float32)
    sums[np.ix_(keep, keep)] = sub_sums
    counts = np.zeros(n_cls, dtype=np.float64)
    counts[keep] = sub_counts
    regions = []
    for cls_idx in np.flatnonzero(counts):
        m = labels == cls_idx
        regions.append(MapRegion(len(regions), _bbox(m), int(counts[cls_idx]), int(counts[cls_idx]), int(cls_idx),
                                 sums[cls_idx] / counts[cls_idx], None, None))
    regions.sort(key=lambda r: -r.area)
    for k, r in enumerate(regions):
        r.id = k
    log.info("grid map: %dx%d patches -> %dx%d pixels, %d classes", h, w, image.width, image.height, len(regions))
    return MaterialMap(labels, conf, regions, model.taxonomy, "grid", None, {"grid": [int(h), int(w)]})
