"""The Ray engine on one local 2-CPU Ray instance: same results as the local engine, crash recovery, resume.

Stage classes live at module level so Ray workers can import them (``tests/`` is put on their PYTHONPATH).
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data")

from fmmc.engine import get_engine  # noqa: E402
from fmmc.synth.runner import read_manifest_file, run_stage  # noqa: E402

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


def _ray(**kw):
    return get_engine("ray", max_restarts=2, max_task_retries=2, **kw)


# --------------------------------------------------------------------------------------------- stages
class Square:
    """Deterministic; appends the ids it computes to ``log`` (one line per call); dies once if ``marker``."""

    def __init__(self, log: str | None = None, marker: str | None = None) -> None:
        self.log, self.marker = log, marker

    def __call__(self, items: list[dict]) -> list[dict]:
        if self.marker is not None and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(3)  # the worker process dies mid-run, before returning anything
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(" ".join(i["id"] for i in items) + "\n")
        return [{**i, "y": i["x"] ** 2, "tag": f"{i['x']:04d}", "status": "ok"} for i in items]


class Poison:
    """Kills its worker whenever it sees x == 3."""

    def __call__(self, items: list[dict]) -> list[dict]:
        if any(i["x"] == 3 for i in items):
            os._exit(3)
        return [{**i, "status": "ok"} for i in items]


def _items(n: int) -> list[dict]:
    return [{"id": f"item-{k:03d}", "x": k, "nested": {"a": [k, None, 0.5], "b": "é"}} for k in range(n)]


def _sorted_lines(stage_dir: Path) -> list[bytes]:
    return sorted((stage_dir / "manifest.jsonl").read_bytes().splitlines())


# ---------------------------------------------------------------------------------------------- tests
def test_ray_equals_local_through_the_runner(ray_local, tmp_path) -> None:
    items = _items(23)
    loc = run_stage("square", items, tmp_path / "local", Square, batch_size=4, engine="local", progress=False)
    ray_ = run_stage("square", items, tmp_path / "ray", Square, batch_size=4, engine=_ray(), progress=False,
                     concurrency=2)
    assert loc.done_now == ray_.done_now == 23 and not ray_.failures
    assert _sorted_lines(tmp_path / "local") == _sorted_lines(tmp_path / "ray")  # byte-identical after sorting
    info = json.loads((tmp_path / "ray" / "engine.json").read_text())
    assert info["engine"] == "ray" and info["concurrency"] == 2 and info["batch_size"] == 4
    assert info["num_gpus_per_actor"] == 0.0 and info["ray_version"] == ray_local.__version__


def test_actor_killed_mid_run_loses_and_duplicates_nothing(ray_local, tmp_path) -> None:
    items = _items(17)
    marker = tmp_path / "died-once"
    res = run_stage("square", items, tmp_path / "ray", partial(Square, marker=str(marker)), batch_size=3,
                    engine=_ray(), progress=False, concurrency=2)
    assert marker.exists()  # an actor really died
    assert not res.failures and res.done_now == 17
    ids = [r["id"] for r in read_manifest_file(tmp_path / "ray" / "manifest.jsonl")]
    assert sorted(ids) == [i["id"] for i in items]  # each exactly once
    run_stage("square", items, tmp_path / "local", Square, batch_size=3, engine="local", progress=False)
    assert _sorted_lines(tmp_path / "local") == _sorted_lines(tmp_path / "ray")


def test_resume_skips_finished_items(ray_local, tmp_path) -> None:
    items = _items(20)
    log = tmp_path / "calls.txt"
    run_stage("square", items[:12], tmp_path / "out", partial(Square, log=str(log)), batch_size=4,
              engine="local", progress=False)
    log.unlink()
    res = run_stage("square", items, tmp_path / "out", partial(Square, log=str(log)), batch_size=4,
                    engine=_ray(), progress=False, concurrency=2)
    computed = log.read_text().split()
    assert sorted(computed) == [i["id"] for i in items[12:]]  # only the unfinished ones ran
    assert res.done_before == 12 and res.done_now == 8
    assert len(read_manifest_file(tmp_path / "out" / "manifest.jsonl")) == 20


def test_an_item_that_always_kills_its_worker_is_reported(ray_local) -> None:
    got: list[dict] = []
    engine = get_engine("ray", max_restarts=1, max_task_retries=1)
    failures = engine.map_stage(_items(6), Poison, batch_size=2, concurrency=2, on_result=got.extend)
    # its batch is lost, rerun one item at a time: only the poison item is lost for good
    assert [f[0] for f in failures] == ["item-003"] and "lost on the Ray cluster" in failures[0][1]
    assert sorted(r["id"] for r in got) == [f"item-{k:03d}" for k in range(6) if k != 3]


class BadInit:
    def __init__(self) -> None:
        raise ValueError("cannot load model /nope: not found")


def test_a_stage_that_cannot_start_raises_with_its_cause(ray_local) -> None:
    with pytest.raises(RuntimeError, match="before any batch finished: ValueError: cannot load model /nope"):
        _ray().map_stage(_items(4), BadInit, batch_size=2, concurrency=1)


def test_stage_exceptions_are_retried_then_reported(ray_local) -> None:
    from test_engine_core import Doubler

    got: list[dict] = []
    failures = _ray().map_stage(_items(6), partial(Doubler, ("item-002",)), batch_size=3, concurrency=1,
                                on_result=got.extend)
    assert failures == [("item-002", "RuntimeError: bad item in batch")]
    assert len(got) == 5


# ------------------------------------------------------------------------------- feature extraction
def test_features_on_ray_equal_local_and_train_reuses_them(ray_local, tmp_path, tiny_dataset, tiny_dinov2,
                                                           capsys) -> None:
    import shutil

    import torch

    from fmmc.cli.main import main
    from fmmc.data.dataset import load_dataset
    from fmmc.engine.features import FeatureJob, extract_features
    from fmmc.model.config import FeatureSpec
    from fmmc.model.encoder import build_encoder

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "images" / "metal_001.jpg").write_bytes(b"not a jpeg")  # one bad region
    regions = load_dataset(data)
    job = FeatureJob(backbone=f"hf:{tiny_dinov2}", image_size=112, batch_size=4, cache_dir=str(tmp_path / "loc"))
    loc = extract_features(regions, job, get_engine("local"), progress=False)
    code = main(["features", str(data), "--backbone", f"hf:{tiny_dinov2}", "--image-size", "112", "--batch-size", "4",
                 "--cache-dir", str(tmp_path / "ray"), "--engine", "ray", "--concurrency", "2", "--quiet"])
    out = capsys.readouterr()
    assert code == 1  # the bad region failed, and the command says so
    assert "29 extracted" in out.out and "metal_001" in out.err
    assert loc.extracted == 29 and [f[0] for f in loc.failures] == ["images/metal_001.jpg:masks/metal_001.png"]
    ns = next((tmp_path / "ray" / "features").iterdir())
    assert ns.name == loc.cache_dir.name  # same namespace
    info = json.loads((ns / "engine.json").read_text())
    assert info["engine"] == "ray" and info["concurrency"] == 2

    # `fmmc train` (head mode) builds this encoder: it must find every feature and run no backbone
    enc = build_encoder("vision", FeatureSpec(backbone=f"hf:{tiny_dinov2}", image_size=112), None, None, cache_dir=tmp_path / "ray")
    assert enc.extractor.cache.dir == ns
    enc.extractor.pooled = lambda *a, **k: pytest.fail("feature recomputed instead of read from the cache")
    got = enc.encode_regions(regions, progress=False)
    enc_loc = build_encoder("vision", FeatureSpec(backbone=f"hf:{tiny_dinov2}", image_size=112), None, None, cache_dir=tmp_path / "loc")
    enc_loc.extractor.pooled = enc.extractor.pooled
    want = enc_loc.encode_regions(regions, progress=False)
    assert got.index == want.index and len(got.index) == 29
    torch.testing.assert_close(got.vis, want.vis, rtol=1e-4, atol=1e-5)  # float tolerance: thread counts differ

    job_ray = FeatureJob(**{**job.__dict__, "cache_dir": str(tmp_path / "ray")})
    again = extract_features(regions, job_ray, _ray(), progress=False)  # resume: nothing left to extract
    assert again.extracted == 0 and again.cached == 29


# -------------------------------------------------------------------------------------- descriptions
class EchoDescriber:
    """A deterministic stand-in for a VLM: describes the region by its mean colour under the mask."""

    prompt_version = "v1"

    def describe(self, image, mask, region=None) -> str:
        arr = np.asarray(image, dtype=np.float32)
        sel = arr[mask] if mask is not None else arr.reshape(-1, 3)
        return "mean " + " ".join(f"{v:.1f}" for v in sel.mean(0))


def make_echo(**_: object) -> EchoDescriber:
    return EchoDescriber()


def test_descriptions_on_ray_equal_local(ray_local, tmp_path, tiny_dataset) -> None:
    from fmmc.data.dataset import load_dataset
    from fmmc.engine.describe import describe_with_engine
    from fmmc.language.cache import DescriptionCache, region_keys

    regions = load_dataset(tiny_dataset)[:10]
    spec = "test_engine_ray:make_echo"
    loc = describe_with_engine(regions, spec, get_engine("local"), cache_dir=str(tmp_path / "loc"), progress=False)
    ray_ = describe_with_engine(regions, spec, _ray(), cache_dir=str(tmp_path / "ray"), batch_size=3,
                                concurrency=2, progress=False)
    assert loc.described == ray_.described == 10 and not ray_.failures
    a, b = DescriptionCache(loc.cache_path), DescriptionCache(ray_.cache_path)
    for r in regions:
        keys = region_keys(r)  # the registry names a built describer by its spec
        assert a.get(*keys, spec, "v1") == b.get(*keys, spec, "v1") is not None


# ------------------------------------------------------------------------------------ synth generate
def test_synth_generate_cli_on_ray_equals_local(ray_local, tmp_path, monkeypatch) -> None:
    """`fmmc synth generate --engine ray` with the tiny diffusers pipeline and a *relative* out= folder."""
    pytest.importorskip("diffusers")
    from fixtures_synth import make_tiny_sd_pipeline
    from PIL import Image

    from fmmc.cli.main import main

    tiny = Path(__file__).parents[1] / "configs" / "synth" / "tiny.yaml"
    if not tiny.is_file():
        pytest.skip("configs/synth/tiny.yaml not found")
    monkeypatch.chdir(tmp_path)  # actors move to the driver's folder, so out=local-out works there too
    make_tiny_sd_pipeline(tmp_path / "tiny-sd")
    for name, extra in (("local", []), ("ray", ["--engine", "ray", "--concurrency", "2"])):
        code = main(["synth", "generate", str(tiny), f"out={name}-out", "generate.model_id=tiny-sd",
                     "triplets.per_class=1", "--no-progress", *extra])
        assert code == 0, name
    assert _sorted_lines(tmp_path / "local-out" / "generate") == _sorted_lines(tmp_path / "ray-out" / "generate")
    records = read_manifest_file(tmp_path / "ray-out" / "generate" / "manifest.jsonl")
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)  # 3 classes x 1 triplet x 2 seeds
    for rec in records:
        a = np.asarray(Image.open(tmp_path / "local-out" / rec["image"]), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "ray-out" / rec["image"]), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # same seed, same batch: equal up to one 8-bit level of float rounding
    info = json.loads((tmp_path / "ray-out" / "generate" / "engine.json").read_text())
    assert info["engine"] == "ray" and info["batch_size"] == 2 and info["concurrency"] == 2
