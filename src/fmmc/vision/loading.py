"""The feature path's input pipeline: regions -> (cache key, pixels, grid cells), a batch at a time.

Each batch is loaded by :func:`load_chunk`: the cache key (sha256 of the image and mask bytes), the
decode (the one region rule, :func:`fmmc.data.regions.load_region`), the resize and normalisation
(:func:`to_pixels`) and the mask's grid cells. Regions of one photo in a batch share one decode.

Where it runs (:func:`iter_batches`):

* ``num_workers=0``: in this process, the next batch in a background thread while the model runs;
* ``num_workers=N``: in N worker processes (a torch ``DataLoader``, two batches ahead per worker), which
  scales decoding with cores. Order is kept, and every worker runs the same code, so features are
  identical for any worker count. Pixels come back in shared memory; on a CUDA device each batch is pinned
  and copied with ``non_blocking``, so the copy overlaps with compute. A worker that dies (killed, out of memory) stops the run with a
  ``RuntimeError`` saying so, never a hang.

Decoders: ``pil`` (the one decode rule: full-size decode), ``pil-draft`` (JPEG DCT-scaled decoding to
at least the model's input size: 2-4x faster on large photos; pixels differ slightly, so it is part of the
cache key, and tests bound the difference) or ``torchvision-gpu`` (workers read JPEG bytes and masks only;
the batch is decoded and resized on the model's device, nvJPEG on CUDA: :mod:`fmmc.vision.tv_decode`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from fmmc.data.imageio import DEFAULT_MAX_PIXELS, ImageError, file_sha256, image_size
from fmmc.data.records import Region
from fmmc.data.regions import load_region, region_mask, region_threshold
from fmmc.vision.pooling import mask_to_grid
from fmmc.vision.protocol import Preprocess

log = logging.getLogger(__name__)

# decoder -> decode rule (fmmc.data.regions.DECODE_RULES); torchvision-gpu: fmmc.vision.tv_decode
DECODERS = {"pil": "full", "pil-draft": "draft", "torchvision-gpu": "torchvision"}
WORKER_TIMEOUT = 600.0  # seconds without a batch from a worker before the run stops

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS,
             "box": Image.BOX, "hamming": Image.HAMMING}  # every PIL filter a preprocessor_config.json may name


@dataclass
class Prepared:
    pixels: torch.Tensor  # [3, H, W] normalised; with ``encoded``: the JPEG file's bytes (1-D uint8)
    cells: torch.Tensor  # [h, w] bool
    encoded: bool = False  # decoder torchvision-gpu: decoded on the model's device (fmmc.vision.tv_decode)


class Loaded(NamedTuple):
    key: str  # the region's cache key ("" when it failed)
    prepared: Prepared | None  # None: cached, or failed
    error: str | None


def to_pixels(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Resize (no crop) and normalise one RGB image -> [3, H, W] float32."""
    h, w = pre.image_size
    if pre.resample not in _RESAMPLE:
        raise ValueError(f"preprocess.resample={pre.resample!r}: choose one of {sorted(_RESAMPLE)}")
    if image.size != (w, h):
        image = image.resize((w, h), _RESAMPLE[pre.resample])
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def region_key(region: Region) -> str:
    """Content hash of the image bytes + mask bytes (or box): same pixels, same key, wherever the file is."""
    h = hashlib.sha256(file_sha256(region.image).encode())
    if region.mask is not None:
        h.update(b"mask:" + file_sha256(region.mask).encode())
        if region_threshold(region) is not None:
            h.update(f"t{region_threshold(region)}".encode())
    elif region.box is not None:
        h.update(("box:" + ",".join(str(v) for v in region.box)).encode())
    return h.hexdigest()


@dataclass
class RegionLoader:
    """What a worker needs to load regions (small and picklable: no model, no cache handle)."""

    pre: Preprocess
    min_coverage: float
    decoder: str = "pil"
    cached: frozenset[str] = frozenset()  # keys already in the cache: not decoded

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r}: choose one of {sorted(DECODERS)}")

    def load(self, region: Region, decoded: dict[Any, tuple[Image.Image, torch.Tensor]] | None = None,
             in_cache: Any = None) -> Loaded:
        """A region's cache key and inputs (``prepared`` None when cached), or the error that stops it."""
        try:
            key = region_key(region)
            if key in self.cached or (in_cache is not None and in_cache(key)):
                return Loaded(key, None, None)
            seen = decoded.get(region.image) if decoded is not None else None
            if self.decoder == "torchvision-gpu" and (seen is None or seen[0] is None):
                jpeg = self._jpeg(region, decoded, seen)
                if jpeg is not None:
                    return Loaded(key, jpeg, None)
            draft = (self.pre.image_size[1], self.pre.image_size[0]) if self.decoder == "pil-draft" else None
            img, mask = load_region(region, image=None if seen is None else seen[0], draft=draft)
            pixels = to_pixels(img, self.pre) if seen is None else seen[1]
            if decoded is not None and seen is None:
                decoded[region.image] = (img, pixels)
            return Loaded(key, Prepared(pixels, mask_to_grid(mask, self.pre.grid, self.min_coverage)), None)
        except (ImageError, ValueError, OSError) as e:
            return Loaded("", None, str(e))

    def _jpeg(self, region: Region, decoded: dict[Any, Any] | None, seen: Any) -> Prepared | None:
        """Decoder torchvision-gpu: the JPEG's bytes and the mask's cells (None: not a JPEG, decode here)."""
        from fmmc.vision.tv_decode import read_jpeg

        data = seen[1] if seen is not None else read_jpeg(region.image)
        if data is None:
            return None
        w, h = image_size(region.image)
        if w * h > DEFAULT_MAX_PIXELS:
            raise ImageError(region.image, f"image is {w}x{h} = {w * h:,} pixels, over the limit of "
                             f"{DEFAULT_MAX_PIXELS:,}", "downscale it")
        if decoded is not None and seen is None:
            decoded[region.image] = (None, data)
        cells = mask_to_grid(region_mask(region, (w, h)), self.pre.grid, self.min_coverage)
        return Prepared(data, cells, encoded=True)

    def load_chunk(self, regions: Sequence[Region], idx: list[int], in_cache: Any = None) -> list[Loaded]:
        decoded: dict[Any, tuple[Image.Image, torch.Tensor]] = {}
        return [self.load(regions[i], decoded, in_cache) for i in idx]


class _Chunks(torch.utils.data.Dataset):
    def __init__(self, loader: RegionLoader, regions: Sequence[Region], chunks: list[list[int]]) -> None:
        self.loader, self.regions, self.chunks = loader, list(regions), chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> list[Loaded]:
        return self.loader.load_chunk(self.regions, self.chunks[k])


def _identity(batch: Any) -> Any:
    return batch


def default_workers(device: torch.device) -> int:
    """Decoding processes when none are asked for: with a GPU, the usable cores (up to 8), which a fast
    forward needs; on a CPU, whose cores the forward itself uses, 0 up to 2 cores and a quarter of them
    (up to 4) beyond."""
    from fmmc.core.threads import available_cpus

    cpus = available_cpus()
    if device.type == "cuda":
        return min(8, cpus)
    return 0 if cpus <= 2 else min(4, cpus // 4 or 1)


def iter_batches(loader: RegionLoader, regions: Sequence[Region], batch_size: int, num_workers: int,
                 prefetch: bool = True, in_cache: Any = None) -> Iterator[tuple[list[int], list[Loaded]]]:
    """(indices, loaded regions) per batch of ``batch_size``, in order (see the module docstring)."""
    chunks = [list(range(i, min(i + batch_size, len(regions)))) for i in range(0, len(regions), batch_size)]
    if num_workers > 0 and len(chunks) > 1:
        yield from _in_workers(loader, regions, chunks, num_workers)
        return
    if not prefetch or len(chunks) <= 1:
        for idx in chunks:
            yield idx, loader.load_chunk(regions, idx, in_cache)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmmc-load") as pool:
        nxt = pool.submit(loader.load_chunk, regions, chunks[0], in_cache)
        for k, idx in enumerate(chunks):
            cur = nxt.result()
            if k + 1 < len(chunks):
                nxt = pool.submit(loader.load_chunk, regions, chunks[k + 1], in_cache)
            yield idx, cur


def _in_workers(loader: RegionLoader, regions: Sequence[Region], chunks: list[list[int]],
                num_workers: int) -> Iterator[tuple[list[int], list[Loaded]]]:
    dl = torch.utils.data.DataLoader(
        _Chunks(loader, regions, chunks), batch_size=None, shuffle=False, num_workers=min(num_workers, len(chunks)),
        collate_fn=_identity, prefetch_factor=2, timeout=WORKER_TIMEOUT,
        multiprocessing_context="fork" if hasattr(os, "fork") else None)
    it = iter(dl)
    try:
        for k, batch in enumerate(it):
            yield chunks[k], batch
    except (ConnectionError, EOFError) as e:
        # A worker that dies (SIGKILL, the OOM killer) right after queueing a batch: the batch's tensors are
        # shared by file descriptor, fetched from that worker as the batch is unpickled here, and the fetch
        # fails before torch's SIGCHLD handler has said which worker died (seen in CI).
        raise RuntimeError(f"DataLoader worker exited before its batch was received ({type(e).__name__}: {e})") from e
    finally:
        # Reap and unregister the workers now, whatever ended the loop. torch leaves a dead worker registered
        # with its SIGCHLD handler while the iterator lives, and the error's traceback keeps it alive: the
        # next child process to exit anywhere in this process would then raise "DataLoader worker is
        # killed" at a random point (measured: inside pytest's report of the test that caught the error).
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def worker_stopped(e: BaseException) -> RuntimeError | None:
    """The one-line error for a decoding worker that died (torch reports it from the next batch, or from
    its SIGCHLD handler at any point of the main thread), or None when ``e`` is something else."""
    text = str(e)
    if not isinstance(e, RuntimeError) or "DataLoader worker" not in text:
        return None
    return RuntimeError(f"a decoding worker stopped ({text.splitlines()[0].strip()}); rerun with --num-workers 0 to "
                        "decode in this process, or with fewer workers if memory is short")
