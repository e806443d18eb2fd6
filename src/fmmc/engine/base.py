"""What an execution engine is, and the pieces every engine shares (batching, retries, progress, settings).

An engine maps a *stage* over items. A stage is a callable ``stage(items: list[dict]) -> list[dict]`` that
loads its model once (``Generator``, ``Labeler``, :class:`fmmc.engine.features.FeatureStage`, ...). The
engine receives a zero-argument *factory* that builds the stage, so a remote worker can build its own copy::

    >>> from fmmc.engine import get_engine
    >>> engine = get_engine("local")                      # or "ray", "ray:auto", "ray:ray://head:10001"
    >>> done = []
    >>> failures = engine.map_stage([{"id": "a", "x": 1}], lambda: (lambda b: [{**i, "y": 2} for i in b]),
    ...                             batch_size=8, on_result=done.extend)
    >>> done, failures
    ([{'id': 'a', 'x': 1, 'y': 2}], [])

Every engine cuts ``items`` into the same batches (in order, ``batch_size`` each), so a stage whose output
depends only on its batch gives the same results on any engine. The caller writes results as they arrive
(``on_result``, called on the driver in completion order) and filters out finished items before calling,
which is what makes a run resumable. A batch that raises is retried one item at a time (``max_retries``
more tries each); items that still fail are returned as ``(id, message)``, never dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

Item = dict[str, Any]
Stage = Callable[[list[Item]], list[Item]]
StageFactory = Callable[[], Stage]
Failure = tuple[str, str]  # (item id, message)
ENGINE_FILE = "engine.json"


@runtime_checkable
class Engine(Protocol):
    spec: str
    name: str  # "local" | "ray"
    last_stats: dict[str, float]  # items, seconds, items_per_s of the last map_stage

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
    ) -> list[Failure]: ...

    def describe(self, *, batch_size: int = 8, concurrency: int | None = None, num_gpus: float | None = None,
                 num_cpus: float | None = None) -> dict[str, Any]: ...

    def close(self) -> None: ...


def get_engine(spec: str = "local", **settings: Any) -> Engine:
    """Build the engine named by ``spec`` (``local``, ``ray``, ``ray:<address>``) through the registry."""
    from fmmc.core.registry import build

    return build("engine", spec or "local", **settings)


def engine_spec(engine: str | None, ray_address: str | None = None) -> str:
    """CLI flags -> spec: ``--engine ray --ray-address auto`` is ``ray:auto``; ``--engine local`` is ``local``."""
    engine = (engine or "local").strip()
    if ray_address:
        if engine == "local":
            raise ValueError(f"--ray-address {ray_address!r} needs --engine ray")
        if engine == "ray":
            return f"ray:{ray_address}"
        if engine.startswith("ray:") and engine[4:] != ray_address:
            raise ValueError(f"--engine {engine!r} and --ray-address {ray_address!r} disagree; give one")
    return engine


def item_id(item: Item, where: str = "item") -> str:
    value = item.get("id") if isinstance(item, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: every item needs a non-empty string 'id', got {value!r}")
    return value


def chunked(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Consecutive batches of ``batch_size`` (the last may be shorter); every engine batches the same way."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def check_unique_ids(items: Sequence[Item]) -> None:
    seen: set[str] = set()
    for k, item in enumerate(items):
        i = item_id(item, f"item {k}")
        if i in seen:
            raise ValueError(f"item {k}: duplicate id {i!r}; ids must be unique within a stage")
        seen.add(i)


def run_batch(stage: Stage, batch: list[Item], max_retries: int = 1) -> tuple[list[Item], list[Failure]]:
    """Run one batch; if it raises, run its items one by one (``max_retries`` more tries each).

    Returns ``(results, failures)``. Results of a batch are in the order the stage returned them.
    """
    try:
        return _as_results(stage(batch)), []
    except Exception as e:  # noqa: BLE001 - isolate the bad item, keep the rest
        log.warning("batch of %d (first id %r) failed: %s: %s; retrying item by item", len(batch),
                    batch[0].get("id") if batch else None, type(e).__name__, e)
        first_error = e
    results: list[Item] = []
    failures: list[Failure] = []
    # a batch of one already had its first try; in a bigger batch the error may have been another item's
    tries = max_retries if len(batch) == 1 else max_retries + 1
    for item in batch:
        error: BaseException = first_error
        for _ in range(tries):
            try:
                results.extend(_as_results(stage([item])))
                break
            except Exception as e:  # noqa: BLE001
                error = e
        else:
            message = f"{type(error).__name__}: {error}"
            log.warning("item %r failed: %s", item.get("id"), message)
            failures.append((str(item.get("id")), message))
    return results, failures


def _as_results(out: Any) -> list[Item]:
    if not isinstance(out, list) or not all(isinstance(r, dict) for r in out):
        raise TypeError(f"a stage must return a list of dicts, got {type(out).__name__}")
    return out


class Progress:
    """tqdm over items as their results arrive, plus the items/s figure logged at the end."""

    def __init__(self, total: int, progress: bool | str, engine: str) -> None:
        from tqdm.auto import tqdm

        desc = progress if isinstance(progress, str) else "items"
        self.total = total
        self.done = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, desc=f"{desc} [{engine}]", unit="item", disable=not progress,
                        dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)

    def close(self) -> dict[str, float]:
        self.bar.close()
        seconds = time.perf_counter() - self.t0
        rate = self.done / seconds if seconds > 0 else 0.0
        log.info("%d items in %.1f s (%.2f items/s)", self.done, seconds, rate)
        return {"items": self.done, "seconds": round(seconds, 3), "items_per_s": round(rate, 3)}


def write_info(path: str | Path, info: dict[str, Any]) -> Path:
    """Write the resolved engine settings (``engine.json``) next to a stage's outputs."""
    p = Path(path)
    if p.suffix != ".json":
        p = p / ENGINE_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(info, indent=1, sort_keys=True, default=str) + "\n")
    return p
