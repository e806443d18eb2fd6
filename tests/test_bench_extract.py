"""The extraction-path changes measured by benchmarks/bench_extract.py, and the benchmark's own arithmetic.

Regions of one image share one backbone forward (extract_regions and extract_arrays) and give the same
features as when each is extracted alone; ``compile=True`` gives the eager features.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmmc.core.registry import build
from fmmc.data.records import Region
from fmmc.vision.extractor import FeatureExtractor

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_extract.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_extract", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _image_with_masks(root: Path, name: str, seed: int, n_masks: int) -> list[Region]:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (120, 150, 3), dtype=np.uint8)).save(root / f"{name}.jpg", quality=92)
    regions = []
    for k in range(n_masks):
        m = np.zeros((120, 150), dtype=np.uint8)
        m[10 + 20 * k : 60 + 20 * k, 5 + 30 * k : 80 + 30 * k] = 255
        Image.fromarray(m).save(root / f"{name}_m{k}.png")
        regions.append(Region(image=root / f"{name}.jpg", mask=root / f"{name}_m{k}.png", id=f"{name}/{k}"))
    return regions


class CountingBackbone(torch.nn.Module):
    """Wraps a backbone and records the batch size of every forward."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.preprocess, self.feature_dim = inner.preprocess, inner.feature_dim
        self.batches: list[int] = []

    def forward(self, pixels: torch.Tensor):
        self.batches.append(int(pixels.shape[0]))
        return self.inner(pixels)


@pytest.fixture()
def backbone(tiny_dinov2):
    return CountingBackbone(build("backbone", f"hf:{tiny_dinov2}", image_size=112))


def test_regions_of_one_image_share_one_forward_and_match_alone(backbone, tmp_path):
    regions = _image_with_masks(tmp_path, "a", 0, 3) + _image_with_masks(tmp_path, "b", 1, 1)
    ex = FeatureExtractor(backbone, pooling="max", batch_size=8, cache=None)
    shared, ok, failed = ex.extract_regions(regions, progress=False)
    assert ok == [0, 1, 2, 3] and not failed
    assert backbone.batches == [2]  # two images, four regions
    alone = torch.cat([ex.extract_regions([r], progress=False)[0] for r in regions])
    torch.testing.assert_close(shared, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(shared[0], shared[1])  # different masks, different features


def test_extract_arrays_shares_the_forward_of_one_image_object(backbone):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    other = Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    m1 = np.zeros((112, 112), dtype=bool)
    m1[:50] = True
    ex = FeatureExtractor(backbone, pooling="mean", batch_size=8)
    feats = ex.extract_arrays([(img, m1), (img, ~m1), (other, None)])
    assert feats.shape[0] == 3 and backbone.batches == [2]
    torch.testing.assert_close(feats[1], ex.extract_arrays([(img, ~m1)])[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_extraction_matches_eager(tiny_dinov2, tmp_path):
    pytest.importorskip("torch._inductor")
    regions = _image_with_masks(tmp_path, "a", 0, 2) + _image_with_masks(tmp_path, "b", 1, 1)
    bb = build("backbone", f"hf:{tiny_dinov2}", image_size=112)
    eager = FeatureExtractor(bb, batch_size=4, cache=None).extract_regions(regions, progress=False)[0]
    try:
        compiled = FeatureExtractor(bb, batch_size=4, cache=None, compile=True).extract_regions(regions, progress=False)[0]
    except Exception as e:  # noqa: BLE001 - no C++ compiler etc.: compile is optional
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)


def test_benchmark_arithmetic_is_hand_checkable(tmp_path):
    bench = _bench_module()
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(bench.cosines(a, np.array([[2.0, 0.0], [1.0, 0.0]])), [1.0, np.sqrt(0.5)])
    rounds = [{"naive": 1.0, "fmmc_fp32": 2.0, "ceiling": {"fp32": 100.0, "bf16": 200.0}},
              {"naive": 1.0, "fmmc_fp32": 1.0, "ceiling": {"fp32": 50.0, "bf16": 100.0}},
              {"naive": 2.0, "fmmc_fp32": 3.0, "ceiling": {"fp32": 100.0, "bf16": 200.0}}]
    rows = bench.summarize_rounds(rounds, gflop=10.0)
    assert rows["fmmc_fp32"]["img_per_s"] == 2.0 and rows["fmmc_fp32"]["gflop_per_s"] == 20.0
    assert rows["fmmc_fp32"]["of_fp32_ceiling"] == 0.2  # per round 0.2, 0.2, 0.3
    assert rows["fmmc_fp32"]["vs_naive"] == 1.5 and rows["fmmc_fp32"]["vs_naive_max"] == 2.0
    items = bench.write_jpegs(tmp_path, 2, size=(64, 48))
    assert Image.open(items[0]["image"]).size == (64, 48)
    assert set(np.unique(np.asarray(Image.open(items[1]["mask"])))) <= {0, 255}


def test_forward_batch_splits_calls_without_changing_features(backbone, tmp_path):
    regions = [r for k in range(3) for r in _image_with_masks(tmp_path, f"i{k}", k, 1)]
    whole = FeatureExtractor(backbone, batch_size=4, cache=None, forward_batch=4).extract_regions(regions, progress=False)[0]
    assert backbone.batches == [3]
    backbone.batches.clear()
    ones = FeatureExtractor(backbone, batch_size=4, cache=None, forward_batch=1).extract_regions(regions, progress=False)[0]
    assert backbone.batches == [1, 1, 1]
    torch.testing.assert_close(ones, whole, rtol=1e-4, atol=1e-5)
    # CPU default: about 200k input pixels per call, never more than the batch
    assert FeatureExtractor(backbone, batch_size=8).forward_batch == 8  # 112x112 inputs
    big = build("backbone", f"hf:{backbone.inner.model.name_or_path}", image_size=448)
    assert FeatureExtractor(big, batch_size=8).forward_batch == 1


def test_channels_last_conv_backbone_gives_the_same_features():
    pytest.importorskip("efficientnet_lite_pytorch")
    bb = build("backbone", "builtin:efficientnet-lite0", image_size=224)
    rng = np.random.default_rng(0)
    items = [(Image.fromarray(rng.integers(0, 255, (200, 260, 3), dtype=np.uint8)), None) for _ in range(2)]
    plain = FeatureExtractor(bb, pooling="mean", channels_last=False).extract_arrays(items)
    nhwc = FeatureExtractor(bb, pooling="mean")  # conv net: channels_last by default
    assert nhwc.channels_last
    torch.testing.assert_close(nhwc.extract_arrays(items), plain, rtol=1e-4, atol=1e-4)
