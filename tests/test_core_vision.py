import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmmc.core.hub import WeightsUnavailableError
from fmmc.core.registry import build
from fmmc.data.records import Region
from fmmc.vision.cache import FeatureCache
from fmmc.vision.extractor import FeatureExtractor
from fmmc.vision.pooling import mask_to_grid, pool
from fmmc.vision.protocol import Preprocess

DATA = Path(__file__).parent / "data"


def test_real_dinov2_base_architecture_gives_32x32x768_at_448(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config.from_dict(json.loads((DATA / "dinov2-base-config.json").read_text()))
    Dinov2Model(cfg).save_pretrained(tmp_path)  # random weights, real architecture
    bb = build("backbone", f"hf:{tmp_path}")
    assert bb.preprocess.image_size == (448, 448) and bb.preprocess.grid == (32, 32)
    assert bb.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    with torch.inference_mode():
        out = bb(torch.zeros(1, 3, 448, 448))
    assert tuple(out.feature_map.shape) == (1, 768, 32, 32) and tuple(out.cls.shape) == (1, 768)


def test_tiny_dinov2_tokens_match_grid(tiny_dinov2):
    """The feature map is the model's patch tokens, in row-major grid order, CLS split off."""
    from transformers import Dinov2Model

    bb = build("backbone", f"hf:{tiny_dinov2}", image_size=56)
    x = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        out = bb(x)
        ref = Dinov2Model.from_pretrained(tiny_dinov2)(pixel_values=x).last_hidden_state
    assert tuple(out.feature_map.shape) == (2, 32, 4, 4)
    assert torch.allclose(out.cls, ref[:, 0])
    assert torch.allclose(out.feature_map[:, :, 1, 2], ref[:, 1 + 1 * 4 + 2])


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_other_transformers_backbones(tmp_path, arch):
    if arch == "vit":
        from transformers import ViTConfig, ViTModel

        ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=16), add_pooling_layer=False).save_pretrained(tmp_path)
        grid, dim = (4, 4), 32
    else:
        from transformers import ResNetConfig, ResNetModel

        ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])).save_pretrained(tmp_path)
        grid, dim = (2, 2), 32
    bb = build("backbone", f"hf:{tmp_path}", image_size=64)
    with torch.inference_mode():
        out = bb(torch.randn(1, 3, 64, 64))
    assert tuple(out.feature_map.shape) == (1, dim, *grid) and bb.feature_dim == dim


def test_missing_weights_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(WeightsUnavailableError, match="(?is)pass a local path.*or allow downloads \\(unset HF_HUB_OFFLINE,"):
        build("backbone", "hf:facebook/dinov2-base-not-cached")


def test_the_fix_names_only_the_offline_switches_that_are_set(monkeypatch):
    """Found trying it as a new user: "unset HF_HUB_OFFLINE" was advised with nothing set."""
    from fmmc.core.hub import unavailable_message

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    online = unavailable_message("org/m", "backbone", "no network")
    assert "unset" not in online and "HF_HUB_OFFLINE=1 makes fmmc stop asking it" in online
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert "(unset TRANSFORMERS_OFFLINE, then check" in unavailable_message("org/m", "backbone", "no network")


class _UserBackbone(torch.nn.Module):
    def __init__(self, image_size=None):
        super().__init__()
        self.preprocess = {"image_size": 32, "patch_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}
        self.feature_dim = 3

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 8)


def make_user_backbone(image_size=None):
    from fmmc.vision.protocol import check_backbone

    m = _UserBackbone(image_size)
    check_backbone(m, "make_user_backbone")
    return m


def test_user_module_backbone_by_spec():
    bb = build("backbone", "test_core_vision:make_user_backbone")
    assert isinstance(bb.preprocess, Preprocess) and bb.preprocess.grid == (4, 4)
    ex = FeatureExtractor(bb, pooling="mean")
    img = Image.new("RGB", (64, 64), (255, 0, 0))
    feats = ex.extract_arrays([(img, None)])
    assert torch.allclose(feats, torch.tensor([[1.0, 0.0, 0.0]]))


def test_extractor_matches_manual_pipeline(tiny_dinov2, tiny_dataset, tmp_path):
    from fmmc.data.dataset import load_dataset
    from fmmc.data.imageio import load_image, load_mask
    from fmmc.vision.extractor import to_pixels

    bb = build("backbone", f"hf:{tiny_dinov2}", image_size=112)
    regions = load_dataset(tiny_dataset)[:5]
    ex = FeatureExtractor(bb, batch_size=2)
    feats, ok, failed = ex.extract_regions(regions, progress=False)
    assert ok == list(range(5)) and not failed
    r = regions[3]
    img = load_image(r.image)
    mask = load_mask(r.mask, size=img.size)
    with torch.inference_mode():
        out = bb(to_pixels(img, bb.preprocess)[None])
    manual = pool(out.feature_map, mask_to_grid(mask, (8, 8)), "max")[0]
    assert torch.allclose(feats[3], manual, atol=1e-5)


def test_bf16_close_to_fp32(tiny_dinov2, tiny_dataset):
    from fmmc.data.dataset import load_dataset

    bb = build("backbone", f"hf:{tiny_dinov2}", image_size=112)
    regions = load_dataset(tiny_dataset)[:4]
    f32, _, _ = FeatureExtractor(bb).extract_regions(regions, progress=False)
    b16, _, _ = FeatureExtractor(bb, dtype="bf16").extract_regions(regions, progress=False)
    assert torch.nn.functional.cosine_similarity(f32, b16).min() > 0.99


def test_feature_cache_second_pass_runs_no_forward(tiny_dinov2, tiny_dataset, tmp_path):
    from fmmc.data.dataset import load_dataset

    bb = build("backbone", f"hf:{tiny_dinov2}", image_size=112)
    calls = []
    bb.register_forward_hook(lambda *a: calls.append(1))
    regions = load_dataset(tiny_dataset)
    ex = FeatureExtractor(bb, batch_size=8, cache=FeatureCache(tmp_path, "ns", shard_size=7))
    first, _, _ = ex.extract_regions(regions, progress=False)
    n_calls = len(calls)
    assert n_calls == 4  # 30 regions / batch 8
    # committed per batch of 8; parts merged once they fill a shard of 7: 3 shards of 8 + the last batch's part
    assert len(list((tmp_path / "ns").glob("shard-*.safetensors"))) == 3
    assert len(list((tmp_path / "ns").glob("part-*.safetensors"))) == 1
    assert len(FeatureCache(tmp_path, "ns")) == 30
    ex2 = FeatureExtractor(bb, batch_size=8, cache=FeatureCache(tmp_path, "ns", shard_size=7))
    second, _, _ = ex2.extract_regions(regions, progress=False)
    assert len(calls) == n_calls
    assert torch.equal(first, second)


def test_cache_survives_torn_index_line(tmp_path):
    c = FeatureCache(tmp_path, "ns", shard_size=2)
    c.put("a", torch.ones(3))
    c.put("b", torch.zeros(3))
    c.commit()
    with open(tmp_path / "ns" / "index.jsonl", "a") as f:
        f.write('{"key": "c", "sha')  # crash mid-write
    c2 = FeatureCache(tmp_path, "ns")
    assert len(c2) == 2 and torch.equal(c2.get("a"), torch.ones(3)) and c2.get("c") is None


def test_bad_items_are_skipped_and_reported(tiny_dinov2, tmp_path):
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "wrong_size.png")
    regions = [Region(tmp_path / "ok.png"), Region(tmp_path / "bad.jpg"),
               Region(tmp_path / "ok.png", mask=tmp_path / "wrong_size.png")]
    ex = FeatureExtractor(build("backbone", f"hf:{tiny_dinov2}", image_size=56))
    feats, ok, failed = ex.extract_regions(regions, progress=False)
    assert ok == [0] and feats.shape[0] == 1
    msgs = dict(failed)
    assert "empty" in msgs["bad"] and "10x10" in msgs["ok:wrong_size"]
