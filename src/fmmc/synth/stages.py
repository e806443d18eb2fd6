"""Stage callables by spec: the generator and labeller factories the registry and the engines build.

    >>> from functools import partial
    >>> factory = partial(build_stage, "labeler", "whole-image", None, "runs/synth")   # picklable (Ray)
    >>> labeler = factory()                                                             # doctest: +SKIP

``fmmc list generators`` / ``fmmc list labelers`` show the built-ins. A ``package.module:factory`` spec is
called as ``factory(cfg=<section config>, root=<synth output folder>)`` and must return a callable
``list[dict] -> list[dict]`` following the stage's item contract (see ``fmmc.synth.label``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def build_stage(kind: str, spec: str, cfg: Any, root: str | Path) -> Any:
    """Build the ``kind`` (``generator`` | ``labeler``) named by ``spec`` with its section config and root."""
    from fmmc.core.registry import build

    return build(kind, spec, cfg=cfg, root=Path(root))


def build_grounded_sam(arg: str = "", cfg: Any = None, root: str | Path = ".") -> Any:
    """Registry factory for ``grounded-sam``: Grounding DINO box of the object name -> SAM mask."""
    if arg:
        raise ValueError(f"labeler 'grounded-sam' takes no argument (got {arg!r}); choose the models with "
                         "label.grounder=hf:... and label.segmenter=hf:...")
    from fmmc.synth.label import LabelConfig, Labeler

    if isinstance(cfg, dict):
        from fmmc.core.config import from_dict

        cfg = from_dict(LabelConfig, cfg, where="label")
    return Labeler(cfg, root)


def build_sam3_labeler(arg: str = "", cfg: Any = None, root: str | Path = ".") -> Any:
    """Registry factory for ``sam3[:<hub id or dir>]``: SAM 3 finds and masks the object name in one step."""
    from dataclasses import replace

    from fmmc.grounding.sam3 import DEFAULT_SAM3
    from fmmc.synth.label import LabelConfig, Labeler

    if isinstance(cfg, dict):
        from fmmc.core.config import from_dict

        cfg = from_dict(LabelConfig, cfg, where="label")
    from fmmc.core.registry import build

    cfg = replace(cfg or LabelConfig(), segmenter=f"hf:{arg or DEFAULT_SAM3}")
    segmenter = build("segmenter", cfg.segmenter, device=cfg.device, dtype=cfg.dtype)
    if not hasattr(segmenter, "segment_text"):
        raise ValueError(f"labeler 'sam3:{arg}' needs a SAM 3 checkpoint (config.json model_type sam3); "
                         f"{cfg.segmenter} is {type(segmenter.model).__name__}: use labeler grounded-sam for it")
    return Labeler(cfg, root, segmenter=segmenter)


class WholeImageLabeler:
    """Labels the whole image as the region (no models): for dry runs of the pipeline, never for training data."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from PIL import Image

        from fmmc.synth.label import mask_relpath, write_mask

        out = []
        for item in items:
            with Image.open(self.root / item["image"]) as img:
                w, h = img.size
            rel = mask_relpath(item)
            write_mask(np.ones((h, w), dtype=bool), self.root / rel)
            out.append({**item, "status": "ok", "reason": None, "mask": rel, "box": [0, 0, w, h], "det_score": None,
                        "mask_score": None, "area_frac": 1.0, "grounder": "none", "segmenter": "whole-image"})
        return out


def build_whole_image(arg: str = "", cfg: Any = None, root: str | Path = ".") -> WholeImageLabeler:
    """Registry factory for ``whole-image``."""
    return WholeImageLabeler(root)
