"""Any transformers vision model as an fmmc backbone: ``hf:facebook/dinov2-base``, ``hf:/local/dir``.

ViT-style models (DINOv2, ViT, CLIP/SigLIP vision towers) give tokens: the prefix tokens (CLS,
registers) are split off and the patch tokens reshaped to the grid. Conv nets (ResNet, ConvNeXt) give
a feature map directly. Images are resized to ``image_size`` with no centre crop (448 for DINOv2-B/14 ->
a 32x32x768 grid, as in the paper).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from fmmc.core.hub import load_pretrained, resolve_weights
from fmmc.vision.protocol import IMAGENET_MEAN, IMAGENET_STD, BackboneOutput, Preprocess

log = logging.getLogger(__name__)

# image size defaults by model family: DINOv2's paper setting is 448 (32x32 patches)
_DEFAULT_SIZE = {"dinov2": 448, "dinov2_with_registers": 448}


class HFBackbone(nn.Module):
    def __init__(self, model: nn.Module, preprocess: Preprocess, feature_dim: int, prefix_tokens: int | None) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.feature_dim = feature_dim
        self._prefix = prefix_tokens
        self._interp = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        kwargs: dict[str, Any] = {"pixel_values": pixel_values}
        if self._interp:
            kwargs["interpolate_pos_encoding"] = True
        out = self.model(**kwargs)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # conv net: [B, C, h, w]
            pooled = getattr(out, "pooler_output", None)
            cls = pooled.flatten(1) if isinstance(pooled, torch.Tensor) else None
            return BackboneOutput(hidden, cls)
        b, n, c = hidden.shape
        gh = pixel_values.shape[-2] // self.preprocess.patch_size
        gw = pixel_values.shape[-1] // self.preprocess.patch_size
        prefix = n - gh * gw if self._prefix is None else self._prefix
        if prefix < 0 or n - prefix != gh * gw:
            raise RuntimeError(f"backbone gave {n} tokens; expected {gh}x{gw} patches + prefix tokens")
        cls = hidden[:, 0] if prefix > 0 else None
        fmap = hidden[:, prefix:].transpose(1, 2).reshape(b, c, gh, gw)
        return BackboneOutput(fmap, cls)


def _vision_part(model: nn.Module) -> nn.Module:
    # full CLIP/SigLIP models: keep the vision tower only
    return getattr(model, "vision_model", model) if hasattr(model, "text_model") else model


def build_hf_backbone(source: str, image_size: int | None = None, dtype: str | None = None, **_: Any) -> HFBackbone:
    """Load ``source`` (hub id or local dir) through transformers ``AutoModel``."""
    from transformers import AutoConfig, AutoModel

    if not source:
        raise ValueError("hf backbone needs a hub id or a local dir, e.g. hf:facebook/dinov2-base")
    config = load_pretrained(AutoConfig.from_pretrained, source, "backbone config")
    model = load_pretrained(AutoModel.from_pretrained, source, "backbone")
    model = _vision_part(model).eval()
    vcfg = getattr(config, "vision_config", config)
    model_type = getattr(config, "model_type", "")
    patch = int(getattr(vcfg, "patch_size", 0) or 32)
    size = int(image_size or _DEFAULT_SIZE.get(model_type, getattr(vcfg, "image_size", 224) or 224))
    if size % patch:
        size = max(patch, round(size / patch) * patch)
        log.warning("image_size rounded to %d, a multiple of the patch size %d", size, patch)
    mean, std = _norm_stats(source)
    prefix = None
    if model_type.startswith("dinov2"):
        prefix = 1 + int(getattr(vcfg, "num_register_tokens", 0) or 0)
    hidden = getattr(vcfg, "hidden_size", None)
    if isinstance(hidden, (list, tuple)) or hidden is None:
        sizes = getattr(vcfg, "hidden_sizes", None)
        hidden = sizes[-1] if sizes else None
    if hidden is None:
        raise ValueError(f"cannot tell the feature width of {source!r} (no hidden_size/hidden_sizes in its config)")
    pre = Preprocess(image_size=(size, size), mean=mean, std=std, patch_size=patch)
    log.info("backbone %s: %s, %dx%d input, %dx%d grid, %d-d", source, model_type, size, size, *pre.grid, hidden)
    return HFBackbone(model, pre, int(hidden), prefix)


def _norm_stats(source: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mean/std from the checkpoint's preprocessor_config.json, ImageNet's when it has none."""
    import json
    from pathlib import Path

    path = Path(resolve_weights(source))
    cfg_file = path / "preprocessor_config.json" if path.is_dir() else None
    data: dict[str, Any] = {}
    if cfg_file is not None and cfg_file.is_file():
        data = json.loads(cfg_file.read_text())
    elif cfg_file is None:
        try:
            from transformers import AutoImageProcessor

            proc = load_pretrained(AutoImageProcessor.from_pretrained, source, "image processor config")
            data = {"image_mean": proc.image_mean, "image_std": proc.image_std}
        except Exception:  # noqa: BLE001 - no processor config: ImageNet statistics
            data = {}
    mean = tuple(float(v) for v in data.get("image_mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in data.get("image_std", IMAGENET_STD))
    return mean, std  # type: ignore[return-value]
