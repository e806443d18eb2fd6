"""Decoding workers, the draft decoder and the bf16 cast: same features for any worker count, a dead worker
reported (never a hang), bf16 within cosine 0.999 of fp32 on the real DINOv2-B architecture, and every
choice that changes a feature in the cache key."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmmc.core.registry import build
from fmmc.data.dataset import load_dataset
from fmmc.data.records import Region
from fmmc.vision import precision
from fmmc.vision.cache import namespace_of
from fmmc.vision.extractor import FeatureExtractor
from fmmc.vision.loading import RegionLoader
from tests.conftest import write_dataset


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> list[Region]:
    return load_dataset(write_dataset(tmp_path_factory.mktemp("pipe"), n_per_class=8, size=80))


def _extract(bb_dir: Path, regions: list[Region], **kw) -> torch.Tensor:
    ex = FeatureExtractor(build("backbone", f"hf:{bb_dir}", image_size=112), batch_size=4, **kw)
    feats, ok, failed = ex.extract_regions(regions, progress=False)
    assert not failed and ok == list(range(len(regions)))
    return feats


def test_same_features_for_any_worker_count(tiny_dinov2: Path, regions: list[Region]):
    base = _extract(tiny_dinov2, regions, num_workers=0)
    for n in (1, 2):
        assert torch.equal(_extract(tiny_dinov2, regions, num_workers=n), base), f"{n} workers"
    assert torch.equal(_extract(tiny_dinov2, regions, num_workers=0, prefetch=False), base)


def test_a_killed_worker_stops_the_run_with_a_message(tiny_dinov2: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """A real SIGKILL of a real worker, at a fixed batch: the worker that loads batch 5 kills itself (the
    patched method is inherited through fork), so the run cannot finish first on a fast machine."""
    many = load_dataset(write_dataset(tmp_path / "many", n_per_class=10, size=48))
    ex = FeatureExtractor(build("backbone", f"hf:{tiny_dinov2}", image_size=112), batch_size=2, num_workers=2)
    main, real = os.getpid(), RegionLoader.load_chunk

    def load_chunk(self: RegionLoader, regions, idx, in_cache=None):
        if os.getpid() != main and 10 in idx:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, regions, idx, in_cache)

    monkeypatch.setattr(RegionLoader, "load_chunk", load_chunk)
    t0 = time.time()
    with pytest.raises(RuntimeError, match="decoding worker stopped.*--num-workers 0") as caught:
        ex.extract_regions(many, progress=False)
    assert time.time() - t0 < 120
    # the dead worker is no longer registered with torch's SIGCHLD handler, even while the error (and its
    # traceback, which holds the DataLoader iterator) is alive: a SIGCHLD now must raise nothing
    os.kill(os.getpid(), signal.SIGCHLD)
    time.sleep(0.2)
    assert caught.value.__cause__ is not None
    monkeypatch.undo()  # the same extractor runs again, in this process: nothing left broken
    feats, ok, failed = ex.extract_regions(many, progress=False)
    assert not failed and len(ok) == len(many)


def _reset_on_arrival() -> None:
    raise ConnectionResetError(104, "Connection reset by peer")


class _SharedByADeadWorker:
    """Unpickles as a batch whose tensors a dead worker shared by file descriptor does: the fetch fails."""

    def __reduce__(self):
        return _reset_on_arrival, ()


def test_a_batch_lost_with_its_dead_worker_stops_the_run_with_the_message(tiny_dinov2: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    """Found by a full run here: a worker killed right after queueing a batch made the main process's
    unpickling of that batch fail (ConnectionResetError from multiprocessing's resource sharer) before
    torch's SIGCHLD handler said which worker died; the user got that traceback. Now it is the one-line
    worker message. The batch arrives through the real DataLoader and fails in the real unpickling."""
    many = load_dataset(write_dataset(tmp_path / "many", n_per_class=4, size=48))
    ex = FeatureExtractor(build("backbone", f"hf:{tiny_dinov2}", image_size=112), batch_size=2, num_workers=2)
    main, real = os.getpid(), RegionLoader.load_chunk

    def load_chunk(self: RegionLoader, regions, idx, in_cache=None):
        if os.getpid() != main and 4 in idx:
            return [_SharedByADeadWorker()]
        return real(self, regions, idx, in_cache)

    monkeypatch.setattr(RegionLoader, "load_chunk", load_chunk)
    with pytest.raises(RuntimeError, match="decoding worker stopped .*ConnectionResetError.*--num-workers 0"):
        ex.extract_regions(many, progress=False)


def test_cache_key_changes_with_dtype_and_decoder(tiny_dinov2: Path):
    def key(**kw) -> str:
        return namespace_of(FeatureExtractor(build("backbone", f"hf:{tiny_dinov2}", image_size=112), **kw).settings())

    keys = {key(), key(dtype="bf16"), key(decoder="pil-draft"), key(num_workers=2)}
    assert len(keys) == 3  # workers decode the same pixels: same key


def test_dtype_auto_says_what_it_chose(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["amx_bf16"])
    assert precision.resolve_dtype("auto", "cpu") == ("bf16", "auto: CPU has amx_bf16")
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    dtype, why = precision.resolve_dtype("auto", "cpu")
    assert dtype == "fp32" and "no AVX512-BF16 / AMX" in why
    with pytest.raises(ValueError, match="choose one of"):
        precision.resolve_dtype("int8", "cpu")


def test_bf16_cast_on_dinov2_base_keeps_cosine(tmp_path: Path, regions: list[Region]):
    """The real DINOv2-B/14 architecture (random weights) at 112 px: cast weights, not autocast."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14,
                             image_size=518)).eval().save_pretrained(tmp_path / "b14")
    some = regions[:8]
    f32 = _extract(tmp_path / "b14", some)
    ex = FeatureExtractor(build("backbone", f"hf:{tmp_path / 'b14'}", image_size=112), batch_size=4, dtype="bf16")
    assert next(ex.backbone.parameters()).dtype == torch.bfloat16  # cast, not autocast
    b16, _, _ = ex.extract_regions(some, progress=False)
    assert b16.dtype == torch.float32  # pooling and everything after in fp32
    assert float(torch.nn.functional.cosine_similarity(f32, b16).min()) >= 0.999
    # a backbone being fine-tuned keeps fp32 weights (autocast)
    tune = FeatureExtractor(build("backbone", f"hf:{tmp_path / 'b14'}", image_size=112), dtype="bf16", frozen=False)
    assert next(tune.backbone.parameters()).dtype == torch.float32


def test_draft_decoder_is_close_to_the_full_decode(tiny_dinov2: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (75, 100, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((1600, 1200), Image.BICUBIC)  # a smooth, photo-sized JPEG
    big.save(tmp_path / "big.jpg", quality=90)
    mask = np.zeros((1200, 1600), np.uint8)
    mask[300:900, 400:1300] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    r = [Region(tmp_path / "big.jpg", mask=tmp_path / "m.png", id="big")]
    full = _extract(tiny_dinov2, r)
    draft = _extract(tiny_dinov2, r, decoder="pil-draft")
    assert not torch.equal(full, draft)  # another decode ...
    assert float(torch.nn.functional.cosine_similarity(full, draft).min()) >= 0.99  # ... within the documented bound


def test_torchvision_decoder_without_torchvision_says_how_to_fix(tiny_dinov2: Path):
    import importlib.util

    from fmmc.cli.main import build_parser
    from fmmc.vision.loading import DECODERS

    if importlib.util.find_spec("torchvision") is None:  # the main venv; tests/test_tv_decoder.py runs it
        with pytest.raises(RuntimeError, match="needs torchvision.*--decoder pil"):
            FeatureExtractor(build("backbone", f"hf:{tiny_dinov2}", image_size=112), decoder="torchvision-gpu")
    choices = next(a.choices for a in build_parser()._subparsers._group_actions[0].choices["features"]._actions
                   if a.dest == "decoder")
    assert sorted(choices) == sorted(DECODERS)


def test_skipped_regions_are_named_in_the_warning(tiny_dinov2: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Found trying it as a new user: `fmmc eval` over a folder with a corrupt JPEG said only "1 of 16 regions
    skipped (bad image or mask)", without naming it."""
    import logging

    regions = load_dataset(write_dataset(tmp_path / "d", n_per_class=2, size=48))
    broken = Path(regions[1].image)
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    ex = FeatureExtractor(build("backbone", f"hf:{tiny_dinov2}", image_size=112), batch_size=2, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="fmmc.vision.extractor"):
        _, ok, failures = ex.extract_regions(regions, progress=False)
    assert len(failures) == 1 and len(ok) == len(regions) - 1
    (line,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert f"1 of {len(regions)} regions skipped" in line and regions[1].id in line and broken.name in line
