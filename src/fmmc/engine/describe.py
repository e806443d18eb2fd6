"""Region description as an engine stage: regions -> one sentence each, in the training description cache.

    >>> from fmmc.engine import get_engine
    >>> from fmmc.engine.describe import describe_with_engine
    >>> report = describe_with_engine(load_dataset("data/synth"), "hf:HuggingFaceTB/SmolVLM-256M-Instruct",
    ...                               get_engine("ray:auto"), cache_dir=None, num_gpus=0.5)      # doctest: +SKIP

The driver hashes each region (image bytes, mask bytes or box: the keys of
:class:`~fmmc.language.cache.DescriptionCache`), skips regions whose description is cached for this
describer and prompt version, and maps :class:`DescribeStage` over the rest; each worker builds the
describer once (a local VLM loads once per actor). The driver writes the descriptions into the same
SQLite cache that ``fmmc train --describer SPEC`` reads, so training asks the describer nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fmmc.data.records import Region
from fmmc.engine.base import Engine, Failure, Item
from fmmc.engine.features import absolute_region

log = logging.getLogger(__name__)


class DescribeStage:
    """Engine stage: ``{"id", "image_sha", "mask_sha", "region"}`` -> the same keys + ``description``
    (or ``error`` for a region that cannot be described)."""

    def __init__(self, describer: Any, **settings: Any) -> None:
        """``describer``: a spec (built here, once per worker) or an already built describer."""
        if isinstance(describer, str):
            from fmmc.core.registry import build

            describer = build("describer", describer, **settings)
        self.describer = describer

    def __call__(self, items: list[Item]) -> list[Item]:
        from fmmc.data.dataset import parse_line
        from fmmc.data.regions import load_region

        out = []
        for item in items:
            keys = {"id": item["id"], "image_sha": item["image_sha"], "mask_sha": item["mask_sha"]}
            try:
                region = parse_line(item["region"], Path("/"), where=f"item {item['id']!r}")
                image, mask = load_region(region)
                out.append({**keys, "description": self.describer.describe(image, mask, region)})
            except Exception as e:  # noqa: BLE001 - one bad region must not stop the others
                out.append({**keys, "error": f"{type(e).__name__}: {e}"})
        return out


@dataclass
class DescribeReport:
    cache_path: Path
    total: int
    cached: int
    described: int
    failures: list[Failure]
    stats: dict[str, float]


def describe_with_engine(regions: list[Region], describer: str, engine: Engine, *, cache_dir: str | None = None,
                         batch_size: int = 8, concurrency: int | None = None, num_gpus: float | None = None,
                         num_cpus: float | None = None, progress: bool | str = True,
                         info_path: str | Path | None = None) -> DescribeReport:
    """Fill the description cache (``<cache_dir>/descriptions.sqlite``) for ``regions``; cached ones are skipped."""
    from fmmc.core.paths import cache_root
    from fmmc.core.registry import build
    from fmmc.language.cache import DescriptionCache, region_keys

    probe = build("describer", describer)  # spec + prompt version for the cache key; cheap for API describers
    spec, version = getattr(probe, "spec", describer), probe.prompt_version
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    cache = DescriptionCache(root / "descriptions.sqlite")
    failures: list[Failure] = []
    todo: list[Item] = []
    cached = 0
    for r in regions:
        try:
            image_sha, mask_sha = region_keys(r)
        except (OSError, ValueError) as e:
            failures.append((r.id, f"{type(e).__name__}: {e}"))
            continue
        if cache.get(image_sha, mask_sha, spec, version) is not None:
            cached += 1
            continue
        todo.append({"id": r.id, "image_sha": image_sha, "mask_sha": mask_sha,
                     "region": absolute_region(r).to_json()})
    log.info("%d regions: %d described already, %d to describe", len(regions), cached, len(todo))
    written = 0

    def on_result(results: list[Item]) -> None:
        nonlocal written
        for res in results:
            if "error" in res:
                failures.append((res["id"], res["error"]))
            else:
                cache.put(res["image_sha"], res["mask_sha"], spec, version, res["description"])
                written += 1

    # the local engine reuses the driver's describer; each Ray actor builds its own
    factory: Any = partial(DescribeStage, probe if engine.name == "local" else describer)
    failures += engine.map_stage(todo, factory, batch_size=batch_size, concurrency=concurrency, num_gpus=num_gpus,
                                 num_cpus=num_cpus, on_result=on_result,
                                 progress=f"describe ({spec})" if progress is True else progress,
                                 info_path=info_path)
    cache.close()
    return DescribeReport(root / "descriptions.sqlite", len(regions), cached, written, failures,
                          dict(engine.last_stats))
