"""Models and feature caches are written readable by others (0666 & ~umask), not owner-only as safetensors
would leave them: docs/ray.md puts both on a shared filesystem (issue 10, point 8)."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from fixtures_serve import tiny_model_dir

from fmmc.model.classifier import MaterialClassifier
from fmmc.vision.cache import FeatureCache


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_saved_model_and_cache_shards_are_group_readable(tmp_path_factory, tmp_path, umask_022):
    model = MaterialClassifier.from_pretrained(tiny_model_dir(tmp_path_factory))
    out = model.save_pretrained(tmp_path / "m")
    assert _mode(out / "model.safetensors") == 0o644 and _mode(out / "config.json") == 0o644
    cache = FeatureCache(tmp_path / "cache", "ns", shard_size=1)
    cache.put("k", torch.ones(3))
    cache.commit()
    shards = list((tmp_path / "cache" / "ns").glob("*.safetensors"))
    assert shards and all(_mode(p) == 0o644 for p in shards)
    assert torch.equal(FeatureCache(tmp_path / "cache", "ns").get("k"), torch.ones(3))
