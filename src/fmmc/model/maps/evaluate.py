"""Scoring material maps against dense label maps (DMS): pixel accuracy, mIoU and mAcc.

    >>> from fmmc.model.maps import evaluate_maps, load_dms_pairs
    >>> report = evaluate_maps(model, load_dms_pairs("DMS_v1", split="test"), mode="grid")   # doctest: +SKIP
    >>> report["pixel_acc"], report["miou"]                                                  # doctest: +SKIP

DMS label maps are PNGs whose values index DMS's ``taxonomy.json`` names; they are mapped onto the model's
taxonomy with the built-in ``dms`` label map (``fmmc.taxonomy.load_label_map("dms")``). Pixels whose
DMS class has no counterpart (``No label``, ``Sky``, ``Multiple materials`` ...) are ignored. A pixel the
map leaves unlabelled counts as wrong. mIoU and mAcc average over the classes present in the ground
truth of the evaluated images, computed from one confusion matrix over all pixels (as the paper's
tables do for regions).

:func:`load_dms_pairs` reads a DMS tree with the same reader as ``fmmc eval dms:``
(:mod:`fmmc.data.readers.dms`): label PNGs in ``<root>/labels/<split>/`` (any case: ``DMS_v1/Labels/test/``;
no split given: ``test`` when present), images with the same stem in ``<root>/images/<split>/`` (or
``images=DIR``), and ``taxonomy.json`` at the root when present (its ``names`` then replace the built-in
list). Label files are decoded by :func:`fmmc.data.readers.dms.read_label_map` and DMS names mapped by
:func:`fmmc.data.readers.dms.value_labels`, as for region test sets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmmc.model.maps.render import UNLABELLED

log = logging.getLogger(__name__)

IGNORE = 255


def source_lut(taxonomy: Any, names: list[str] | None = None, label_map: str | dict[str, Any] | None = "dms") -> np.ndarray:
    """``[256]`` uint8: a label-map value -> the model's class index, or 255 (ignored).

    ``names`` are the source dataset's class names in value order (DMS's 57 by default); ``label_map``
    maps them onto the default taxonomy's names as the DMS test-set reader does
    (:func:`fmmc.data.readers.dms.value_labels`: case-insensitive, non-materials dropped).
    ``label_map=None`` means values already are the model's class indices (255 ignored).
    """
    lut = np.full(256, IGNORE, dtype=np.uint8)
    if label_map is None:
        n = min(len(taxonomy), IGNORE)
        lut[:n] = np.arange(n)
        return lut
    from fmmc.data.readers.dms import value_labels
    from fmmc.taxonomy.taxonomy import dms_names

    targets = value_labels(names if names is not None else dms_names(), label_map)
    for value, target in enumerate(targets[:256]):
        canon = taxonomy.canonical(target) if target is not None else None
        if canon is not None:
            lut[value] = taxonomy.names.index(canon)
    return lut


def confusion(gt: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``[k, k + 1]`` counts of (true class, predicted class) over pixels with a valid ground truth;
    the last column counts pixels the map left unlabelled."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    valid = gt != IGNORE
    t = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    p = np.where(p == UNLABELLED, k, p)
    return np.bincount(t * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)


def map_metrics(conf: np.ndarray, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Pixel accuracy, mIoU and mAcc (over classes present in the ground truth) from a confusion matrix.

    >>> m = map_metrics(np.array([[3, 1, 0], [0, 2, 2]]), ["a", "b"])
    >>> m["pixel_acc"], round(m["miou"], 4), m["macc"]
    (0.625, 0.575, 0.625)
    """
    k = conf.shape[0]
    tp = np.diag(conf[:, :k]).astype(np.float64)
    gt = conf.sum(axis=1).astype(np.float64)
    pred = conf[:, :k].sum(axis=0).astype(np.float64)
    total = gt.sum()
    present = gt > 0
    iou = np.where(present, tp / np.maximum(gt + pred - tp, 1), np.nan)
    acc = np.where(present, tp / np.maximum(gt, 1), np.nan)
    per_class = {names[i]: {"iou": float(iou[i]), "acc": float(acc[i]), "pixels": int(gt[i])}
                 for i in range(k) if present[i]}
    return {
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "macc": float(np.nanmean(acc)) if present.any() else float("nan"),
        "pixels": int(total),
        "unlabelled_pixels": int(conf[:, k].sum()),
        "per_class": per_class,
    }


def _load_label(source: Any) -> np.ndarray:
    """A label map from an array, a PIL image or a file (files decoded as the DMS reader does)."""
    if isinstance(source, (str, Path)):
        from fmmc.data.readers.dms import read_label_map

        arr = read_label_map(source)
    else:
        arr = np.asarray(source)
    if arr.ndim == 3:  # an RGB-saved grey label map (in memory): all channels equal
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise ValueError(f"{source}: label map must be single-channel (class index per pixel), got colours")
        arr = arr[..., 0]
    if arr.max(initial=0) > 255:
        raise ValueError(f"{source}: label values above 255")
    return arr.astype(np.uint8)


def evaluate_maps(model: Any, pairs: Iterable[tuple[Any, Any]], mode: str = "grid",
                  label_map: str | dict[str, Any] | None = "dms", names: list[str] | None = None,
                  limit: int | None = None, progress: bool = False, **segment_kwargs: Any) -> dict[str, Any]:
    """Segment each ``(image, label map)`` pair (paths, PIL images or arrays) and score the maps together.

    Returns ``pixel_acc``, ``miou``, ``macc``, ``per_class`` and ``failures`` (pairs that could not be read).
    """
    from tqdm.auto import tqdm

    from fmmc.data.imageio import ImageError, load_image
    from fmmc.data.readers.dms import check_values
    from fmmc.taxonomy.taxonomy import dms_names

    tax = model.taxonomy
    k = len(tax)
    lut = source_lut(tax, names, label_map)
    n_names = None if label_map is None else len(names if names is not None else dms_names())
    conf = np.zeros((k, k + 1), dtype=np.int64)
    failures: list[tuple[str, str]] = []
    n = 0
    items = list(pairs)[:limit] if limit else list(pairs)
    for img_src, lab_src in tqdm(items, desc=f"maps ({mode})", unit="img", disable=not progress):
        name = str(img_src) if isinstance(img_src, (str, Path)) else f"pair {n + len(failures)}"
        try:
            img = img_src if isinstance(img_src, Image.Image) else load_image(img_src)
            raw = _load_label(lab_src)
            if n_names is not None:  # a value naming no source class is not this dataset's label map
                check_values(raw, n_names, lab_src if isinstance(lab_src, (str, Path)) else name)
            gt = lut[raw]
            if gt.shape != (img.height, img.width):
                log.info("%s: label map %s resized to the image %dx%d", name, gt.shape, img.width, img.height)
                gt = np.asarray(Image.fromarray(gt).resize(img.size, Image.NEAREST))
        except (ImageError, ValueError, OSError) as e:
            failures.append((name, str(e)))
            continue
        mmap = model.segment(img, mode=mode, **segment_kwargs)
        conf += confusion(gt, mmap.labels, k)
        n += 1
    out = map_metrics(conf, tax.names)
    out.update({"images": n, "mode": mode, "failures": failures})
    if failures:
        log.warning("%d of %d pairs skipped", len(failures), len(items))
    return out


def load_dms_pairs(root: str | Path, split: str | None = None,
                   images: str | Path | None = None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, label map) pairs of the DMS tree at ``root`` and its names in value order.

    Read by :func:`fmmc.data.readers.dms.dms_pairs`, the reader behind ``fmmc eval dms:``, so both see the
    same images: ``split`` picks ``labels/<split>/`` (default ``test`` when present), ``images`` is a folder
    of RGB images (with or without ``<split>/``) when they are not in ``root/images/``. Label maps without
    an image are skipped with a warning. Names come from ``root/taxonomy.json``, else the built-in DMS list.
    """
    from fmmc.data.readers.dms import dms_pairs, taxonomy_names

    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected a DMS folder with labels/ and images/)")
    found = dms_pairs(root, split=split, images=images)
    if found.missing:
        log.warning("%d of %d label maps in %s have no image with the same name in %s (first: %s)",
                    len(found.missing), len(found.missing) + len(found.pairs), found.labels_dir, found.images_dir,
                    found.missing[0].name)
    if not found.pairs:
        raise ValueError(f"{found.labels_dir}: {len(found.missing)} label maps but none has a matching image in "
                         f"{found.images_dir} (DMS images come from Open Images; download them next to the labels, "
                         "or pass the folder holding them)")
    return found.pairs, taxonomy_names(root)
