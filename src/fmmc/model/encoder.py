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
from fmmc.model.config import FeatureSpec

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
        return int(self.extractor.feature_dim) if self.extractor is not None else 0

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.dim) if self.text_encoder is not None else 0

    def encode_regions(self, regions: Sequence[Region], progress: bool = True,
                       descriptions: Sequence[str | None] | None = None) -> Encoded:
        """Both streams of dataset regions; ``descriptions`` (aligned with ``regions``): language-stream texts
        given by the caller, used as they are; the describer writes the others (None)."""
        n = len(regions)
        if descriptions is not None and len(descriptions) != n:
            raise ValueError(f"encode_regions: {len(descriptions)} descriptions for {n} regions")
        failures: list[tuple[str, str]] = []
        ok = set(range(n))
        vis_rows: dict[int, torch.Tensor] = {}
        if self.extractor is not None:
            feats, idx, fail = self.extractor.extract_regions(regions, progress=progress)
            failures += fail
            ok &= set(idx)
            vis_rows = dict(zip(idx, feats))
        given = list(descriptions) if descriptions is not None else [None] * n
        texts: list[str | None] = [None] * n
        if self.describer is not None:
            from fmmc.language.describers import describe_regions

            for i in ok:
                texts[i] = given[i]
            todo = [i for i in sorted(ok) if given[i] is None]
            # metadata/none descriptions are read, not generated: caching them could serve stale text
            cache = None if getattr(self.describer, "spec", "") in ("metadata", "none") else self.description_cache
            descs, fail = (describe_regions([regions[i] for i in todo], self.describer, cache, progress=progress)
                           if todo else ([], []))
            failures += fail
            for i, d in zip(todo, descs):
                texts[i] = d
                if d is None:
                    ok.discard(i)
        index = sorted(ok)
        vis = torch.stack([vis_rows[i] for i in index]) if self.extractor is not None and index else None
        txt = None
        if self.text_encoder is not None and index:
            txt = self.text_encoder.encode([texts[i] or "" for i in index])
        if self.extractor is not None and not index:
            vis = torch.empty(0, self.vision_dim)
        if self.text_encoder is not None and not index:
            txt = torch.empty(0, self.text_dim)
        return Encoded(vis, txt, index, failures, [texts[i] for i in index])

    def encode_arrays(self, images: Image.Image | Sequence[Image.Image], masks: Sequence[np.ndarray | None],
                      descriptions: Sequence[str | None] | None = None) -> Encoded:
        """In-memory regions: one image per mask (or one image for all masks); None = whole image.
        Masks of one image object share one backbone pass. A missing description is written by the
        describer."""
        imgs = [images] * len(masks) if isinstance(images, Image.Image) else list(images)
        if len(imgs) != len(masks):
            raise ValueError(f"encode_arrays: {len(imgs)} images for {len(masks)} masks")
        vis = self.extractor.extract_arrays(list(zip(imgs, masks))) if self.extractor is not None else None
        txt = None
        descs: list[str | None] = list(descriptions) if descriptions is not None else [None] * len(masks)
        if self.text_encoder is not None:
            for k, m in enumerate(masks):
                if descs[k] is None:
                    if self.describer is None:
                        raise ValueError("the language stream needs a description: pass description=... or a describer")
                    descs[k] = self.describer.describe(imgs[k], m, None)
            with torch.inference_mode():
                txt = self.text_encoder.encode([d or "" for d in descs])
        return Encoded(vis, txt, list(range(len(masks))), [], descs)


def build_encoder(streams: str, features: FeatureSpec | None, text_encoder: str | None, describer: str | None, *,
                  device: str = "cpu", batch_size: int = 8, cache_dir: str | Path | None = None,
                  use_cache: bool = True, cache_required: bool = False, compile: bool = False,
                  num_workers: int | None = None, frozen: bool = True,
                  backbone: torch.nn.Module | None = None,
                  backbone_state: dict[str, torch.Tensor] | None = None,
                  preprocess: dict[str, Any] | None = None) -> TwoStreamEncoder:
    """Build the two streams: the vision stream from ``features`` (a :class:`FeatureSpec`, through the
    registry, or ``backbone`` when given as a module), the language stream from its specs.

    ``backbone_state``: weights to load into the backbone (a fine-tuned artifact) before anything is
    keyed on them. ``preprocess``: the preprocessing a trained model recorded: it is what the backbone
    uses, with a warning when the checkpoint's own processor now says otherwise. ``cache_required``: a
    cache that cannot be written is an error (training, whose resume relies on it); otherwise (inference)
    it is skipped with one warning. ``num_workers``: decoding processes (None: the default for the device,
    :mod:`fmmc.vision.loading`). ``frozen=False`` (fine-tuning) keeps fp32 weights under autocast. ``compile`` =
    torch.compile the backbone. The feature cache is keyed by :meth:`FeatureExtractor.settings`, which
    includes a fingerprint of the weights, so it is safe whatever was loaded.
    """
    from fmmc.core.paths import cache_root
    from fmmc.core.registry import build
    from fmmc.vision.cache import FeatureCache, default_cache_dir, namespace_of
    from fmmc.vision.extractor import FeatureExtractor
    from fmmc.vision.protocol import import_state

    extractor = None
    if streams != "language":
        if features is None:
            raise ValueError(f"streams={streams!r} needs a vision backbone: give a FeatureSpec with backbone=...")
        bb = backbone if backbone is not None else build("backbone", features.backbone, image_size=features.image_size)
        if backbone_state:
            import_state(bb, backbone_state)
        if preprocess is not None:
            bb.preprocess = recorded_preprocess(bb.preprocess, preprocess, getattr(bb, "spec", features.backbone))
        extractor = FeatureExtractor(bb, pooling=features.pooling, min_coverage=features.min_coverage,
                                     batch_size=batch_size, compile=compile, dtype=features.dtype, device=device,
                                     num_workers=num_workers, decoder=features.decoder, frozen=frozen,
                                     layers=features.layers, scales=features.scales, flip_tta=features.flip_tta)
        if use_cache:
            settings = extractor.settings()
            root = Path(cache_dir) / "features" if cache_dir else default_cache_dir()
            extractor.cache = FeatureCache(root, namespace_of(settings), settings, required=cache_required)
    desc = tenc = dcache = None
    if streams != "vision":
        tenc = build("text-encoder", text_encoder)
        desc = build("describer", describer or "none")
        if use_cache:
            dcache = _description_cache(Path(cache_dir) if cache_dir else cache_root(), cache_required)
    return TwoStreamEncoder(streams, extractor, desc, tenc, dcache)


def _description_cache(root: Path, required: bool) -> Any:
    """The description cache under ``root``, or None (one warning) when it cannot be written and is optional."""
    from fmmc.core.errors import describe_os_error
    from fmmc.language.cache import DescriptionCache
    from fmmc.vision.cache import CacheUnwritable

    try:
        root.mkdir(parents=True, exist_ok=True)
        return DescriptionCache(root / "descriptions.sqlite")
    except OSError as e:
        message = (f"description cache {root / 'descriptions.sqlite'} cannot be written: {describe_os_error(e)}; "
                   "point $FMMC_CACHE (or --cache-dir, where a command has it) at a writable folder")
        if required:
            raise CacheUnwritable(e.errno, message) from e
        log.warning("%s (running without storing descriptions)", message)
        return None


def recorded_preprocess(current: Any, recorded: dict[str, Any], spec: str | None) -> Any:
    """The preprocessing a model was trained with wins over what its backbone's checkpoint says now.

    Where they differ (a processor file lost, edited or replaced), a warning names both values, so a model
    trained with mean 0.5 is never silently served with ImageNet statistics, or the other way round.
    """
    from fmmc.vision.protocol import Preprocess

    want = Preprocess.from_dict(recorded)
    diffs = [f"{k}: trained with {getattr(want, k)!r}, checkpoint now says {getattr(current, k)!r}"
             for k in PREPROCESS_FIELDS if getattr(want, k) != getattr(current, k)]
    if diffs:
        log.warning("backbone %s: its preprocessing differs from what this model was trained with (%s); using "
                    "the trained values. Restore the checkpoint's preprocessor_config.json to silence this",
                    spec, "; ".join(diffs))
    return want


PREPROCESS_FIELDS = ("image_size", "mean", "std", "patch_size", "resample")
