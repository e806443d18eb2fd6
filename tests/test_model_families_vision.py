"""DINOv3 (ViT, ConvNeXt) and SigLIP 2 NaFlex as `hf:` backbones, against plain transformers by hand.

Each tiny random-init model of the real architecture is saved with save_pretrained and loaded back through
``build("backbone", "hf:<dir>")``. The reference runs the plain transformers model on plainly resized
pixels, takes ``last_hidden_state``, drops the prefix tokens, reshapes the rest to the patch grid and
max-pools the grid cells a rectangle mask covers, all written out here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import shared_tiny_model
from PIL import Image

from fmmc.core.registry import build, registry
from fmmc.vision.extractor import FeatureExtractor
from fmmc.vision.protocol import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="session")
def dinov3_vit_dir(tmp_path_factory):
    return shared_tiny_model("dinov3_vit", tmp_path_factory)


@pytest.fixture(scope="session")
def dinov3_convnext_dir(tmp_path_factory):
    return shared_tiny_model("dinov3_convnext", tmp_path_factory)


@pytest.fixture(scope="session")
def siglip2_dir(tmp_path_factory):
    return shared_tiny_model("siglip2_vision", tmp_path_factory)


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pixels(img: Image.Image, size: int, mean, std) -> torch.Tensor:
    """Plain PIL bilinear resize (the checkpoints' resample=2) + /255 + normalise -> [1, 3, size, size]."""
    x = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def _rect_mask(size: tuple[int, int], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros(size[::-1], dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _fmmc_max_pool(spec: str, img: Image.Image, mask: np.ndarray, image_size: int) -> tuple[torch.Tensor, object]:
    bb = build("backbone", spec, image_size=image_size)
    return FeatureExtractor(bb, pooling="max").extract_arrays([(img, mask)]), bb


def test_dinov3_vit_drops_cls_and_4_registers_then_max_pools(dinov3_vit_dir):
    from transformers import DINOv3ViTModel

    img = _image(100, 60)
    mask = _rect_mask(img.size, 0, 0, 50, 30)  # the image's top-left quarter: grid cells [0:2, 0:2] of 4x4
    got, bb = _fmmc_max_pool(f"hf:{dinov3_vit_dir}", img, mask, image_size=64)
    assert bb.preprocess.patch_size == 16 and bb.preprocess.grid == (4, 4)
    assert bb.preprocess.resample == "bilinear" and bb.preprocess.source == "preprocessor_config.json"
    model = DINOv3ViTModel.from_pretrained(dinov3_vit_dir).eval()
    with torch.no_grad():
        tokens = model(pixel_values=_pixels(img, 64, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state
    assert tokens.shape[1] == 1 + 4 + 16
    grid = tokens[:, 5:].transpose(1, 2).reshape(1, 32, 4, 4)
    want = grid[:, :, 0:2, 0:2].amax(dim=(2, 3))
    assert torch.allclose(got, want, atol=1e-5)
    wrong = tokens[:, 1:17].transpose(1, 2).reshape(1, 32, 4, 4)[:, :, 0:2, 0:2].amax(dim=(2, 3))
    assert not torch.allclose(got, wrong, atol=1e-3)  # keeping the registers as patches would be caught
    with torch.no_grad():  # the global feature is the CLS token (pooler_output = normed token 0)
        cls = bb(_pixels(img, 64, IMAGENET_MEAN, IMAGENET_STD)).cls
    assert torch.allclose(cls, tokens[:, 0], atol=1e-5)


def test_dinov3_vit_default_size_is_448(dinov3_vit_dir):
    bb = build("backbone", f"hf:{dinov3_vit_dir}")
    assert bb.preprocess.image_size == (448, 448) and bb.preprocess.grid == (28, 28)


def test_dinov3_convnext_tokens_become_a_stride_32_map(dinov3_convnext_dir):
    from transformers import DINOv3ConvNextModel

    img = _image(70, 90, seed=1)
    mask = _rect_mask(img.size, 35, 45, 70, 90)  # bottom-right quarter: cells [1:2, 1:2] of 2x2
    got, bb = _fmmc_max_pool(f"hf:{dinov3_convnext_dir}", img, mask, image_size=64)
    assert bb.preprocess.patch_size == 32 and bb.preprocess.grid == (2, 2) and bb.feature_dim == 32
    model = DINOv3ConvNextModel.from_pretrained(dinov3_convnext_dir).eval()
    with torch.no_grad():
        tokens = model(pixel_values=_pixels(img, 64, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state
    assert tokens.shape[1] == 1 + 4  # [pooled token, 2x2 patch tokens]
    grid = tokens[:, 1:].transpose(1, 2).reshape(1, 32, 2, 2)
    assert torch.allclose(got, grid[:, :, 1, 1], atol=1e-5)
    cls = FeatureExtractor(bb, pooling="cls").extract_arrays([(img, mask)])
    assert torch.allclose(cls, tokens[:, 0], atol=1e-5)


def test_siglip2_naflex_patches_match_its_own_image_processor(siglip2_dir):
    """fmmc cuts the patches itself; the real Siglip2ImageProcessor (PIL backend) gives the same tower output."""
    from transformers import AutoImageProcessor, Siglip2VisionModel

    img = _image(64, 64, seed=2)  # at the 4x4-patch budget already: the processor's resize is the identity
    mask = _rect_mask(img.size, 16, 0, 48, 64)  # the middle two columns of cells
    got, bb = _fmmc_max_pool(f"hf:{siglip2_dir}", img, mask, image_size=64)
    assert bb.preprocess.mean == pytest.approx((0.5, 0.5, 0.5)) and bb.preprocess.resample == "bilinear"
    processor = AutoImageProcessor.from_pretrained(siglip2_dir)
    inputs = processor(images=img, return_tensors="pt")
    assert inputs["spatial_shapes"].tolist() == [[4, 4]]
    model = Siglip2VisionModel.from_pretrained(siglip2_dir).eval()
    with torch.no_grad():
        out = model(**inputs)
    grid = out.last_hidden_state.transpose(1, 2).reshape(1, 32, 4, 4)  # no prefix tokens
    assert torch.allclose(got, grid[:, :, :, 1:3].amax(dim=(2, 3)), atol=1e-4)
    cls = FeatureExtractor(bb, pooling="cls").extract_arrays([(img, None)])
    assert torch.allclose(cls, out.pooler_output, atol=1e-4)  # the attention-pool head


def test_siglip2_naflex_default_size_is_its_patch_budget(siglip2_dir):
    bb = build("backbone", f"hf:{siglip2_dir}")
    assert bb.preprocess.image_size == (64, 64)  # sqrt(16 patches) * 16 px
    x = torch.randn(2, 3, 96, 128)  # other sizes too: the position grid is resized to 6x8
    bb.preprocess = bb.preprocess.__class__(**{**bb.preprocess.__dict__, "image_size": (96, 128)})
    with torch.no_grad():
        assert bb(x).feature_map.shape == (2, 32, 6, 8)


def test_new_backbone_families_are_listed():
    listed = "\n".join(f"{spec}\t{help_}" for spec, help_ in registry("backbone").specs())
    for family in ("DINOv3", "dinov3-vits16", "dinov3-convnext", "siglip2"):
        assert family.lower() in listed.lower(), family


def test_pooling_cls_without_a_global_token_says_it_pools_the_mean(tmp_path, caplog):
    """A conv net's earlier stages have no global token: pooling=cls pools their global mean, and says so
    once (it used to do so silently)."""
    import logging

    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(0)
    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)).save_pretrained(tmp_path / "cnx")
    bb = build("backbone", f"hf:{tmp_path / 'cnx'}", image_size=64)
    img = _image(64, 64)
    with caplog.at_level(logging.WARNING, logger="fmmc.vision.extractor"):
        FeatureExtractor(bb, pooling="cls").extract_arrays([(img, None)])  # the last stage has ConvNeXt's pooler
        assert "no global token" not in caplog.text
        ex = FeatureExtractor(bb, pooling="cls", layers=2)
        feats = ex.extract_arrays([(img, None), (img, None)])
    assert caplog.text.count("no global token") == 1
    with torch.no_grad():
        out = bb(torch.zeros(1, 3, 64, 64), layers=2)
    assert out.earlier[0].cls is None and out.cls is not None and feats.shape == (2, 8 + 16)
