"""The Ray engine: a stage as a Ray Data pipeline over an actor pool, one model copy per actor.

    >>> engine = get_engine("ray:auto")             # join a running cluster (``ray start --head``)   # doctest: +SKIP
    >>> engine = get_engine("ray", num_cpus=2)      # RAY_ADDRESS if set, else a local instance       # doctest: +SKIP
    >>> failures = engine.map_stage(todo, partial(Generator, cfg, root), batch_size=4,
    ...                             concurrency=8, num_gpus=1, on_result=manifest.append)         # doctest: +SKIP

How a run goes: the driver cuts ``items`` into the same batches as the local engine and puts one batch per
row (as a JSON string, so no value changes type on its way through Arrow) into
``ray.data.from_items``; ``map_batches(StageActor, concurrency=N, num_gpus=..., num_cpus=...)`` builds the
stage once per actor (the model loads once) and runs each batch with the shared retry rules
(:func:`fmmc.engine.base.run_batch`); the driver streams results back with ``iter_batches`` and hands them
to ``on_result`` (which writes the manifest), as they finish. An actor that dies is restarted by Ray
(``max_restarts``) and its batch re-run (``max_task_retries``); the driver drops a batch it has already seen,
so nothing is written twice, and lists the items of any batch that never came back as failures.

This is the only module that imports Ray.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmmc.engine.base import (
    Failure,
    Item,
    Progress,
    StageFactory,
    check_unique_ids,
    chunked,
    item_id,
    run_batch,
    write_info,
)

log = logging.getLogger(__name__)

_STOPPED = "the Ray pipeline stopped: "
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


class StageActor:
    """Ray Data callable class: builds the stage once (in ``__init__``); each input row is one batch.

    The actor first moves to the driver's working directory when this node has it (a shared filesystem
    mounted at the same path), so relative paths in items and stage settings mean what they mean on the
    driver (``out=runs/synth``); elsewhere it stays put and only absolute paths work.
    """

    def __init__(self, stage_factory: StageFactory, max_retries: int, driver_cwd: str | None = None) -> None:
        if driver_cwd and os.path.isdir(driver_cwd):
            os.chdir(driver_cwd)
        elif driver_cwd:
            log.warning("the driver's folder %s is not on this node; relative paths will not resolve here "
                        "(use absolute paths on a shared filesystem)", driver_cwd)
        self.stage = stage_factory()
        self.max_retries = max_retries

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = []
        for payload in batch["items"]:
            items = json.loads(str(payload))
            results, failures = run_batch(self.stage, items, self.max_retries)
            try:
                outs.append(json.dumps({"results": results, "failures": failures}))
            except (TypeError, ValueError) as e:
                message = f"stage output is not JSON-serialisable: {e}"
                outs.append(json.dumps({"results": [], "failures": [[i.get("id"), message] for i in items]}))
        return {"b": np.asarray(batch["b"]), "out": np.array(outs, dtype=object)}


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, *, max_retries: int = 1, max_restarts: int = 3,
                 max_task_retries: int = 3, isolation_passes: int = 3, num_cpus: int | None = None,
                 runtime_env: dict[str, Any] | None = None, ray_progress: bool = False) -> None:
        """``address``: None = ``ray.init()`` (RAY_ADDRESS if set, else a new local instance with
        ``num_cpus`` CPUs); ``auto`` = the cluster this node belongs to; ``ray://host:10001``; ``host:6379``."""
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address or None
        self.spec = f"ray:{address}" if address else "ray"
        self.max_retries = max_retries
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self.isolation_passes = isolation_passes
        self.local_num_cpus = num_cpus
        self.runtime_env = runtime_env
        self.ray_progress = ray_progress
        self.last_stats: dict[str, float] = {}
        self._started = False

    # --- cluster ---
    def connect(self) -> None:
        """``ray.init`` unless Ray is already initialised in this process (then that instance is used)."""
        import ray

        if ray.is_initialized():
            log.debug("using the Ray instance already initialised in this process")
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if self.runtime_env:
            kwargs["runtime_env"] = self.runtime_env
        if self.address:
            ray.init(address=self.address, **kwargs)
        else:
            ray.init(num_cpus=self.local_num_cpus, **kwargs)
        self._started = True
        log.info("Ray %s: %s", ray.__version__, ray.get_runtime_context().gcs_address)

    def close(self) -> None:
        """Shut down the Ray instance this engine started (a joined cluster keeps running)."""
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    def describe(self, *, batch_size: int = 8, concurrency: int | None = None, num_gpus: float | None = None,
                 num_cpus: float | None = None) -> dict[str, Any]:
        """The resolved settings (written as ``engine.json``): defaults filled in from the cluster's resources."""
        import ray

        self.connect()
        cluster = ray.cluster_resources()
        gpus, cpus = float(cluster.get("GPU", 0.0)), float(cluster.get("CPU", 0.0))
        if num_gpus is None:
            num_gpus = 1.0 if gpus > 0 else 0.0
        if num_cpus is None:
            num_cpus = 1.0
        if concurrency is None:
            by_gpu = int(gpus // num_gpus) if num_gpus > 0 else 0
            concurrency = max(1, by_gpu if num_gpus > 0 else int(cpus // max(num_cpus, 1e-9)))
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if num_gpus > 0 and gpus < num_gpus:
            log.warning("each actor asks for %s GPU but the cluster has %s: actors will wait for GPUs", num_gpus, gpus)
        return {
            "engine": "ray", "spec": self.spec, "address": ray.get_runtime_context().gcs_address,
            "ray_version": ray.__version__, "batch_size": batch_size, "concurrency": int(concurrency),
            "num_gpus_per_actor": float(num_gpus), "num_cpus_per_actor": float(num_cpus),
            "max_retries": self.max_retries, "max_restarts": self.max_restarts,
            "max_task_retries": self.max_task_retries,
            "cluster": {"CPU": cpus, "GPU": gpus, "nodes": sum(1 for n in ray.nodes() if n.get("Alive"))},
        }

    # --- the pipeline ---
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
        """Run ``stage_factory()`` on a pool of Ray actors over ``items``; returns the items that failed.

        Batches lost with their actor (it died more often than ``max_restarts``/``max_task_retries``
        allow) are run again one item per batch (up to ``isolation_passes`` times, while that makes
        progress), so a single item that crashes its worker costs only itself; what is still lost is
        returned as failed.
        """
        check_unique_ids(items)
        info = self.describe(batch_size=batch_size, concurrency=concurrency, num_gpus=num_gpus, num_cpus=num_cpus)
        if info_path is not None:
            write_info(info_path, info)
        batches = chunked(items, batch_size)
        if not batches:
            return []
        log.info("ray: %d items in %d batches on %d actor(s), %s GPU + %s CPU each", len(items), len(batches),
                 info["concurrency"], info["num_gpus_per_actor"], info["num_cpus_per_actor"])
        bar = Progress(len(items), progress, "ray")
        try:
            failures, lost, error = self._pass(batches, stage_factory, info, on_result, bar, isolate=False)
            if error.startswith(_STOPPED) and len(lost) == len(batches):
                # nothing came back at all: the stage cannot start (a missing model, a bad setting)
                raise RuntimeError(f"the stage failed on the Ray cluster before any batch finished: "
                                   f"{error[len(_STOPPED):]}")
            lost_items = [i for b in lost for i in batches[b]]
            for _ in range(self.isolation_passes):
                if not lost_items:
                    break
                log.warning("%d item(s) lost with their actor (%s); running them one by one", len(lost_items), error)
                singles = [[i] for i in lost_items]
                more, lost, error = self._pass(singles, stage_factory, info, on_result, bar, isolate=True)
                failures += more
                before, lost_items = len(lost_items), [singles[b][0] for b in lost]
                if len(lost_items) == before:  # no progress: what is left kills its worker every time
                    break
                # else an item may have gone down with a neighbour's actor: it gets another pass
        finally:
            self.last_stats = bar.close()
        if lost_items:
            log.error("%d item(s) never came back: %s", len(lost_items), error)
            failures += [(item_id(i), f"lost on the Ray cluster: {error}") for i in lost_items]
        return failures

    def _pass(self, batches: list[list[Item]], stage_factory: StageFactory, info: dict[str, Any],
              on_result: Callable[[list[Item]], None] | None, bar: Progress,
              isolate: bool) -> tuple[list[Failure], list[int], str]:
        """One Ray Data pipeline over ``batches``: (failures, indices of batches that never came back, why).

        ``isolate``: one task in flight per actor, so an actor that dies takes no queued batch with it.
        """
        import ray
        from ray.data import ActorPoolStrategy, DataContext

        rows = [{"b": k, "items": json.dumps(batch)} for k, batch in enumerate(batches)]
        ctx = DataContext.get_current()
        saved = (ctx.enable_progress_bars, ctx.max_errored_blocks)
        ctx.enable_progress_bars = self.ray_progress
        ctx.max_errored_blocks = -1  # a batch lost for good is reported by the caller, not fatal for the others
        failures: list[Failure] = []
        seen: set[int] = set()
        error = "its actor died more often than max_restarts/max_task_retries allow"
        try:
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one batch per block: even spread
            pool = ActorPoolStrategy(size=min(info["concurrency"], len(rows)),
                                     max_tasks_in_flight_per_actor=1 if isolate else None)
            ds = _map_batches(ds, pool,
                              fn_constructor_args=(stage_factory, self.max_retries, os.getcwd()),
                              num_gpus=info["num_gpus_per_actor"], num_cpus=info["num_cpus_per_actor"],
                              restarts={"max_restarts": self.max_restarts, "max_task_retries": self.max_task_retries})
            stream = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
            while True:
                try:
                    out = next(stream)
                except StopIteration:
                    break
                except Exception as e:  # noqa: BLE001 - whatever is missing is reported by the caller
                    error = _STOPPED + _reason(e)
                    log.error("%s", error)
                    break
                for b, payload in zip(out["b"], out["out"]):
                    b = int(b)
                    if b in seen:
                        log.warning("batch %d came back twice (a retried task); keeping the first", b)
                        continue
                    seen.add(b)
                    data = json.loads(str(payload))
                    if on_result is not None and data["results"]:
                        on_result(data["results"])
                    failures += [(str(i), str(m)) for i, m in data["failures"]]
                    bar.update(len(batches[b]))
        finally:
            ctx.enable_progress_bars, ctx.max_errored_blocks = saved
        return failures, [b for b in range(len(batches)) if b not in seen], error


def _reason(error: BaseException) -> str:
    """The root cause in a Ray error's text (its last ``SomeError: message`` line), without colour codes."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(error)).splitlines() if ln.strip()]
    for line in reversed(lines):
        if _EXC_LINE.match(line):
            return line
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _map_batches(ds: Any, compute: Any, *, fn_constructor_args: tuple[Any, ...], num_gpus: float, num_cpus: float,
                 restarts: dict[str, int]) -> Any:
    kwargs: dict[str, Any] = {"batch_size": 1, "batch_format": "numpy", "compute": compute,
                              "fn_constructor_args": fn_constructor_args, "num_gpus": num_gpus, "num_cpus": num_cpus}
    try:
        # Ray Data's default is infinite restarts and retries: a batch that kills its actor every time
        # would never end. Passing them as remote args is deprecated (Ray 2.60) but still the only way.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.map_batches(StageActor, **kwargs, **restarts)
    except TypeError as e:  # a Ray that no longer takes them: keep its defaults
        log.warning("this Ray does not take %s (%s); using its defaults", sorted(restarts), e)
        return ds.map_batches(StageActor, **kwargs)


def build_ray_engine(arg: str = "", **settings: Any) -> RayEngine:
    """Registry factory: ``ray`` (RAY_ADDRESS or a local instance), ``ray:auto``, ``ray:ray://head:10001``."""
    try:
        import ray  # noqa: F401
    except ImportError as e:
        raise ImportError("the ray engine needs Ray Data: pip install 'fmmc[ray]' (ray[data])") from e
    address = settings.pop("address", None)
    if arg and address and arg != address:
        raise ValueError(f"engine spec 'ray:{arg}' and address={address!r} disagree; give one")
    return RayEngine(arg or address, **settings)
