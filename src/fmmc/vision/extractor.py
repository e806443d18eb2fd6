"""Images + masks on disk -> pooled vision features, batched, prefetched and cached.

    >>> from fmmc.core.registry import build
    >>> ex = FeatureExtractor(build("backbone", "builtin:efficientnet-lite0"), pooling="max")   # doctest: +SKIP
    >>> feats, ok, failed = ex.extract_regions(regions)                                          # doctest: +SKIP

Decoding and resizing the next batch runs in a background thread while the model runs on this one.
Regions become pixels by the one region rule (:mod:`fmmc.data.regions`); every path to a feature, from
files (:meth:`FeatureExtractor.extract_regions`) or from memory (:meth:`FeatureExtractor.extract_arrays`,
:meth:`FeatureExtractor.feature_map`), runs the same :func:`to_pixels` and :meth:`FeatureExtractor.forward`.

Richer features (each a :class:`~fmmc.model.config.FeatureSpec` field and part of the cache key; the
defaults give the paper's feature unchanged): ``pooling`` joins parts with ``+`` (:mod:`fmmc.vision.pooling`);
``layers=N`` pools each of the backbone's last N layers (:mod:`fmmc.vision.protocol`) inside the mask at its
own grid; ``scales`` and ``flip_tta`` are *views* of the image: ``scales="1,1.5"`` runs the backbone at
``image_size * s`` too (rounded to the patch multiple, resampled from the base-size pixels on the device, so
every decoder and fine-tuning share it) and ``flip_tta`` on the mirrored image with its mirrored mask. Parts
and layers are concatenated, views averaged: a feature is ``[layer 1: parts, ..., last layer: parts]``,
``len(parts) * sum(layer widths)`` wide (:attr:`FeatureExtractor.feature_dim`), whatever the scales and flips.
Averaging keeps views of one image in one space (a multi-scale descriptor as in image retrieval) and the
head's width independent of the number of views.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from fmmc.core.device import resolve_device
from fmmc.data.records import Region
from fmmc.data.regions import MASK_RULE
from fmmc.vision.cache import FeatureCache
from fmmc.vision.fingerprint import weights_fingerprint
from fmmc.vision.loading import (
    DECODERS,
    Loaded,
    Prepared,
    RegionLoader,
    default_workers,
    iter_batches,
    region_key,
    to_pixels,
    worker_stopped,
)
from fmmc.vision.pooling import cells_on_grid, mask_to_grid, pool, pooling_parts
from fmmc.vision.precision import DTYPES, resolve_dtype
from fmmc.vision.protocol import (
    BackboneOutput,
    Preprocess,
    as_output,
    layer_dims,
    merge_outputs,
    parse_scales,
    scaled_size,
    trim_output,
)

__all__ = ["FeatureExtractor", "Loaded", "Prepared", "region_key", "to_pixels"]

log = logging.getLogger(__name__)

CPU_PIXELS_PER_CALL = 4 * 224 * 224  # default forward_batch on CPU: see FeatureExtractor


POOL_CHUNK = 16  # masks pooled at once: bounds memory at 16 x C x h x w floats


class FeatureExtractor:
    def __init__(
        self,
        backbone: torch.nn.Module,
        pooling: str = "max",
        min_coverage: float = 0.5,
        batch_size: int = 8,
        dtype: str = "fp32",
        device: str = "cpu",
        cache: FeatureCache | None = None,
        prefetch: bool = True,
        compile: bool = False,
        forward_batch: int | None = None,
        channels_last: bool | None = None,
        num_workers: int | None = None,
        decoder: str = "pil",
        frozen: bool = True,
        layers: int = 1,
        scales: str | float | Sequence[float] = "1",
        flip_tta: bool = False,
    ) -> None:
        """``batch_size`` regions are loaded (in a prefetch thread), cached and pooled together; the backbone
        sees ``forward_batch`` images per call during inference. Default on CPU: about 200k input pixels per
        call (4 images at 224, 1 at 320 or 448), where activations stay in cache; measured on 2 cores, that is
        2.7x faster than 16 per call for EfficientNet-Lite0 at 320 and 1.1x faster than 4 for DINOv2-B/14 at
        448, while small inputs (112) keep full batches. Elsewhere (GPU): ``batch_size``. Training
        (``mode=full``, gradients on) always runs the whole batch, so batch norm sees it.

        ``channels_last`` (default: for conv nets, i.e. backbones with more than one Conv2d) stores inputs
        and conv weights NHWC, which oneDNN's depthwise convolutions prefer (EfficientNet-Lite0: 1.35x).

        ``compile=True`` runs inference forwards through ``torch.compile`` (inductor): 1.1x for DINOv2-B on
        CPU after a one-off compile of 5-30 s, so it pays off from a few hundred images. Every compiled call
        gets a full ``forward_batch`` (short ones are padded), so it compiles once.

        ``dtype`` (:mod:`fmmc.vision.precision`): ``fp32``, ``bf16``/``fp16`` (a ``frozen`` backbone's weights
        are cast; one being fine-tuned runs under autocast) or ``auto`` (bf16 where the device has native
        bf16, else fp32; :attr:`dtype_reason` says why). ``num_workers`` decoding processes (None: see
        :func:`fmmc.vision.loading.default_workers`) and ``decoder`` (``pil`` | ``pil-draft`` | ``torchvision-gpu``):
        :mod:`fmmc.vision.loading`. ``pooling``, ``layers``, ``scales``, ``flip_tta``: the module docstring.
        """
        self.device = torch.device(resolve_device(device))  # "auto", and a clear error for an absent GPU
        dtype, self.dtype_reason = resolve_dtype(dtype, self.device)
        if decoder not in DECODERS:
            raise ValueError(f"decoder {decoder!r}: choose one of {sorted(DECODERS)}")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers={num_workers}: use 0 (decode in this process) or more")
        self.num_workers = default_workers(self.device) if num_workers is None else num_workers
        self.decoder = decoder
        self.frozen = frozen
        self._cast = frozen and dtype != "fp32"
        self.backbone = backbone.to(self.device)
        self._fingerprint: str | None = None
        if self._cast:
            self._fingerprint = weights_fingerprint(self.backbone)  # of the weights as loaded, before the cast
            self.backbone.to(DTYPES[dtype])
        if dtype != "fp32":
            log.info("backbone runs in %s (%s%s)", dtype, self.dtype_reason,
                     ", weights cast" if self._cast else ", autocast while fine-tuning")
        if channels_last is None:
            channels_last = sum(isinstance(m, torch.nn.Conv2d) for m in backbone.modules()) > 1
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self._compiled = torch.compile(self.backbone, dynamic=False) if compile else None
        self.pre: Preprocess = backbone.preprocess
        if decoder == "torchvision-gpu":
            from fmmc.vision.tv_decode import check_available

            check_available(self.pre)  # before any work
        parts = pooling_parts(pooling)
        self.pooling = "+".join(parts)
        self._said_no_cls = False  # pooling=cls on a map without a global token: warned once (pool_cells)
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers={layers!r}: give how many of the backbone's last layers to pool, 1 or more")
        self.layers = layers
        self.scales = parse_scales(scales)
        self.flip_tta = bool(flip_tta)
        self.feature_dim = len(parts) * sum(layer_dims(backbone, layers))
        self._sizes = [scaled_size(self.pre, s) for s in self.scales]
        self.min_coverage = min_coverage
        self.batch_size = batch_size
        if forward_batch is None:
            h, w = self.pre.image_size
            forward_batch = CPU_PIXELS_PER_CALL // (h * w) if self.device.type == "cpu" else batch_size
        self.forward_batch = min(batch_size, max(1, forward_batch))
        self.dtype = dtype
        self.cache = cache
        self.prefetch = prefetch

    # --- settings that change a feature (the cache namespace) ---
    def settings(self) -> dict[str, Any]:
        """What decides a feature: the backbone (spec and a fingerprint of its weights), its preprocessing,
        pooling, layers, scales and flip TTA, the mask-to-grid rule, dtype, and the region rule's decode and
        mask rules."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.backbone)
        return {
            "backbone": getattr(self.backbone, "spec", type(self.backbone).__name__),
            "weights": self._fingerprint,
            "preprocess": {k: v for k, v in self.pre.to_dict().items() if k != "source"},  # values, not provenance
            "pooling": self.pooling,
            "min_coverage": self.min_coverage,
            "dtype": self.dtype,
            "decode": DECODERS[self.decoder],
            "mask_rule": MASK_RULE,
            # only when not the default, so the default feature keeps its cache namespace
            **({"layers": self.layers} if self.layers != 1 else {}),
            **({"scales": list(self.scales)} if self.scales != (1.0,) else {}),
            **({"flip_tta": True} if self.flip_tta else {}),
        }

    def prepare(self, image: Image.Image, mask: np.ndarray | None) -> Prepared:
        return Prepared(to_pixels(image, self.pre), mask_to_grid(mask, self.pre.grid, self.min_coverage))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The one backbone forward: pixels ``[N, 3, H, W]`` -> (feature map ``[N, C, h, w]``, global token
        ``[N, C]`` or None), in ``forward_batch`` chunks during inference, under the configured dtype."""
        out = self._run(pixels, self.pre.grid, 1)
        return out.feature_map, out.cls

    def _run(self, pixels: torch.Tensor, grid: tuple[int, int], layers: int) -> BackboneOutput:
        """:meth:`forward` of pixels whose last feature map has ``grid``, with the last ``layers`` layers."""
        pixels = pixels.to(self.device, non_blocking=True)
        if self._cast:
            pixels = pixels.to(DTYPES[self.dtype])
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast(self.device.type, dtype=DTYPES[self.dtype]) if self.dtype != "fp32" and not self._cast
               else contextlib.nullcontext())
        n = pixels.shape[0]
        inference = not torch.is_grad_enabled()
        step = self.forward_batch if inference else n
        forward = self._compiled if self._compiled is not None and inference else self.backbone
        outs = []
        with ctx:
            # the whole batch in one call needs no loop, so a traced batch size stays free (fmmc.model.onnx_export)
            for chunk in (pixels,) if n <= step else (pixels[i : i + step] for i in range(0, n, step)):
                k = chunk.shape[0]
                if forward is self._compiled and k < step:  # one static shape: no recompile for a short chunk
                    chunk = torch.cat([chunk, chunk.new_zeros((step - k, *chunk.shape[1:]))])
                outs.append(trim_output(as_output(forward(chunk) if layers == 1 else forward(chunk, layers=layers)), k))
        out = merge_outputs(outs)
        if tuple(out.feature_map.shape[-2:]) != tuple(grid):
            raise RuntimeError(f"feature grid {tuple(out.feature_map.shape[-2:])} != expected {tuple(grid)}; "
                               "set the backbone's preprocess.patch_size to its real stride")
        if len(out.earlier) != layers - 1:
            raise RuntimeError(f"backbone {type(self.backbone).__name__} gave {len(out.earlier) + 1} layers for "
                               f"layers={layers}")
        return out

    def pooled(self, pixels: torch.Tensor, cells: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone forward + pooling for a batch (differentiable when grads are on): -> [B, feature_dim] float32,
        over every layer, scale and flip (module docstring).

        ``index`` (optional, [B] long) says which row of ``pixels`` each of the B ``cells`` masks belongs to,
        so regions of one image share one forward pass; without it, mask ``i`` goes with image ``i``.
        """
        feats = []
        for flip in (False, True) if self.flip_tta else (False,):
            px, cl = (pixels.flip(-1), cells.flip(-1)) if flip else (pixels, cells)
            for h, w in self._sizes:
                out = self._run(self._resized(px, (h, w)), (h // self.pre.patch_size, w // self.pre.patch_size),
                                self.layers)
                parts = [self.pool_cells(o.feature_map, o.cls,
                                         cells_on_grid(cl, o.feature_map.shape[-2:], self.min_coverage), index)
                         for o in (*out.earlier, out)]  # oldest layer first
                feats.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
        return feats[0] if len(feats) == 1 else torch.stack(feats).mean(dim=0)

    def _resized(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Base-size pixels at another input size (a scale view), resampled on the device."""
        if tuple(size) == tuple(pixels.shape[-2:]):
            return pixels
        mode = "bilinear" if self.pre.resample == "bilinear" else "bicubic"
        return torch.nn.functional.interpolate(pixels.to(self.device, non_blocking=True).float(), size=tuple(size),
                                               mode=mode, antialias=True, align_corners=False)

    def pool_cells(self, fmap: torch.Tensor, cls: torch.Tensor | None, cells: torch.Tensor,
                   index: torch.Tensor | None = None) -> torch.Tensor:
        """Pool feature maps over cell masks; ``index`` maps each mask to its feature-map row. Masks are
        pooled ``POOL_CHUNK`` at a time, so many masks of one image never expand the map all at once."""
        if cls is None and "cls" in self.pooling.split("+") and not self._said_no_cls:
            self._said_no_cls = True
            log.warning("pooling=%s: this backbone (or layer) has no global token, so its 'cls' part is the global "
                        "mean of the feature map; say pooling=mean to make "
                        "that explicit", self.pooling)
        if index is None:
            return pool(fmap, cells, self.pooling, cls)
        index = index.to(fmap.device)
        parts = []
        for s in range(0, len(index), POOL_CHUNK):
            ix = index[s : s + POOL_CHUNK]
            parts.append(pool(fmap.index_select(0, ix), cells[s : s + POOL_CHUNK], self.pooling,
                              None if cls is None else cls.index_select(0, ix)))
        return torch.cat(parts)

    @torch.inference_mode()
    def feature_map(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One image's (feature map ``[1, C, h, w]``, global token ``[1, C]`` or None), float32."""
        self.backbone.eval()
        return self.forward(to_pixels(image, self.pre)[None])

    @torch.inference_mode()
    def extract_arrays(self, items: Sequence[tuple[Image.Image, np.ndarray | None]]) -> torch.Tensor:
        """In-memory images (+ masks) -> [N, C]; no cache. All masks of one image object share one forward."""
        self.backbone.eval()
        if not items:
            return torch.empty(0, self.feature_dim)
        row_of: dict[int, int] = {}
        images: list[Image.Image] = []
        index: list[int] = []
        for img, _ in items:
            if id(img) not in row_of:
                row_of[id(img)] = len(images)
                images.append(img)
            index.append(row_of[id(img)])
        cells = torch.stack([mask_to_grid(m, self.pre.grid, self.min_coverage) for _, m in items])
        rows = torch.tensor(index, dtype=torch.long)
        feats = torch.empty(len(items), self.feature_dim)
        for i in range(0, len(images), self.batch_size):
            sel = ((rows >= i) & (rows < i + self.batch_size)).nonzero().flatten()
            pixels = torch.stack([to_pixels(im, self.pre) for im in images[i : i + self.batch_size]])
            feats[sel] = self.pooled(pixels, cells[sel], rows[sel] - i).cpu()
        return feats

    @torch.inference_mode()
    def cell_features(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """Every cell of the base grid as a one-cell region, pooled as a region is: -> ``[h * w, feature_dim]``
        (row-major) and the grid ``(h, w)``; what grid-mode material maps classify."""
        if "cls" in self.pooling.split("+"):
            raise ValueError(f"grid mode needs a model trained with pooling=max or mean (this one, pooling="
                             f"{self.pooling}, pools the global token, which has no per-patch equivalent); use mode='sam'")
        self.backbone.eval()
        h, w = self.pre.grid
        pixels = to_pixels(image, self.pre)[None]
        if self.pooling in ("max", "mean") and self.layers == 1 and self._sizes == [self.pre.image_size] \
                and not self.flip_tta:  # a one-cell region pools to the cell itself
            fmap, _ = self.forward(pixels)
            return fmap[0].reshape(fmap.shape[1], h * w).T, (h, w)
        cells = torch.eye(h * w, dtype=torch.bool).reshape(h * w, h, w)
        return self.pooled(pixels, cells, torch.zeros(h * w, dtype=torch.long)).cpu(), (h, w)

    def region_loader(self, cached: frozenset[str] = frozenset()) -> RegionLoader:
        """What decoding workers need (no model, no cache handle): :mod:`fmmc.vision.loading`."""
        return RegionLoader(self.pre, self.min_coverage, self.decoder, cached)

    def load(self, region: Region, decoded: dict[Any, tuple[Image.Image, torch.Tensor]] | None = None) -> Loaded:
        """A region's cache key and inputs (``prepared`` None when cached), or the error that stops it.

        ``decoded`` (image path -> (image, pixels)) lets regions of one image share one decode and one
        pixel tensor, and so one forward pass (see :meth:`extract_regions`).
        """
        return self.region_loader().load(region, decoded, self._in_cache)

    def _in_cache(self, key: str) -> bool:
        return self.cache is not None and key in self.cache

    def extract_regions(
        self, regions: Sequence[Region], progress: bool = True, desc: str = "features"
    ) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
        """Features for ``regions`` -> (features [M, C] for the M that worked, their indices, failures).

        Cached vectors are reused; new ones are added to the cache. A bad image or mask is skipped and
        reported as ``(region.id, message)``; finished work is kept in the cache.
        """
        self.backbone.eval()
        results: dict[int, torch.Tensor] = {}
        failures: list[tuple[str, str]] = []
        bar = tqdm(total=len(regions), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
        try:
            for batch_idx, loaded in self._batches(regions):
                todo = []
                for i, (key, prep, err) in zip(batch_idx, loaded, strict=True):
                    if err is not None:
                        failures.append((regions[i].id, err))
                    elif prep is None:
                        results[i] = self.cache.get(key)  # type: ignore[union-attr]
                    else:
                        todo.append((i, key, prep))
                if any(p.encoded for _, _, p in todo):
                    todo = self._decode_on_device(todo, regions, failures)
                if todo:
                    # regions of one image share its pixel tensor (see load): one forward pass per image
                    row_of: dict[int, int] = {}
                    pixels, index = [], []
                    for _, _, p in todo:
                        if id(p.pixels) not in row_of:
                            row_of[id(p.pixels)] = len(pixels)
                            pixels.append(p.pixels)
                        index.append(row_of[id(p.pixels)])
                    batch = torch.stack(pixels)
                    if self.device.type == "cuda" and not batch.is_cuda:  # page-locked: the copy overlaps compute
                        batch = batch.pin_memory()
                    with torch.inference_mode():
                        feats = self.pooled(batch, torch.stack([p.cells for _, _, p in todo]),
                                            _index(index, len(pixels))).cpu()
                    for (i, key, _), f in zip(todo, feats):
                        results[i] = f
                        if self.cache is not None:
                            self.cache.put(key, f)
                    if self.cache is not None:
                        self.cache.commit()  # durable per batch: a killed run redoes at most this one
                bar.update(len(batch_idx))
        except RuntimeError as e:
            stopped = worker_stopped(e)
            if stopped is None:
                raise
            raise stopped from e
        finally:
            if self.cache is not None:
                self.cache.commit()  # what finished before a failure is kept
        bar.close()
        if self.cache is not None:
            self.cache.compact()
        ok = sorted(results)
        feats = torch.stack([results[i] for i in ok]) if ok else torch.empty(0, self.feature_dim)
        if failures:
            shown = "; ".join(f"{rid}: {msg}" for rid, msg in failures[:3])
            log.warning("%d of %d regions skipped (bad image or mask): %s%s", len(failures), len(regions), shown,
                        f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
        return feats, ok, failures

    def _decode_on_device(self, todo: list[tuple[int, str, Prepared]], regions: Sequence[Region],
                          failures: list[tuple[str, str]]) -> list[tuple[int, str, Prepared]]:
        """Decoder torchvision-gpu: the batch's JPEG bytes -> pixels on the device (one call per batch);
        the rest of the batch (non-JPEGs, decoded by the one rule in the worker) joins it there."""
        from fmmc.vision.tv_decode import decode

        jpegs = {id(p.pixels): p.pixels for _, _, p in todo if p.encoded}
        out = dict(zip(jpegs, decode(list(jpegs.values()), self.pre, self.device), strict=True))
        kept = []
        for i, key, p in todo:
            px = out.get(id(p.pixels), p.pixels) if p.encoded else p.pixels
            if isinstance(px, str):
                failures.append((regions[i].id, f"{regions[i].image}: {px}"))
                continue
            kept.append((i, key, Prepared(px, p.cells)))
        shared: dict[int, torch.Tensor] = {}  # one device copy per CPU tensor: regions of a photo share it
        return [(i, k, p if p.pixels.device.type == self.device.type else
                 Prepared(shared.setdefault(id(p.pixels), p.pixels.to(self.device)), p.cells)) for i, k, p in kept]

    def _batches(self, regions: Sequence[Region]) -> Iterator[tuple[list[int], list[Loaded]]]:
        workers = self.num_workers
        cached = self.cache.keys() if self.cache is not None and workers > 0 else frozenset()
        return iter_batches(self.region_loader(cached), regions, self.batch_size, workers, prefetch=self.prefetch,
                            in_cache=self._in_cache)


def _index(index: list[int], rows: int) -> torch.Tensor | None:
    """The mask -> image row map for :meth:`FeatureExtractor.pooled`; None when it is the identity."""
    return None if index == list(range(rows)) else torch.tensor(index, dtype=torch.long)
