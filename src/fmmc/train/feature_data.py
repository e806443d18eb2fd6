"""Regions -> what the head trains on: cached vision rows (:class:`FeatureRows`), text embeddings, failures.

    >>> data = head_data(encoder, regions, progress=False)       # doctest: +SKIP
    >>> vis, txt = data.batch(torch.tensor([5, 0, 17]))          # [3, Cv] float32, [3, Ct] or None

The vision stream goes through the feature cache without holding a tensor per region: every region's
cache key is hashed, the regions not cached yet are extracted in
chunks of :data:`EXTRACT_CHUNK` (each chunk's features go to the cache, not to a list), and the rows are
then read from the cache files (:meth:`FeatureRows.from_cache`: in memory under a budget, else per
batch). The rows are the cached bytes, which are the bytes extraction returned, so the head trains on
what :meth:`TwoStreamEncoder.encode_regions <fmmc.model.encoder.TwoStreamEncoder.encode_regions>` gives.
The language stream is that method's, run on the regions whose vision features exist; its embeddings
are computed each run and held in memory (``M x Ct`` floats: 400 MB for 200k regions and a 512-d CLIP
text tower). Without a writable cache (an encoder built with ``use_cache=False``), or with the language
stream alone, ``encode_regions`` runs as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from fmmc.data.records import Region
from fmmc.train.feature_rows import IN_MEMORY_BYTES, FeatureRows, balanced_chunks

EXTRACT_CHUNK = 4096  # regions extracted per call when features are missing: bounds what extraction holds


@dataclass
class HeadData:
    """The rows of one split: row ``j`` is input region ``index[j]``."""

    vis: FeatureRows | None
    txt: torch.Tensor | None  # [M, Ct]
    index: list[int]
    failures: list[tuple[str, str]]  # (region id, message)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return (self.vis.take(idx) if self.vis is not None else None, self.txt[idx] if self.txt is not None else None)

    def passes(self, size: int | None = None) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Every row in order, as (vis, txt) pieces of at most ``size`` rows (:func:`balanced_chunks`)."""
        for s in balanced_chunks(len(self), size):
            vis = None
            if self.vis is not None:
                vis = self.vis.table[s] if self.vis.table is not None else self.vis.take(torch.arange(s.start, s.stop))
            yield vis, None if self.txt is None else self.txt[s]

    @property
    def resident_bytes(self) -> int:
        return self.vis.resident_bytes if self.vis is not None else 0

    def close(self) -> None:
        if self.vis is not None:
            self.vis.close()


def head_data(encoder: Any, regions: Sequence[Region], progress: bool = True,
              budget_bytes: int = IN_MEMORY_BYTES) -> HeadData:
    """``regions`` encoded for head training by ``encoder`` (a :class:`~fmmc.model.encoder.TwoStreamEncoder`)."""
    from fmmc.model.encoder import TwoStreamEncoder

    ex = encoder.extractor
    cache = ex.cache if ex is not None else None
    if cache is None or not cache.writable:
        enc = encoder.encode_regions(regions, progress=progress)
        return HeadData(None if enc.vis is None else FeatureRows.from_tensor(enc.vis), enc.txt, enc.index, enc.failures)
    keys, failed = cached_keys(ex, regions, progress)
    failures = [(regions[i].id, failed[i]) for i in sorted(failed)]  # in region order, as extraction reports them
    ok = [i for i in range(len(regions)) if i not in failed]
    txt = None
    if encoder.text_encoder is not None:
        lang = TwoStreamEncoder("language", None, encoder.describer, encoder.text_encoder, encoder.description_cache)
        enc = lang.encode_regions([regions[i] for i in ok], progress=progress)
        failures += enc.failures
        ok = [ok[j] for j in enc.index]
        txt = enc.txt
    vis = FeatureRows.from_cache(cache, [keys[i] for i in ok], budget_bytes, dim=encoder.vision_dim)
    return HeadData(vis, txt, ok, failures)


def cached_keys(ex: Any, regions: Sequence[Region], progress: bool) -> tuple[list[str], dict[int, str]]:
    """Every region's cache key, with the missing features extracted into ``ex.cache``: (keys, failures by
    region position, with extraction's messages). A failed region's key is ``""``."""
    # one thread: small files do not release the GIL for long, and keys made in worker threads scatter over
    # their malloc arenas (measured at 200k regions: 3.3x slower and +350 MB, against 2.9 s and +37 MB)
    keys = [_key_of(r) for r in tqdm(regions, desc="keys", unit="region", disable=not progress, dynamic_ncols=True)]
    # unreadable regions go to extraction too: it reports them, and an uncached set is batched as before
    todo = [i for i, k in enumerate(keys) if not k or k not in ex.cache]
    failed: dict[int, str] = {}
    for c in range(0, len(todo), EXTRACT_CHUNK):
        chunk = todo[c : c + EXTRACT_CHUNK]
        _, done, fail = ex.extract_regions([regions[i] for i in chunk], progress=progress)
        lost = sorted(set(range(len(chunk))) - set(done))  # one failure each, in order (extract_regions)
        failed.update({chunk[j]: msg for j, (_, msg) in zip(lost, fail)})
        for j in done:
            i = chunk[j]
            keys[i] = keys[i] or _key_of(regions[i])  # a file that could not be read a moment ago
            if not keys[i]:
                failed[i] = "its image or mask file could not be read to compute its cache key; check the file"
            elif keys[i] not in ex.cache:
                raise RuntimeError(f"feature cache {ex.cache.dir}: the feature of region {regions[i].id!r} was "
                                   "extracted but not stored; check the disk, or set --cache-dir")
    return keys, failed


def _key_of(region: Region) -> str:
    """The region's cache key, or "" when its files cannot be read (extraction then says why)."""
    from fmmc.vision.extractor import region_key

    try:
        return region_key(region)
    except (ValueError, OSError):
        return ""
