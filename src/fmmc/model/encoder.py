"""Both streams together: regions -> (vision features, text embeddings), shared by training and inference.

Vision: backbone + mask pooling (fmmc.vision), cached on disk. Language: describer -> text encoder
(fmmc.language), descriptions cached in SQLite. Either stream can be off (``streams``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fmmc.data.records import Region

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    vis: torch.Tensor | None  # [M, Cv]
    txt: torch.Tensor | None  # [M, Ct]
    index: list[int]  # which input regions these M rows are
    failures: list[tuple[str, str]]  # (region id, message)
    descriptions: list[str | None]


class TwoStreamEncoder:
    def __init__(self, streams: str, extractor: Any | None, describer: Any | None, text_encoder: Any | None,
                 description_cache: Any | None = None) -> None:
        self.streams = streams
        self.extractor = extractor if streams != "language" else None
        self.describer = describer if streams != "vision" else None
        self.text_encoder = text_encoder if streams != "vision" else None
        self.description_cache = description_cache

    @property
    def vision_dim(self) -> int:
        return int(self.extractor.backbone.feature_dim) if self.extractor is not None else 0

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.dim) if self.text_encoder is not None else 0

    def encode_regions(self, regions: Sequence[Region], progress: bool = True) -> Encoded:
        n = len(regions)
        failures: list[tuple[str, str]] = []
        ok = set(range(n))
        vis_rows: dict[int, torch.Tensor] = {}
        if self.extractor is not None:
            feats, idx, fail = self.extractor.extract_regions(regions, progress=progress)
            failures += fail
            ok &= set(idx)
            vis_rows = dict(zip(idx, feats))
        descriptions: list[str | None] = [None] * n
        if self.describer is not None:
            from fmmc.language.describers import describe_regions

            todo = sorted(ok)
            # metadata/none descriptions are read, not generated: caching them could serve stale text
            cache = None if getattr(self.describer, "spec", "") in ("metadata", "none") else self.description_cache
            descs, fail = describe_regions([regions[i] for i in todo], self.describer, cache, progress=progress)
            failures += fail
            for i, d in zip(todo, descs):
                descriptions[i] = d
                if d is None:
                    ok.discard(i)
        index = sorted(ok)
        vis = torch.stack([vis_rows[i] for i in index]) if self.extractor is not None and index else None
        txt = None
        if self.text_encoder is not None and index:
            txt = self.text_encoder.encode([descriptions[i] or "" for i in index])
        if self.extractor is not None and not index:
            vis = torch.empty(0, self.vision_dim)
        if self.text_encoder is not None and not index:
            txt = torch.empty(0, self.text_dim)
        return Encoded(vis, txt, index, failures, [descriptions[i] for i in index])

    def encode_arrays(self, image: Image.Image, masks: Sequence[np.ndarray | None],
                      descriptions: Sequence[str | None] | None = None) -> Encoded:
        """One in-memory image with one or more masks (None = whole image)."""
        vis = self.extractor.extract_arrays([(image, m) for m in masks]) if self.extractor is not None else None
        txt = None
        descs: list[str | None] = list(descriptions) if descriptions is not None else [None] * len(masks)
        if self.text_encoder is not None:
            for k, m in enumerate(masks):
                if descs[k] is None:
                    if self.describer is None:
                        raise ValueError("the language stream needs a description: pass description=... or a describer")
                    descs[k] = self.describer.describe(image, m, None)
            txt = self.text_encoder.encode([d or "" for d in descs])
        return Encoded(vis, txt, list(range(len(masks))), [], descs)


def build_encoder(streams: str, backbone: str | torch.nn.Module | None, text_encoder: str | None, describer: str | None,
                  image_size: int | None = None, pooling: str = "max", min_coverage: float = 0.5,
                  dtype: str = "fp32", device: str = "cpu", batch_size: int = 8, cache_dir: str | Path | None = None,
                  use_cache: bool = True, compile: bool = False) -> TwoStreamEncoder:
    """Build the two streams from specs (through the registry). ``compile`` = torch.compile the backbone."""
    from fmmc.core.registry import build
    from fmmc.vision.cache import FeatureCache, default_cache_dir, namespace_of
    from fmmc.vision.extractor import FeatureExtractor

    extractor = None
    if streams != "language":
        bb = build("backbone", backbone, image_size=image_size) if isinstance(backbone, str) else backbone
        extractor = FeatureExtractor(bb, pooling=pooling, min_coverage=min_coverage, batch_size=batch_size, compile=compile,
                                     dtype=dtype, device=device)
        if use_cache:
            settings = extractor.settings()
            root = Path(cache_dir) / "features" if cache_dir else default_cache_dir()
            extractor.cache = FeatureCache(root, namespace_of(settings), settings)
    desc = tenc = dcache = None
    if streams != "vision":
        tenc = build("text-encoder", text_encoder)
        desc = build("describer", describer or "none")
        if use_cache:
            from fmmc.language.cache import DescriptionCache

            root = Path(cache_dir) if cache_dir else default_cache_dir().parent
            root.mkdir(parents=True, exist_ok=True)
            dcache = DescriptionCache(root / "descriptions.sqlite")
    return TwoStreamEncoder(streams, extractor, desc, tenc, dcache)
