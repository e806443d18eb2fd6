"""What a backbone is: preprocessing metadata + a forward pass giving a feature map ``[B, C, h, w]``.

A user's own backbone is any ``torch.nn.Module`` with a ``preprocess`` attribute (a :class:`Preprocess`
or a dict of its fields), a ``feature_dim`` int and ``forward(pixel_values) -> Tensor[B, C, h, w]``
(or a :class:`BackboneOutput`). Name it as ``my_pkg.my_module:factory``; the factory receives
``image_size=`` (may be None) and returns the module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How images are turned into pixel values: resize to ``image_size`` (H, W, no crop), normalise."""

    image_size: tuple[int, int] = (448, 448)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patch_size: int = 14  # stride of the feature grid, in input pixels
    resample: str = "bicubic"
    source: str = ""  # where mean/std/resample came from, e.g. "preprocessor_config.json" or "defaults (...)"

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        size = d.get("image_size", (448, 448))
        if isinstance(size, int):
            size = (size, size)
        return cls(
            image_size=(int(size[0]), int(size[1])),
            mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            patch_size=int(d.get("patch_size", 14)),
            resample=str(d.get("resample", "bicubic")),
            source=str(d.get("source", "")),
        )


class BackboneOutput(NamedTuple):
    feature_map: torch.Tensor  # [B, C, h, w]
    cls: torch.Tensor | None = None  # [B, C] global token where the model has one


def check_backbone(module: Any, where: str) -> None:
    """Raise a clear error when a user's backbone does not follow the protocol."""
    missing = [a for a in ("preprocess", "feature_dim", "forward") if not hasattr(module, a)]
    if missing:
        raise TypeError(
            f"{where} returned {type(module).__name__}, which lacks {missing}. A backbone needs "
            "`preprocess` (fmmc.vision.protocol.Preprocess or dict), `feature_dim` (int) and "
            "`forward(pixel_values) -> Tensor[B, C, h, w]`."
        )
    if isinstance(module.preprocess, dict):
        module.preprocess = Preprocess.from_dict(module.preprocess)


def export_state(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A backbone's weights for an artifact: checkpoint names when it has them (``checkpoint_state_dict``)."""
    fn = getattr(backbone, "checkpoint_state_dict", None)
    return fn() if callable(fn) else backbone.state_dict()


def import_state(backbone: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights written by :func:`export_state` (strictly: a mismatch raises)."""
    fn = getattr(backbone, "load_checkpoint_state", None)
    if callable(fn):
        fn(state)
    else:
        backbone.load_state_dict(state, strict=True)


def as_output(out: Any) -> BackboneOutput:
    if isinstance(out, BackboneOutput):
        return out
    if isinstance(out, torch.Tensor) and out.dim() == 4:
        return BackboneOutput(out, None)
    raise TypeError(f"backbone forward must return Tensor[B, C, h, w] or BackboneOutput, got {type(out).__name__}")
