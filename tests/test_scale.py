"""Head training reads its features from the cache files (issue 12, point 4): correctness, not speed.

Streamed from disk or held in memory, the rows are the cached bytes, so the head is the same; reads across
many shards and parts return exactly what was written; a streamed read opens only the files it needs, at
most ``MAX_OPEN`` at a time, and finds a file another process merged away. Speed and memory are measured
by ``benchmarks/bench_scale.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fmmc.train import feature_rows
from fmmc.train.config import TrainConfig
from fmmc.train.feature_rows import FeatureRows
from fmmc.vision.cache import FeatureCache, tensor_spans

DIM = 12


def _vec(i: int) -> torch.Tensor:
    return torch.arange(DIM, dtype=torch.float32) + 1000.0 * i + 0.25


def _fill(cache: FeatureCache, keys: list[str], every: int = 3) -> None:
    for j, k in enumerate(keys):
        cache.put(k, _vec(int(k[1:])))
        if j % every == every - 1:
            cache.commit()
    cache.commit()


@pytest.fixture()
def many_files(tmp_path: Path) -> tuple[Path, list[str]]:
    """100 vectors spread over merged shards and unmerged parts of two writers."""
    a = FeatureCache(tmp_path, "ns", shard_size=16)
    b = FeatureCache(tmp_path, "ns", shard_size=16)
    keys = [f"k{i}" for i in range(100)]
    _fill(a, keys[:70])  # merges every 16 into a shard, leaves the rest as parts
    _fill(b, keys[70:], every=4)
    return tmp_path, keys


def test_reads_across_shards_and_parts_return_what_was_written(many_files):
    root, keys = many_files
    cache = FeatureCache(root, "ns")
    names = {p.name for p in cache.files_of(keys)}
    assert any(n.startswith("shard-") for n in names) and any(n.startswith("part-") for n in names)
    order = keys[:]
    random.Random(0).shuffle(order)
    want = torch.stack([_vec(int(k[1:])) for k in order])
    for budget in (0, 1 << 30):  # streamed, in memory
        rows = FeatureRows.from_cache(cache, order, budget)
        assert rows.in_memory == (budget > 0) and len(rows) == 100
        idx = torch.tensor([5, 0, 99, 5, 42, 17, 17])  # any order, repeats
        assert torch.equal(rows.take(idx), want[idx])
        assert torch.equal(rows.take(torch.arange(100)), want)
        assert torch.equal(rows.take(torch.empty(0, dtype=torch.long)), torch.empty(0, DIM))
        assert all(torch.equal(cache.get(k), want[j]) for j, k in enumerate(order))  # what get() serves
        rows.close()


def test_tensor_spans_are_the_safetensors_layout(many_files):
    root, keys = many_files
    path = FeatureCache(root, "ns").files_of(keys[:1])[0]
    raw = path.read_bytes()
    stored = load_file(str(path))
    for name, span in tensor_spans(path).items():
        assert span.dtype == "F32" and span.shape == (DIM,)
        assert torch.equal(torch.from_numpy(np.frombuffer(raw[span.start : span.stop], np.float32).copy()), stored[name])
    path.write_bytes(b"\xff" * 8 + raw[8:])  # a damaged length field
    with pytest.raises(ValueError, match="not a readable safetensors file.*delete it"):
        tensor_spans(path)


def test_streamed_read_opens_only_the_files_it_needs(many_files, monkeypatch):
    root, keys = many_files
    cache = FeatureCache(root, "ns")
    files = cache.files_of(keys)
    rows = FeatureRows.from_cache(cache, keys, budget_bytes=0)
    assert rows.open_files == []  # building the index reads headers and keeps nothing open
    one = files[0]
    same = torch.tensor([j for j, p in enumerate(files) if p == one])
    assert torch.equal(rows.take(same), torch.stack([_vec(int(keys[j][1:])) for j in same.tolist()]))
    assert rows.open_files == [one]
    monkeypatch.setattr(feature_rows, "MAX_OPEN", 2)
    assert len(set(files)) > 2
    assert torch.equal(rows.take(torch.arange(100)), torch.stack([_vec(i) for i in range(100)]))
    assert len(rows.open_files) <= 2
    rows.close()
    assert rows.open_files == []


def test_a_file_merged_away_by_another_process_is_found_again(tmp_path):
    writer = FeatureCache(tmp_path, "ns", shard_size=1000)
    keys = [f"k{i}" for i in range(12)]
    _fill(writer, keys)  # four parts, not merged yet
    reader = FeatureCache(tmp_path, "ns")
    rows = FeatureRows.from_cache(reader, keys, budget_bytes=0)
    assert all(p.name.startswith("part-") for p in rows.files)
    writer.compact()  # the other process merges its parts into one shard and deletes them
    assert not any(p.is_file() for p in rows.files)
    assert torch.equal(rows.take(torch.tensor([11, 0, 6])), torch.stack([_vec(11), _vec(0), _vec(6)]))
    assert [p.name[:6] for p in rows.open_files] == ["shard-"]


def test_missing_features_say_how_to_get_them(many_files):
    root, keys = many_files
    with pytest.raises(KeyError, match="not in the feature cache.*fmmc features"):
        FeatureRows.from_cache(FeatureCache(root, "ns"), [*keys, "nope"])


def test_head_data_matches_encode_regions(tiny_dinov2, tiny_dataset, tmp_path):
    """Rows, order and failures as TwoStreamEncoder.encode_regions gives them, cached or not, for bad images too."""
    from dataclasses import replace

    from fmmc.data.dataset import load_dataset
    from fmmc.model.config import FeatureSpec
    from fmmc.model.encoder import build_encoder
    from fmmc.train.feature_data import head_data

    regions = load_dataset(tiny_dataset)[:12]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    regions[3] = replace(regions[3], image=tmp_path / "absent.jpg", id="absent")
    regions[7] = replace(regions[7], image=broken, id="broken")
    spec = FeatureSpec(backbone=f"hf:{tiny_dinov2}", image_size=112)
    want = build_encoder("vision", spec, None, None, batch_size=4, use_cache=False).encode_regions(regions, progress=False)
    encoder = build_encoder("vision", spec, None, None, batch_size=4, cache_dir=tmp_path / "cache", cache_required=True)
    for _ in ("extracted", "cached"):
        got = head_data(encoder, regions, progress=False, budget_bytes=0)
        assert got.index == want.index and got.failures == want.failures and len(got.failures) == 2
        assert not got.vis.in_memory and torch.equal(got.vis.take(torch.arange(len(got))), want.vis)
        got.close()


def _train(data: Path, backbone: Path, out: Path, cache: Path, streams: str, text: Path | None) -> Path:
    from fmmc.train.trainer import train

    cfg = TrainConfig(data=str(data), backbone=f"hf:{backbone}", image_size=112, streams=streams, epochs=6,
                      lr=3e-3, out=str(out), cache_dir=str(cache), progress=False, extract_batch_size=4,
                      text_encoder=f"hf:{text}" if text else TrainConfig.text_encoder)
    return train(cfg)


@pytest.mark.parametrize("streams", ["vision", "both"])
def test_streamed_training_gives_the_same_head(streams, tiny_dinov2, tiny_clip_text, tiny_dataset, tmp_path,
                                               monkeypatch):
    text = tiny_clip_text if streams == "both" else None
    cache = tmp_path / "cache"
    held = _train(tiny_dataset, tiny_dinov2, tmp_path / "held", cache, streams, text)
    monkeypatch.setattr(feature_rows, "IN_MEMORY_BYTES", 0)  # every split read from the cache per batch
    streamed = _train(tiny_dataset, tiny_dinov2, tmp_path / "streamed", cache, streams, text)
    a, b = load_file(str(held / "model" / "model.safetensors")), load_file(str(streamed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (held / "train_log.jsonl").read_text() == (streamed / "train_log.jsonl").read_text()
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (held, streamed))
    assert (sa["n_train"], sa["n_val"], sa["best_epoch"]) == (sb["n_train"], sb["n_val"], sb["best_epoch"])
