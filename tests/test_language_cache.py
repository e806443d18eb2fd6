"""DescriptionCache on a real SQLite file; describe_regions with in-process describers."""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmmc.core.registry import build
from fmmc.data.records import Region
from fmmc.data.regions import load_region
from fmmc.language.cache import DescriptionCache, region_keys
from fmmc.language.describers import Describer, describe_regions


def _put_many(path: str, worker: int, n: int) -> None:  # runs in a spawned process
    cache = DescriptionCache(path)
    for i in range(n):
        cache.put(f"img{worker}-{i}", "", "d", "v1", f"text {worker} {i}")


def test_get_put_roundtrip_and_wal(tmp_path: Path):
    path = tmp_path / "sub" / "desc.sqlite"
    cache = DescriptionCache(path)
    assert cache.get("a", "", "openai:m", "v1") is None
    cache.put("a", "", "openai:m", "v1", "glossy white")
    cache.put("a", "", "openai:m", "v1", "glossy white porcelain")  # replace
    assert cache.get("a", "", "openai:m", "v1") == "glossy white porcelain"
    assert cache.get("a", "", "openai:m", "v2") is None  # another prompt version misses
    assert cache.get("a", "m", "openai:m", "v1") is None
    assert cache.get("a", "", "openai:other", "v1") is None
    assert len(cache) == 1
    cache.close()
    assert DescriptionCache(path).get("a", "", "openai:m", "v1") == "glossy white porcelain"  # persisted
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_puts_from_threads(tmp_path: Path):
    cache = DescriptionCache(tmp_path / "desc.sqlite")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                cache.put(f"img{t}-{i}", "", "d", "v1", f"text {t} {i}")
                assert cache.get(f"img{t}-{i}", "", "d", "v1") == f"text {t} {i}"
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(cache) == 400


def test_concurrent_puts_from_processes(tmp_path: Path):
    path = str(tmp_path / "desc.sqlite")
    DescriptionCache(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_put_many, args=(path, w, 100)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = DescriptionCache(path)
    assert len(cache) == 200
    assert cache.get("img1-99", "", "d", "v1") == "text 1 99"


def _write_region_files(root: Path) -> list[Region]:
    rng = np.random.default_rng(0)
    regions = []
    for i in range(3):
        img = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(img)
        mask = np.zeros((40, 60), dtype=np.uint8)
        mask[5:30, 10:40] = 255
        Image.fromarray(mask).save(root / f"mask{i}.png")
        regions.append(Region(image=img, mask=root / f"mask{i}.png", label="metal", description=f"desc {i}"))
    return regions


def test_region_keys(tmp_path: Path):
    r = _write_region_files(tmp_path)[0]
    image_sha = hashlib.sha256(r.image.read_bytes()).hexdigest()
    assert region_keys(r) == (image_sha, hashlib.sha256(r.mask.read_bytes()).hexdigest())
    boxed = Region(image=r.image, box=(1, 2, 30, 40))
    assert region_keys(boxed) == (image_sha, hashlib.sha256(b"box:1,2,30,40").hexdigest())
    assert region_keys(Region(image=r.image)) == (image_sha, "")
    with pytest.raises(FileNotFoundError):
        region_keys(Region(image=tmp_path / "missing.png"))


def test_load_region_mask_box_and_jpeg_mask(tmp_path: Path):
    r = _write_region_files(tmp_path)[0]
    img, mask = load_region(r)
    assert img.size == (60, 40) and mask is not None and mask.sum() == 25 * 30
    _, box_mask = load_region(Region(image=r.image, box=(0, 0, 10, 20)))
    assert box_mask is not None and box_mask.sum() == 200
    assert load_region(Region(image=r.image))[1] is None
    jpeg = np.zeros((40, 60), dtype=np.uint8)
    jpeg[10:20, 10:20] = 255
    Image.fromarray(jpeg).save(tmp_path / "m.jpg", quality=70)  # JPEG: not exactly binary
    _, jmask = load_region(Region(image=r.image, mask=tmp_path / "m.jpg"))
    assert jmask is not None and abs(int(jmask.sum()) - 100) < 20


class CountingDescriber:
    """Thread-safe, region-aware; fails on purpose for ids containing 'bad'."""

    def __init__(self, prompt_version: str = "v1") -> None:
        self.spec = "test:counting"
        self.prompt_version = prompt_version
        self.calls = 0
        self._lock = threading.Lock()

    def describe(self, image, mask, region=None) -> str:
        with self._lock:
            self.calls += 1
        assert image.size == (60, 40) and mask is not None and mask.shape == (40, 60)
        if "bad" in region.id:
            raise RuntimeError("model exploded")
        return f"text of {region.id}"


def test_describe_regions_cache_and_failures(tmp_path: Path):
    regions = _write_region_files(tmp_path)
    regions.append(Region(image=tmp_path / "missing.png", id="missing"))
    regions.append(Region(image=regions[0].image, box=(0, 0, 60, 40), id="bad one"))
    cache = DescriptionCache(tmp_path / "desc.sqlite")
    d = CountingDescriber()
    assert isinstance(d, Describer)
    texts, failures = describe_regions(regions, d, cache, progress=False)
    assert texts[:3] == [f"text of {r.id}" for r in regions[:3]]
    assert texts[3] is None and texts[4] is None
    assert [f[0] for f in failures] == ["missing", "bad one"]
    assert "missing.png: file not found" in failures[0][1] and "model exploded" in failures[1][1]
    assert d.calls == 4
    texts2, _ = describe_regions(regions, d, cache, progress=False)
    assert texts2 == texts and d.calls == 5  # only the failed one is retried
    texts3, _ = describe_regions(regions[:3], CountingDescriber("v2"), cache, progress=False)
    assert texts3 == texts[:3]  # a new prompt version misses but gives the same answers here


def test_describe_regions_threads_keep_order(tmp_path: Path):
    regions = _write_region_files(tmp_path) * 4
    regions = [Region(image=r.image, mask=r.mask, id=f"r{i}") for i, r in enumerate(regions)]
    texts, failures = describe_regions(regions, CountingDescriber(), None, progress=False, workers=4)
    assert failures == [] and texts == [f"text of r{i}" for i in range(len(regions))]


def test_none_and_metadata_describers(tmp_path: Path):
    regions = _write_region_files(tmp_path)
    regions.append(Region(image=tmp_path / "missing.png", id="nodesc"))  # no image needed, no description
    cache = DescriptionCache(tmp_path / "desc.sqlite")
    texts, failures = describe_regions(regions, build("describer", "none"), cache, progress=False)
    assert texts == ["", "", "", ""] and failures == []
    meta = build("describer", "metadata")
    assert meta.spec == "metadata" and isinstance(meta, Describer)
    texts, failures = describe_regions(regions, meta, cache, progress=False)
    assert texts == ["desc 0", "desc 1", "desc 2", None]
    assert failures[0][0] == "nodesc" and "'nodesc'" in failures[0][1]
    assert len(cache) == 0  # nothing worth caching
    with pytest.raises(ValueError, match="takes no argument"):
        build("describer", "none:x")


class BrokenCache(DescriptionCache):
    def put(self, *args: str) -> None:
        raise sqlite3.OperationalError("database is locked")


def test_a_failing_cache_does_not_lose_descriptions(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    regions = _write_region_files(tmp_path)
    texts, failures = describe_regions(regions, CountingDescriber(), BrokenCache(tmp_path / "c.sqlite"), progress=False)
    assert failures == [] and texts == [f"text of {r.id}" for r in regions]
    assert "write failed" in caplog.text
