"""Stored reference outputs of the pixel path (as timm and open_clip keep): a change to decoding, resizing,
normalisation, mask rules or pooling shows up here as a failing test, not as a silent shift.

The inputs are committed files (``tests/data/reference/``): a JPEG photo with EXIF rotation, a JPEG mask,
a seeded tiny DINOv2 checkpoint (saved with ``save_pretrained``) and the real EfficientNet-Lite0 weights
that ``fmmc[offline]`` installs. Features go through the public path (``build("backbone", spec)`` ->
``FeatureExtractor.extract_regions``, the path training and eval use) and are compared with the stored
vectors. After an *intended* change of the pixel path, regenerate and say why in the commit:

    python tests/test_reference_outputs.py --regenerate
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REF = Path(__file__).parent / "data" / "reference"
CASES = [  # (name, backbone spec, image_size, pooling, region)
    ("dinov2-max-mask", "hf:{ref}/tiny_dinov2", 56, "max", "mask"),
    ("dinov2-mean-box", "hf:{ref}/tiny_dinov2", 56, "mean", "box"),
    ("dinov2-cls-whole", "hf:{ref}/tiny_dinov2", 56, "cls", "whole"),
    ("effnet-max-mask", "builtin:efficientnet-lite0", 128, "max", "mask"),
]
ATOL = 1e-4


def _region(kind: str):
    from fmmc.data.records import Region

    image = REF / "photo.jpg"
    if kind == "mask":
        return Region(image=image, mask=REF / "mask.jpg")
    if kind == "box":
        return Region(image=image, box=(30, 20, 150, 110))
    return Region(image=image)


def _features(spec: str, image_size: int, pooling: str, region: str) -> np.ndarray:
    from fmmc.core.registry import build
    from fmmc.vision.extractor import FeatureExtractor

    bb = build("backbone", spec.format(ref=REF), image_size=image_size)
    feats, ok, failures = FeatureExtractor(bb, pooling=pooling, cache=None).extract_regions([_region(region)],
                                                                                             progress=False)
    assert not failures, failures
    return feats[0].numpy().astype(np.float64)


@pytest.mark.parametrize("name, spec, image_size, pooling, region", CASES, ids=[c[0] for c in CASES])
def test_pixel_path_matches_stored_reference(name, spec, image_size, pooling, region):
    if spec.startswith("builtin:"):
        pytest.importorskip("efficientnet_lite_pytorch")
    stored = json.loads((REF / "features.json").read_text())[name]
    got = _features(spec, image_size, pooling, region)
    assert got.shape == (stored["dim"],)
    np.testing.assert_allclose(got[: len(stored["head"])], stored["head"], atol=ATOL, rtol=0)
    assert float(np.linalg.norm(got)) == pytest.approx(stored["norm"], abs=ATOL * 10)
    assert float(got.sum()) == pytest.approx(stored["sum"], abs=ATOL * 10 * max(1.0, abs(stored["sum"])))


def test_reference_inputs_are_what_they_claim():
    from PIL import Image

    with Image.open(REF / "photo.jpg") as im:
        assert im.format == "JPEG" and im.getexif().get(0x0112) == 6  # rotated: EXIF transpose is exercised
    with Image.open(REF / "mask.jpg") as m:
        assert m.format == "JPEG" and len(np.unique(np.asarray(m.convert("L")))) > 2  # a non-binary JPEG mask


def regenerate() -> None:
    """Write the inputs (once) and the stored features (every time this runs)."""
    import torch
    from PIL import Image

    REF.mkdir(parents=True, exist_ok=True)
    if not (REF / "photo.jpg").exists():
        rng = np.random.default_rng(2026)
        h, w = 160, 200  # stored as 200 wide x 160 high, rotated by EXIF to 160 x 200
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([120 + 80 * np.sin(xx / 9.0), 110 + 70 * np.cos(yy / 6.0), 100 + 50 * np.sin((xx - yy) / 4.0)], -1)
        arr = np.clip(arr + rng.normal(0, 20, arr.shape), 0, 255).astype(np.uint8)
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(arr).save(REF / "photo.jpg", quality=90, exif=exif)
        mask = np.zeros((200, 160), np.uint8)  # upright size: 160 wide x 200 high
        mask[40:150, 30:120] = 255
        Image.fromarray(mask).save(REF / "mask.jpg", quality=55)
    if not (REF / "tiny_dinov2").exists():
        from transformers import Dinov2Config, Dinov2Model

        torch.manual_seed(0)
        cfg = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           patch_size=14, image_size=56)
        Dinov2Model(cfg).eval().save_pretrained(REF / "tiny_dinov2")
        (REF / "tiny_dinov2" / "preprocessor_config.json").write_text(json.dumps(
            {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3,
             "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255}, indent=1))
    out = {}
    for name, spec, size, pooling, region in CASES:
        f = _features(spec, size, pooling, region)
        out[name] = {"dim": int(f.shape[0]), "head": [round(float(v), 7) for v in f[:16]],
                     "norm": round(float(np.linalg.norm(f)), 7), "sum": round(float(f.sum()), 7)}
    (REF / "features.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {REF / 'features.json'}")


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        regenerate()
    else:
        print(__doc__)
