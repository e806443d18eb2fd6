"""The local engine: build the stage once in this process and run its batches one after another.

    >>> from fmmc.engine import get_engine
    >>> engine = get_engine("local")
    >>> engine.map_stage([{"id": "a"}], lambda: (lambda batch: batch), batch_size=4)
    []

This is the default (``--engine local``): the same batching and retry rules as the Ray engine
(:mod:`fmmc.engine.base`), with no Ray installed or imported.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fmmc.engine.base import (
    Failure,
    Item,
    Progress,
    StageFactory,
    check_unique_ids,
    chunked,
    run_batch,
    write_info,
)

log = logging.getLogger(__name__)


class LocalEngine:
    name = "local"

    def __init__(self, max_retries: int = 1) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.spec = "local"
        self.max_retries = max_retries
        self.last_stats: dict[str, float] = {}

    def describe(self, *, batch_size: int = 8, concurrency: int | None = None, num_gpus: float | None = None,
                 num_cpus: float | None = None) -> dict[str, Any]:
        return {"engine": "local", "spec": self.spec, "batch_size": batch_size, "concurrency": 1,
                "max_retries": self.max_retries, "python": platform.python_version()}

    def map_stage(
        self,
        items: Sequence[Item],
        stage_factory: StageFactory,
        *,
        batch_size: int = 8,
        concurrency: int | None = None,
        num_gpus: float | None = None,
        num_cpus: float | None = None,
        on_result: Callable[[list[Item]], None] | None = None,
        progress: bool | str = False,
        info_path: str | Path | None = None,
    ) -> list[Failure]:
        """Run ``stage_factory()`` over ``items`` in batches; returns the items that failed.

        ``concurrency``, ``num_gpus`` and ``num_cpus`` are Ray settings and are ignored here.
        """
        check_unique_ids(items)
        if info_path is not None:
            write_info(info_path, self.describe(batch_size=batch_size))
        if concurrency not in (None, 1):
            log.info("local engine runs one batch at a time; concurrency=%s ignored", concurrency)
        failures: list[Failure] = []
        batches = chunked(items, batch_size)
        bar = Progress(len(items), progress, "local")
        try:
            stage = stage_factory() if batches else None
            for batch in batches:
                results, failed = run_batch(stage, batch, self.max_retries)  # type: ignore[arg-type]
                if on_result is not None and results:
                    on_result(results)
                failures += failed
                bar.update(len(batch))
        finally:
            self.last_stats = bar.close()
        return failures

    def close(self) -> None:
        pass


def build_local_engine(arg: str = "", max_retries: int = 1, **_: Any) -> LocalEngine:
    """Registry factory for ``local``; Ray-only settings (address, num_cpus, ...) are accepted and ignored."""
    if arg:
        raise ValueError(f"engine 'local' takes no argument, got 'local:{arg}'; use 'local' or 'ray:{arg}'")
    return LocalEngine(max_retries=max_retries)
