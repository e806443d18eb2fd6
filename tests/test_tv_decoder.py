"""The ``torchvision-gpu`` decoder against the one decode rule (``pil``): the documented tolerance.

torchvision does not import beside the main venv's torch, so CI runs this file in its second environment
(torch 2.14.1 + torchvision 0.29.1, ``.ci/run``); there the decoder runs on the CPU device (libjpeg-turbo),
the same code that runs nvJPEG on a GPU. Bounds: mean |pixel diff| < 1 level of 255 and max < 24 levels
after the resize, pooled features at cosine >= 0.999, the same cache hits, one bad JPEG failing alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision.io", reason="torchvision: CI runs this file in its second environment")

from fmmc.core.registry import build  # noqa: E402
from fmmc.data.dataset import load_dataset  # noqa: E402
from fmmc.data.imageio import load_image  # noqa: E402
from fmmc.vision.cache import namespace_of  # noqa: E402
from fmmc.vision.extractor import FeatureExtractor, to_pixels  # noqa: E402
from fmmc.vision.tv_decode import decode, read_jpeg  # noqa: E402
from tests.conftest import write_dataset  # noqa: E402


def _photo(path: Path, size: tuple[int, int] = (640, 480), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.BICUBIC)  # smooth, photo-like content
    img.save(path, quality=90)
    return path


def _extractor(bb: Path, decoder: str, **kw) -> FeatureExtractor:
    return FeatureExtractor(build("backbone", f"hf:{bb}", image_size=112), batch_size=4, decoder=decoder,
                            device="cpu", **kw)


def test_pixels_within_tolerance_of_pil(tiny_dinov2: Path, tmp_path: Path):
    ex = _extractor(tiny_dinov2, "torchvision-gpu")
    for k, size in enumerate([(640, 480), (300, 500), (112, 112)]):
        path = _photo(tmp_path / f"p{k}.jpg", size, seed=k)
        ref = to_pixels(load_image(path), ex.pre)
        (got,) = decode([read_jpeg(path)], ex.pre, torch.device("cpu"))
        assert isinstance(got, torch.Tensor) and got.shape == ref.shape
        std = torch.tensor(ex.pre.std).view(3, 1, 1)
        levels = ((got - ref) * std * 255).abs()  # back to 8-bit levels
        assert float(levels.mean()) < 1.0 and float(levels.max()) < 24, (size, float(levels.mean()))


def test_features_match_pil_and_bad_jpeg_fails_alone(tiny_dinov2: Path, tmp_path: Path):
    root = write_dataset(tmp_path / "ds", n_per_class=3, size=96)
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    Image.open(root / lines[1]["file_name"]).save(root / "images" / "as_png.png")  # not a JPEG: one rule
    lines[1]["file_name"] = "images/as_png.png"
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)  # JPEG magic, no image
    lines.append({**lines[0], "file_name": "images/broken.jpg"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    regions = load_dataset(root)
    ref, ok_ref, failed_ref = _extractor(tiny_dinov2, "pil").extract_regions(regions, progress=False)
    got, ok, failed = _extractor(tiny_dinov2, "torchvision-gpu").extract_regions(regions, progress=False)
    assert ok == ok_ref and len(ok) == len(regions) - 1
    assert [r for r, _ in failed] == [regions[-1].id] and "broken.jpg" in failed[0][1]
    assert len(failed_ref) == 1
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert float(cos.min()) >= 0.999, cos
    png = ok.index(1)
    assert torch.equal(got[png], ref[png])  # a PNG decodes by the one rule, in the worker


def test_workers_and_cache_key(tiny_dinov2: Path, tmp_path: Path):
    regions = load_dataset(write_dataset(tmp_path / "ds", n_per_class=4, size=80))
    base = _extractor(tiny_dinov2, "torchvision-gpu", num_workers=0).extract_regions(regions, progress=False)[0]
    two = _extractor(tiny_dinov2, "torchvision-gpu", num_workers=2).extract_regions(regions, progress=False)[0]
    assert torch.equal(base, two)
    keys = {namespace_of(_extractor(tiny_dinov2, d).settings()) for d in ("pil", "torchvision-gpu")}
    assert len(keys) == 2
