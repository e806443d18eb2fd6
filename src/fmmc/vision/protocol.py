"""What a backbone is: preprocessing metadata + a forward pass giving a feature map ``[B, C, h, w]``.

A user's own backbone is any ``torch.nn.Module`` with a ``preprocess`` attribute (a :class:`Preprocess`
or a dict of its fields), a ``feature_dim`` int and ``forward(pixel_values) -> Tensor[B, C, h, w]``
(or a :class:`BackboneOutput`). Name it as ``my_pkg.my_module:factory``; the factory receives
``image_size=`` (may be None) and returns the module.

Several layers (``FeatureSpec.layers``): a backbone that can give the last N layers' maps takes
``forward(pixel_values, layers=N)``, returns them in :attr:`BackboneOutput.earlier` (the N-1 before the
last, oldest first; each may have its own grid and width) and reports their widths with
``layer_dims(N) -> list[int]`` (oldest first, the last being ``feature_dim``).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    earlier: tuple[BackboneOutput, ...] = ()  # forward(..., layers=N): the N-1 layers before the last, oldest first


def layer_dims(backbone: Any, layers: int) -> list[int]:
    """Widths of a backbone's last ``layers`` feature maps (oldest first), or a one-line error when it has
    no multi-layer forward (see the module docstring)."""
    if layers == 1:
        return [int(backbone.feature_dim)]
    fn = getattr(backbone, "layer_dims", None)
    if not callable(fn):
        raise ValueError(f"layers={layers}: backbone {getattr(backbone, 'spec', type(backbone).__name__)} gives one "
                         "feature map only; use layers=1, or give it forward(pixel_values, layers=N) and layer_dims(N)")
    dims = [int(d) for d in fn(layers)]
    if len(dims) != layers:
        raise ValueError(f"layers={layers}: backbone {type(backbone).__name__}.layer_dims({layers}) gave {len(dims)} "
                         "widths; it must give one per layer")
    return dims


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


def parse_scales(value: str | float | Sequence[float]) -> tuple[float, ...]:
    """``"1,1.5"`` (or ``1.5``, or ``[1, 1.5]``) -> ``(1.0, 1.5)``, with a one-line error naming the field."""
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, (int, float)) else list(value)
    try:
        scales = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        scales = ()
    if not scales or any(not s > 0 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"scales={value!r}: give distinct positive input scales separated by commas, e.g. scales=1,1.5")
    return scales


def scaled_size(pre: Preprocess, scale: float) -> tuple[int, int]:
    """The input size of a scale view: ``image_size * scale``, rounded to the patch multiple (at least one patch)."""
    p = pre.patch_size
    return tuple(max(p, round(v * scale / p) * p) for v in pre.image_size)  # type: ignore[return-value]


def trim_output(out: BackboneOutput, k: int) -> BackboneOutput:
    """The first ``k`` rows of every tensor of ``out`` (a padded compiled chunk)."""
    return BackboneOutput(out.feature_map[:k], None if out.cls is None else out.cls[:k],
                          tuple(trim_output(o, k) for o in out.earlier))


def merge_outputs(outs: list[BackboneOutput]) -> BackboneOutput:
    """Chunks of one batch -> one float32 output (every layer)."""
    def cat(ts: list[torch.Tensor]) -> torch.Tensor:
        return (ts[0] if len(ts) == 1 else torch.cat(ts)).float()

    cls = None if outs[0].cls is None else cat([o.cls for o in outs])  # type: ignore[misc]
    earlier = tuple(merge_outputs([o.earlier[j] for o in outs]) for j in range(len(outs[0].earlier)))
    return BackboneOutput(cat([o.feature_map for o in outs]), cls, earlier)
