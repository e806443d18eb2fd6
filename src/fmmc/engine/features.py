"""Feature extraction as an engine stage: regions -> pooled vision features in the training feature cache.

    >>> from fmmc.engine import get_engine
    >>> from fmmc.engine.features import FeatureJob, extract_features
    >>> job = FeatureJob(backbone="hf:facebook/dinov2-base", cache_dir="~/.cache/fmmc")
    >>> report = extract_features(load_dataset("data/synth"), job, get_engine("ray:auto"),
    ...                           concurrency=8, num_gpus=0.5)                           # doctest: +SKIP

The driver hashes every region (image bytes + mask bytes: the cache key), skips those already in the
:class:`~fmmc.vision.cache.FeatureCache`, and maps :class:`FeatureStage` over the rest; each worker
builds the backbone once and returns float32 vectors, which the driver writes into the same cache
(safetensors shards + ``index.jsonl``, same namespace) that ``fmmc train`` reads. So ``fmmc train`` with
the same backbone settings finds every feature and extracts nothing. The cache is the manifest: a run
that stops resumes where it stopped.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmmc.core.device import resolve_device
from fmmc.data.records import Region
from fmmc.engine.base import Engine, Failure, Item
from fmmc.model.config import FeatureSpec

log = logging.getLogger(__name__)


@dataclass
class FeatureJob(FeatureSpec):
    """A feature-extraction run: the :class:`~fmmc.model.config.FeatureSpec` fields (what decides a
    feature, and so the cache key, exactly as in TrainConfig) plus where and how fast to run."""

    device: str = "auto"  # auto: cuda when the worker has a GPU, else cpu
    batch_size: int = 8  # images per forward pass (and per engine batch)
    num_workers: int | None = None  # decoding processes per stage (None: the default for the device)
    cache_dir: str | None = None  # as TrainConfig.cache_dir: None = ~/.cache/fmmc (or $FMMC_CACHE)


class FeatureStage:
    """Engine stage: items ``{"id", "key", "region": <metadata.jsonl line, absolute paths>}`` ->
    ``{"id", "key", "feature": base64 float32}``, or ``{"id", "key", "error": message}`` for a bad image."""

    def __init__(self, job: FeatureJob) -> None:
        from fmmc.core.registry import build
        from fmmc.vision.extractor import FeatureExtractor

        if not job.backbone:
            raise ValueError("a feature job needs a backbone spec, e.g. backbone='hf:facebook/dinov2-base'")
        backbone = build("backbone", job.backbone, image_size=job.image_size)
        self.extractor = FeatureExtractor(backbone, pooling=job.pooling, min_coverage=job.min_coverage,
                                          batch_size=job.batch_size, dtype=job.dtype,
                                          device=resolve_device(job.device), cache=None,
                                          num_workers=job.num_workers, decoder=job.decoder, layers=job.layers,
                                          scales=job.scales, flip_tta=job.flip_tta)
        log.info("feature stage ready: %s on %s", job.backbone, self.extractor.device)

    def __call__(self, items: list[Item]) -> list[Item]:
        from fmmc.data.dataset import parse_line

        regions = [parse_line(i["region"], Path("/"), where=f"item {i['id']!r}") for i in items]
        feats, ok, failures = self.extractor.extract_regions(regions, progress=False)
        out: dict[int, Item] = {}
        for row, k in enumerate(ok):
            vec = feats[row].detach().to("cpu").float().numpy().astype("<f4")
            out[k] = {"id": items[k]["id"], "key": items[k]["key"], "feature": base64.b64encode(vec.tobytes()).decode()}
        errors = dict(failures)
        for k, item in enumerate(items):
            if k not in out:
                out[k] = {"id": item["id"], "key": item["key"],
                          "error": errors.get(regions[k].id, "no feature returned")}
        return [out[k] for k in range(len(items))]


def absolute_region(r: Region) -> Region:
    """Workers run in another folder (or on another node): send absolute paths."""
    from dataclasses import replace

    return replace(r, image=r.image.resolve(), mask=r.mask.resolve() if r.mask is not None else None)


def decode_feature(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


@dataclass
class FeatureReport:
    cache_dir: Path  # the namespace folder (shards, index.jsonl, settings.json, engine.json)
    total: int  # regions asked for
    cached: int  # already in the cache before this run
    extracted: int  # written by this run
    failures: list[Failure]  # (region id, message)
    stats: dict[str, float]


def extract_features(regions: list[Region], job: FeatureJob, engine: Engine, *, concurrency: int | None = None,
                     num_gpus: float | None = None, num_cpus: float | None = None,
                     progress: bool | str = True) -> FeatureReport:
    """Fill the feature cache for ``regions`` with ``engine``; finished regions are skipped."""
    from dataclasses import replace

    from fmmc.vision.cache import FeatureCache, default_cache_dir, namespace_of
    from fmmc.vision.extractor import region_key

    if job.null_mask:
        regions = [replace(r, mask=None, box=None) for r in regions]
    # the namespace needs the backbone's preprocessing: build it here once (on CPU); the local engine reuses it
    local_job = replace(job, device=resolve_device(job.device) if engine.name == "local" else "cpu")
    driver_stage = FeatureStage(local_job)
    settings = driver_stage.extractor.settings()
    root = Path(job.cache_dir).expanduser() / "features" if job.cache_dir else default_cache_dir()
    cache = FeatureCache(root, namespace_of(settings), settings)
    failures: list[Failure] = []
    todo: list[Item] = []
    cached = 0
    keys: set[str] = set()
    for r in regions:
        try:
            key = region_key(r)
        except (OSError, ValueError) as e:
            failures.append((r.id, f"{type(e).__name__}: {e}"))
            continue
        if key in cache:
            cached += 1
        elif key not in keys:  # the same pixels under two ids are extracted once
            keys.add(key)
            todo.append({"id": r.id, "key": key, "region": absolute_region(r).to_json()})
    log.info("%d regions: %d cached, %d to extract, %d unreadable", len(regions), cached, len(todo), len(failures))
    written = 0

    def on_result(results: list[Item]) -> None:
        nonlocal written
        import torch

        for res in results:
            if "error" in res:
                failures.append((res["id"], res["error"]))
            else:
                cache.put(res["key"], torch.from_numpy(decode_feature(res["feature"]).copy()))
                written += 1
        cache.commit()  # durable per batch: a killed or preempted run redoes at most the batches in flight

    factory: Any
    if engine.name == "local":
        factory = lambda: driver_stage  # noqa: E731 - the backbone is already loaded here
    else:
        from functools import partial

        factory = partial(FeatureStage, job)  # each actor builds its own; the driver's copy is dropped
        driver_stage = None
    try:
        failures += engine.map_stage(todo, factory, batch_size=job.batch_size, concurrency=concurrency,
                                     num_gpus=num_gpus, num_cpus=num_cpus, on_result=on_result,
                                     progress="features" if progress is True else progress,
                                     info_path=cache.dir / "engine.json")
    finally:
        cache.compact()
    if failures:
        log.warning("%d region(s) without features (first: %s: %s)", len(failures), *failures[0])
    return FeatureReport(cache.dir, len(regions), cached, written, failures, dict(engine.last_stats))
