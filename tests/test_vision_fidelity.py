"""The `hf:` backbone against plain transformers: preprocessing, resample, conv strides, cls feature, weights.

Every model is a tiny random-init copy of a real architecture, saved with save_pretrained and loaded back
through fmmc's real path (``build("backbone", "hf:<dir>")``).
"""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from fmmc.core.registry import build
from fmmc.vision.extractor import FeatureExtractor, to_pixels
from fmmc.vision.protocol import IMAGENET_MEAN, IMAGENET_STD, Preprocess

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
LOGGER = "fmmc.vision.hf_backbone"


def _image(w: int = 77, h: int = 53, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _ref_pixels(img: Image.Image, size: int, resample: int, mean, std) -> torch.Tensor:
    """Plain PIL resize + /255 + normalise -> [1, 3, size, size]."""
    x = np.asarray(img.resize((size, size), resample), dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def _write_preprocessor(path, **fields) -> None:
    cfg = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2}
    cfg.update(fields)
    (path / "preprocessor_config.json").write_text(json.dumps(cfg))


def _save_vit(path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(**TINY, image_size=32, patch_size=8)).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vit_bilinear(tmp_path_factory):
    """Tiny ViT (with its dense+tanh pooler) whose preprocessor_config.json asks mean/std 0.5, bilinear."""
    path = _save_vit(tmp_path_factory.mktemp("vit_bilinear"))
    _write_preprocessor(path)
    return path


@pytest.fixture(scope="module")
def vit_bare(tmp_path_factory):
    """Tiny ViT without a preprocessor_config.json."""
    return _save_vit(tmp_path_factory.mktemp("vit_bare"))


# --- 1. preprocessing read from the checkpoint -----------------------------------------------------

def test_preprocessor_config_values_are_used(vit_bilinear):
    pre = build("backbone", f"hf:{vit_bilinear}").preprocess
    assert pre.mean == pytest.approx((0.5, 0.5, 0.5)) and pre.std == pytest.approx((0.5, 0.5, 0.5))
    assert pre.resample == "bilinear" and pre.source == "preprocessor_config.json"


def test_missing_preprocessor_config_warns_once_and_records_defaults(vit_bare, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pre = build("backbone", f"hf:{vit_bare}").preprocess
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(vit_bare) in warnings[0] and "ImageNet" in warnings[0] and "bicubic" in warnings[0]
    assert pre.source.startswith("defaults") and "no preprocessor_config.json" in pre.source
    assert pre.mean == pytest.approx(IMAGENET_MEAN) and pre.std == pytest.approx(IMAGENET_STD)
    assert pre.resample == "bicubic"


def test_corrupt_preprocessor_config_warns_not_crashes(tmp_path, caplog):
    _save_vit(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5,')
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pre = build("backbone", f"hf:{tmp_path}").preprocess
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unreadable" in warnings[0]
    assert pre.source.startswith("defaults") and pre.mean == pytest.approx(IMAGENET_MEAN)


def test_do_normalize_false_and_box_resample(tmp_path):
    _save_vit(tmp_path)
    _write_preprocessor(tmp_path, do_normalize=False, resample=4)
    pre = build("backbone", f"hf:{tmp_path}").preprocess
    assert pre.mean == (0.0, 0.0, 0.0) and pre.std == (1.0, 1.0, 1.0)
    assert pre.resample == "box"  # every PIL filter is honoured, none approximated
    from fmmc.vision.extractor import to_pixels

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (53, 77, 3), dtype=np.uint8))
    ref = np.asarray(img.resize(pre.image_size[::-1], Image.BOX), dtype=np.float32) / 255.0
    assert np.allclose(to_pixels(img, pre).permute(1, 2, 0).numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("fields", [{"do_rescale": False}, {"rescale_factor": 1 / 127.5}])
def test_unsupported_rescale_is_a_clear_error(tmp_path, fields):
    _save_vit(tmp_path)
    _write_preprocessor(tmp_path, **fields)
    with pytest.raises(ValueError, match="(?i)only supports pixels scaled by 1/255"):
        build("backbone", f"hf:{tmp_path}")


def test_preprocess_source_round_trips():
    pre = Preprocess(image_size=(32, 48), patch_size=8, resample="bilinear", source="preprocessor_config.json")
    assert pre.to_dict()["source"] == "preprocessor_config.json"
    assert Preprocess.from_dict(pre.to_dict()) == pre


def test_hub_id_preprocessor_config_is_fetched_with_offline_respected(tmp_path, monkeypatch):
    import huggingface_hub

    from fmmc.vision.hf_backbone import preprocess_from_checkpoint

    _write_preprocessor(tmp_path, resample=3, image_mean=[0.1, 0.2, 0.3])
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(tmp_path / filename)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    got = preprocess_from_checkpoint("some-org/some-model")
    assert calls == [("some-org/some-model", "preprocessor_config.json", {"local_files_only": True})]
    assert got["mean"] == pytest.approx((0.1, 0.2, 0.3)) and got["resample"] == "bicubic"
    assert got["source"] == "preprocessor_config.json"


def test_hub_repo_without_preprocessor_config_warns_defaults(monkeypatch, caplog):
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    from fmmc.vision.hf_backbone import preprocess_from_checkpoint

    class Missing(RemoteEntryNotFoundError):
        def __init__(self) -> None:
            Exception.__init__(self, "404 Entry Not Found")

    def fake_download(repo_id, filename, **kwargs):
        raise Missing()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = preprocess_from_checkpoint("some-org/no-processor")
    assert got["source"] == "defaults (no preprocessor_config.json in hub repo some-org/no-processor)"
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING] == [LOGGER]


# --- 2. resample honoured, against plain PIL + ViTModel ---------------------------------------------

def test_resample_from_processor_matches_plain_transformers(vit_bilinear):
    from transformers import ViTModel

    img = _image(77, 53)
    feats = FeatureExtractor(build("backbone", f"hf:{vit_bilinear}"), pooling="mean").extract_arrays([(img, None)])
    model = ViTModel.from_pretrained(vit_bilinear).eval()

    def ref(resample: int) -> torch.Tensor:
        with torch.no_grad():
            tokens = model(pixel_values=_ref_pixels(img, 32, resample, [0.5] * 3, [0.5] * 3)).last_hidden_state
        grid = tokens[:, 1:].transpose(1, 2).reshape(1, 32, 4, 4)
        return grid.mean(dim=(2, 3))

    assert torch.allclose(feats, ref(Image.BILINEAR), atol=1e-5)
    assert not torch.allclose(feats, ref(Image.BICUBIC), atol=1e-4)  # the filter matters for this image


# --- 3. conv nets get their real output stride ------------------------------------------------------

def _conv_reference(cls_name: str, path, img: Image.Image, size: int) -> torch.Tensor:
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(path).eval()
    with torch.no_grad():
        hidden = model(pixel_values=_ref_pixels(img, size, Image.BICUBIC, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state
    return hidden.mean(dim=(2, 3))


@pytest.mark.parametrize("arch", ["convnext", "resnet"])
def test_conv_nets_extract_at_their_real_stride(tmp_path, arch, caplog):
    torch.manual_seed(0)
    if arch == "convnext":
        from transformers import ConvNextConfig, ConvNextModel

        ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])).save_pretrained(tmp_path)
        cls_name, stride, dim = "ConvNextModel", 32, 32  # stem patch 4, then 3 downsamplings by 2
    else:
        from transformers import ResNetConfig, ResNetModel

        ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 1, 1])).save_pretrained(tmp_path)
        cls_name, stride, dim = "ResNetModel", 16, 24  # 3 stages: stride 16, not the usual 32
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        bb = build("backbone", f"hf:{tmp_path}", image_size=100)
    size = 96  # 100 rounded to a multiple of the stride (32 or 16)
    assert bb.preprocess.patch_size == stride and bb.preprocess.image_size == (size, size)
    assert bb.preprocess.grid == (size // stride, size // stride) and bb.feature_dim == dim
    assert any("rounded to 96" in r.getMessage() for r in caplog.records)
    img = _image(77, 53, seed=1)
    feats = FeatureExtractor(bb, pooling="mean").extract_arrays([(img, None)])
    assert torch.allclose(feats, _conv_reference(cls_name, tmp_path, img, size), atol=1e-5)


# --- 4. pooling="cls": pooler_output for CLIP/SigLIP, token 0 for DINOv2/ViT -------------------------

def _save_tower(arch: str, path):
    import transformers as T

    torch.manual_seed(0)
    vision = dict(**TINY, image_size=32, patch_size=8)
    if arch == "clip":  # the full two-tower model: fmmc keeps vision_model
        text = dict(**TINY, vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        T.CLIPModel(T.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)).save_pretrained(path)
        return lambda: T.CLIPModel.from_pretrained(path).vision_model.eval()
    model_cls, cfg_cls = {"clip_vision": (T.CLIPVisionModel, T.CLIPVisionConfig),
                          "siglip_vision": (T.SiglipVisionModel, T.SiglipVisionConfig)}[arch]
    model_cls(cfg_cls(**vision)).save_pretrained(path)
    return lambda: model_cls.from_pretrained(path).eval()


@pytest.mark.parametrize("arch", ["clip", "clip_vision", "siglip_vision"])
def test_cls_pooling_is_pooler_output_for_clip_and_siglip(tmp_path, arch):
    reference = _save_tower(arch, tmp_path)()
    bb = build("backbone", f"hf:{tmp_path}")
    img = _image(40, 40, seed=2)
    feats = FeatureExtractor(bb, pooling="cls").extract_arrays([(img, None)])
    with torch.no_grad():
        out = reference(pixel_values=to_pixels(img, bb.preprocess)[None])
    assert torch.allclose(feats, out.pooler_output, atol=1e-5)
    if arch.startswith("clip"):  # post_layernorm(CLS), not the raw token 0
        assert not torch.allclose(feats, out.last_hidden_state[:, 0], atol=1e-3)


def test_cls_pooling_is_token_zero_for_dinov2_and_vit(tiny_dinov2, vit_bilinear):
    from transformers import Dinov2Model, ViTModel

    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        dino = Dinov2Model.from_pretrained(tiny_dinov2).eval()(pixel_values=x)
        got = build("backbone", f"hf:{tiny_dinov2}", image_size=56)(x).cls
    assert torch.allclose(got, dino.last_hidden_state[:, 0], atol=1e-6)
    assert torch.allclose(got, dino.pooler_output, atol=1e-6)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        vit = ViTModel.from_pretrained(vit_bilinear).eval()(pixel_values=x)
        got = build("backbone", f"hf:{vit_bilinear}")(x).cls
    assert torch.allclose(got, vit.last_hidden_state[:, 0], atol=1e-6)
    assert not torch.allclose(got, vit.pooler_output, atol=1e-3)  # ViT's pooler is an extra dense+tanh


# --- 5. backbone weights under the checkpoint's names ----------------------------------------------

def _file_keys(path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_export_import_state_uses_checkpoint_names(tiny_dinov2):
    from fmmc.vision.protocol import export_state, import_state

    bb = build("backbone", f"hf:{tiny_dinov2}", image_size=56)
    assert set(export_state(bb)) == _file_keys(tiny_dinov2)
    with torch.no_grad():
        bb.model.embeddings.cls_token.add_(1.0)
        bb.model.encoder.layer[0].mlp.fc1.weight.mul_(1.5)
    state = export_state(bb)
    fresh = build("backbone", f"hf:{tiny_dinov2}", image_size=56)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        before = fresh(x).feature_map
        import_state(fresh, state)
        after, want = fresh(x), bb(x)
    assert not torch.allclose(before, want.feature_map)
    assert torch.equal(after.feature_map, want.feature_map) and torch.equal(after.cls, want.cls)


def test_load_checkpoint_state_accepts_old_names_and_rejects_mismatch(tiny_dinov2):
    bb = build("backbone", f"hf:{tiny_dinov2}", image_size=56)
    from transformers import Dinov2Model

    bb.load_checkpoint_state(bb.state_dict())  # old artifacts: runtime names model.<key>
    bb.load_checkpoint_state(Dinov2Model.from_pretrained(tiny_dinov2).state_dict())  # transformers' own names
    state = bb.checkpoint_state_dict()
    state.pop("embeddings.cls_token")
    state["head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"(?s)1 missing.*embeddings\.cls_token.*1 unexpected.*head\.weight"):
        bb.load_checkpoint_state(state)


def test_full_clip_checkpoint_names_keep_vision_model_prefix(tmp_path):
    _save_tower("clip", tmp_path)
    bb = build("backbone", f"hf:{tmp_path}")
    keys = set(bb.checkpoint_state_dict())
    assert keys == {k for k in _file_keys(tmp_path) if k.startswith("vision_model.")}
    fresh = build("backbone", f"hf:{tmp_path}")
    fresh.load_checkpoint_state(bb.checkpoint_state_dict())
