"""Execution engines: run a stage (a model-holding callable over batches of item dicts) locally or on Ray.

    >>> from fmmc.engine import get_engine
    >>> engine = get_engine("local")        # `fmmc list engines`: local, ray, ray:auto, ray:ray://head:10001
    >>> failures = engine.map_stage(items, stage_factory, batch_size=8, on_result=write)   # doctest: +SKIP

``fmmc synth generate|label``, ``fmmc features`` and description take ``--engine local|ray`` and
``--ray-address``; see docs/ray.md. Importing this package never imports Ray (only
:mod:`fmmc.engine.ray_engine` does, when a ``ray`` engine is built).
"""

from __future__ import annotations

from fmmc.engine.base import Engine, Failure, engine_spec, get_engine, run_batch, write_info

__all__ = ["Engine", "Failure", "engine_spec", "get_engine", "run_batch", "write_info"]
