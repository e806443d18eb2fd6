"""Describers turn a region into one sentence about its material appearance; :func:`describe_regions`
runs one over a dataset with a cache.

    >>> from fmmc.core.registry import build
    >>> describer = build("describer", "openai:gpt-4o-mini")   # or "hf:...", "metadata", "none"
    >>> texts, failures = describe_regions(regions, describer, DescriptionCache("desc.sqlite"))  # doctest: +SKIP

A describer is any object with ``spec``, ``prompt_version`` and ``describe(image, mask, region)``;
it must be safe to call from several threads at once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from fmmc.data.imageio import ImageError, file_sha256
from fmmc.data.records import Region
from fmmc.data.regions import load_region
from fmmc.language.cache import DescriptionCache, box_sha

log = logging.getLogger(__name__)

MAX_LOGGED_FAILURES = 5


class DescriberError(RuntimeError):
    """A describer (or the chat endpoint behind it) failed; the message says where and why."""


@runtime_checkable
class Describer(Protocol):
    spec: str
    prompt_version: str  # part of the cache key; bump when the prompt changes

    def describe(self, image: Image.Image, mask: np.ndarray | None, region: Region | None = None) -> str: ...


class NoneDescriber:
    """The ablation without a language stream: every description is ""."""

    needs_image = False  # describe_regions skips loading images and the cache

    def __init__(self) -> None:
        self.spec = "none"
        self.prompt_version = "none"

    def describe(self, image: Image.Image | None, mask: np.ndarray | None, region: Region | None = None) -> str:
        return ""


class MetadataDescriber:
    """The dataset's own ``description`` field (e.g. written by the data engine or a human)."""

    needs_image = False

    def __init__(self) -> None:
        self.spec = "metadata"
        self.prompt_version = "metadata"

    def describe(self, image: Image.Image | None, mask: np.ndarray | None, region: Region | None = None) -> str:
        if region is None:
            raise ValueError("the 'metadata' describer reads a dataset line's 'description', and a new photo has "
                             "none: pass description='...', or use a describer that can describe a photo "
                             "(e.g. 'openai:gpt-4o-mini', 'hf:<local VLM>' or 'none')")
        if region.description is None:
            raise ValueError(
                f"region {region.id!r} has no 'description' field; add one to metadata.jsonl or use "
                "another describer (e.g. 'openai:gpt-4o-mini' or 'none')"
            )
        return region.description


def _no_arg(name: str, arg: str) -> None:
    if arg:
        raise ValueError(f"describer {name!r} takes no argument, got {name}:{arg!r}; use plain {name!r}")


def build_none(arg: str = "", **kwargs: Any) -> NoneDescriber:
    _no_arg("none", arg)
    return NoneDescriber()


def build_metadata(arg: str = "", **kwargs: Any) -> MetadataDescriber:
    _no_arg("metadata", arg)
    return MetadataDescriber()


def describe_regions(
    regions: list[Region],
    describer: Describer,
    cache: DescriptionCache | None,
    progress: bool = True,
    workers: int = 1,
) -> tuple[list[str | None], list[tuple[str, str]]]:
    """Describe every region, consulting ``cache`` first; never raises for one bad region, but does raise an
    error that says every region would fail (``stops_run``: an unreachable endpoint, a missing key).

    Returns ``(descriptions, failures)``: descriptions aligned with ``regions`` (None where it failed)
    and ``(region.id, message)`` per failure. ``workers > 1`` describes regions in parallel threads
    (useful for remote endpoints; a local VLM serialises on its own lock).
    """
    from tqdm.auto import tqdm

    needs_image = getattr(describer, "needs_image", True)
    use_cache = cache is not None and needs_image
    shas: dict[Path, str] = {}  # many regions share one image: hash each file once
    sha_lock = threading.Lock()

    def sha(path: Path) -> str:
        with sha_lock:
            if path in shas:
                return shas[path]
        if not path.is_file():
            raise ImageError(path, "file not found", "check the path")
        value = file_sha256(path)
        with sha_lock:
            shas[path] = value
        return value

    def one(region: Region) -> str:
        if not needs_image:
            return describer.describe(None, None, region)  # type: ignore[arg-type]
        keys: tuple[str, str] | None = None
        if use_cache:
            assert cache is not None
            image_sha = sha(region.image)  # first, so a missing image is reported as such
            if region.mask is not None:
                keys = (image_sha, sha(region.mask))
            else:
                keys = (image_sha, box_sha(region.box) if region.box is not None else "")
            try:
                hit = cache.get(*keys, describer.spec, describer.prompt_version)
            except sqlite3.Error as e:  # a locked or broken cache must not cost a description
                log.warning("description cache %s: read failed (%s); describing again", cache.path, e)
                hit = None
            if hit is not None:
                return hit
        img, mask = load_region(region)
        text = describer.describe(img, mask, region)
        if keys is not None:
            assert cache is not None
            try:
                cache.put(*keys, describer.spec, describer.prompt_version, text)
            except sqlite3.Error as e:
                log.warning("description cache %s: write failed (%s); region %r not cached", cache.path, e, region.id)
        return text

    out: list[str | None] = [None] * len(regions)
    failed: list[tuple[int, str]] = []

    def record(i: int, call: Callable[[], str]) -> None:
        try:
            out[i] = call()
        except Exception as e:  # noqa: BLE001 - one bad region must not stop a dataset
            if getattr(e, "stops_run", False):  # ... but a dead endpoint must: every other region would fail too
                log.debug("stopping after region %r: %s", regions[i].id, e)
                raise
            message = f"{type(e).__name__}: {e}"
            failed.append((i, message))
            # the first few failures are worth seeing; a dead endpoint must not print one line per region
            level = logging.WARNING if len(failed) <= MAX_LOGGED_FAILURES else logging.DEBUG
            log.log(level, "cannot describe region %r: %s", regions[i].id, message)

    bar = tqdm(total=len(regions), desc=f"describe ({describer.spec})", disable=not progress, unit="region")
    try:
        if workers <= 1:
            for i, region in enumerate(regions):
                record(i, lambda r=region: one(r))
                bar.update(1)
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                futures = {pool.submit(one, region): i for i, region in enumerate(regions)}
                for fut in as_completed(futures):
                    record(futures[fut], fut.result)
                    bar.update(1)
            finally:  # on Ctrl-C, drop the queued regions instead of describing them all first
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    failures = [(regions[i].id, message) for i, message in sorted(failed)]
    if failures:
        log.warning("%d of %d regions could not be described (first: %s: %s)", len(failures), len(regions),
                    *failures[0])
    return out, failures
