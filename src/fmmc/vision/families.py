"""What a few transformers vision families need beyond "pixel_values in, last_hidden_state out".

:mod:`fmmc.vision.hf_backbone` asks this module three questions about a loaded checkpoint:

* how many prefix tokens to drop before the patch grid (DINOv2/DINOv3 ViT: 1 CLS + ``num_register_tokens``;
  DINOv3 ConvNeXt: 1 pooled token put in front of its flattened, layer-normed feature map);
* the feature stride of a conv net that returns tokens rather than a ``[B, C, h, w]`` map (DINOv3
  ConvNeXt: a 4x4 stem, then one 2x downsampling per further stage);
* which forward inputs the model takes: SigLIP 2 NaFlex towers take pre-cut patches
  ``[B, N, patch*patch*3]`` with ``spatial_shapes`` and ``pixel_attention_mask`` instead of an image.

    >>> prefix_tokens("dinov3_vit", type("C", (), {"num_register_tokens": 4})())
    5

Everything else (resize, normalisation from ``preprocessor_config.json``, pooling) is the same path for
every family; no transformers image processor (and so no torchvision) is involved.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

# Families whose token sequence starts with 1 CLS token + config.num_register_tokens registers.
_CLS_REGISTER_FAMILIES = ("dinov2", "dinov2_with_registers", "dinov3_vit")
# Conv nets that return tokens: [pooled token, h*w patch tokens] (see DINOv3ConvNextModel.forward).
_TOKEN_CONV_FAMILIES = ("dinov3_convnext",)
# Default input sizes where the config's own image_size is not the right one for dense features:
# the paper runs DINOv2 at 448 (32x32 patches of 14); DINOv3 gets the same 448 input (28x28 patches of 16
# for the ViT, a 14x14 map for the ConvNeXt).
DEFAULT_SIZE = {"dinov2": 448, "dinov2_with_registers": 448, "dinov3_vit": 448, "dinov3_convnext": 448}


def prefix_tokens(model_type: str, vcfg: Any) -> int | None:
    """Tokens before the patch grid, or None to infer them from the sequence length."""
    if model_type in _CLS_REGISTER_FAMILIES:
        return 1 + int(getattr(vcfg, "num_register_tokens", 0) or 0)
    if model_type in _TOKEN_CONV_FAMILIES:
        return 1
    return None


def token_conv_stride(model_type: str, vcfg: Any) -> tuple[int, int] | None:
    """(stride, channels) of a conv net whose ``last_hidden_state`` is tokens; None for other models."""
    if model_type not in _TOKEN_CONV_FAMILIES:
        return None
    sizes = list(getattr(vcfg, "hidden_sizes", None) or [])
    if not sizes:
        raise ValueError(f"{model_type} config has no hidden_sizes; cannot tell its stride and width")
    return 4 * 2 ** (len(sizes) - 1), int(sizes[-1])


def default_size(model_type: str, vcfg: Any) -> int:
    """Input side when the caller gives none: the table above, a NaFlex tower's full patch budget
    (``sqrt(num_patches) * patch_size``: 256 px for SigLIP 2's 256 patches of 16), else the config's."""
    if model_type in DEFAULT_SIZE:
        return DEFAULT_SIZE[model_type]
    num_patches, patch = getattr(vcfg, "num_patches", None), getattr(vcfg, "patch_size", None)
    if getattr(vcfg, "image_size", None) is None and isinstance(num_patches, int) and isinstance(patch, int):
        return math.isqrt(num_patches) * patch
    size = getattr(vcfg, "image_size", 224) or 224
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def takes_patches(model: nn.Module) -> bool:
    """True for towers that take pre-cut patches + ``spatial_shapes`` (SigLIP 2 NaFlex)."""
    return "spatial_shapes" in inspect.signature(model.forward).parameters


def naflex_inputs(pixel_values: torch.Tensor, patch: int) -> dict[str, torch.Tensor]:
    """``[B, 3, H, W]`` -> SigLIP 2 NaFlex inputs, patches cut as its image processor cuts them.

    Row-major patches, each flattened as ``(patch_y, patch_x, channel)``
    (``transformers...siglip2.image_processing_pil_siglip2.convert_image_to_patches``); every patch is
    real, so the attention mask is all ones and the grid is the whole ``(H/patch, W/patch)``.
    """
    b, c, h, w = pixel_values.shape
    gh, gw = h // patch, w // patch
    x = pixel_values[:, :, : gh * patch, : gw * patch].reshape(b, c, gh, patch, gw, patch)
    patches = x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)
    shapes = torch.tensor([[gh, gw]] * b, dtype=torch.long, device=pixel_values.device)
    mask = torch.ones(b, gh * gw, dtype=torch.long, device=pixel_values.device)
    return {"pixel_values": patches, "spatial_shapes": shapes, "pixel_attention_mask": mask}
