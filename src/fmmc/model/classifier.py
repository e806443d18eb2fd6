"""The trained classifier as one artifact: ``config.json`` + ``model.safetensors`` in a directory.

    >>> from fmmc import MaterialClassifier
    >>> model = MaterialClassifier.from_pretrained("runs/demo/model")      # or a hub id  # doctest: +SKIP
    >>> pred = model.predict("mug.jpg", box=(40, 30, 220, 260))                             # doctest: +SKIP
    >>> pred.top(3)                                                                        # doctest: +SKIP
    [('ceramic', 0.91), ('glass', 0.04), ('plastic', 0.02)]

The config names every component by spec (backbone, text encoder, describer) plus preprocessing and the
training config, so a model can be rebuilt and its results reproduced anywhere those weights load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fmmc import __version__
from fmmc.data.imageio import box_to_mask, load_image, load_mask
from fmmc.data.records import Region
from fmmc.model.head import MaterialHead
from fmmc.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class Prediction:
    """Calibrated class probabilities for one region."""

    probs: np.ndarray  # [K], sums to 1
    labels: tuple[str, ...]
    id: str = ""
    mask: np.ndarray | None = None  # the region used (bool [H, W]) when it was derived from a prompt
    description: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.labels[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(self.labels[i], float(self.probs[i])) for i in order]

    def to_json(self, k: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "label": self.label, "confidence": round(self.confidence, 6),
                               "top": [{"label": lab, "prob": round(p, 6)} for lab, p in self.top(k)]}
        if self.description is not None:
            out["description"] = self.description
        if self.mask is not None:
            from fmmc.grounding.prompts import mask_summary

            out["mask"] = mask_summary(self.mask)
        out.update(self.extra)
        return out


class MaterialClassifier:
    def __init__(self, config: dict[str, Any], head: MaterialHead, encoder: Any | None = None) -> None:
        self.config = config
        self.taxonomy: Taxonomy = load_taxonomy(config["taxonomy"])
        self.head = head.eval()
        self._encoder = encoder
        self._backbone_state: dict[str, torch.Tensor] | None = None

    # ----- construction -----
    @classmethod
    def from_parts(cls, cfg: Any, taxonomy: Taxonomy, encoder: Any, head: MaterialHead) -> MaterialClassifier:
        ex = encoder.extractor
        config = {
            "fmmc_version": __version__,
            "taxonomy": taxonomy.to_dict(),
            "streams": cfg.streams,
            "backbone": cfg.backbone if ex is not None else None,
            "preprocess": ex.pre.to_dict() if ex is not None else None,
            "image_size": cfg.image_size,
            "pooling": cfg.pooling,
            "min_coverage": cfg.min_coverage,
            "null_mask": cfg.null_mask,
            "dtype": cfg.dtype,
            "text_encoder": cfg.text_encoder if encoder.text_encoder is not None else None,
            "describer": cfg.describer if encoder.text_encoder is not None else None,
            "head": {"vision_dim": head.vision_dim, "text_dim": head.text_dim, "hidden": head.mlp[0].out_features,
                     "dropout": head.mlp[2].p, "num_classes": len(taxonomy)},
            "mode": cfg.mode,
            "train": asdict(cfg),
        }
        return cls(config, head, encoder)

    def save_pretrained(self, path: str | Path, include_backbone: bool = False) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        if include_backbone or self.config.get("mode") == "full":
            bb = self._encoder.extractor.backbone if self._encoder is not None else None
            state = bb.state_dict() if bb is not None else (self._backbone_state or {})
            tensors.update({f"backbone.{k}": v.detach().cpu().contiguous() for k, v in state.items()})
            self.config["backbone_weights_included"] = True
        save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt", "fmmc_version": __version__})
        (path / CONFIG_NAME).write_text(json.dumps(self.config, indent=1, default=str))
        return path

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str = "cpu", cache_dir: str | Path | None = None,
                        **overrides: Any) -> MaterialClassifier:
        """Load from a directory written by ``save_pretrained`` or a hub repo id holding one.

        ``overrides`` replace config entries at load time, e.g. ``describer="openai:gpt-4o-mini"``.
        ``cache_dir`` is where the streams keep features and descriptions (as ``TrainConfig.cache_dir``;
        default ``~/.cache/fmmc`` or ``$FMMC_CACHE``).
        """
        from safetensors.torch import load_file

        path = Path(source).expanduser()
        if not path.is_dir():
            path = _download(str(source))
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise ValueError(f"{path} is not an fmmc model: no {CONFIG_NAME} (train one with `fmmc train`)")
        try:
            config = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file}: not valid JSON: {e}") from e
        config.update(overrides)
        h = config["head"]
        head = MaterialHead(h["vision_dim"], h["text_dim"], h["num_classes"], h["hidden"], h["dropout"], config["streams"])
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise ValueError(f"{path}: missing {WEIGHTS_NAME}")
        state = load_file(str(weights))
        head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        model = cls(config, head)
        model._backbone_state = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")} or None
        model._device = device
        model._cache_dir = cache_dir
        return model

    # ----- the streams (built lazily, so loading a model is cheap) -----
    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from fmmc.model.encoder import build_encoder

            c = self.config
            enc = build_encoder(c["streams"], c.get("backbone"), c.get("text_encoder"), c.get("describer"),
                                image_size=c.get("image_size"), pooling=c.get("pooling", "max"),
                                min_coverage=c.get("min_coverage", 0.5), dtype=c.get("dtype", "fp32"),
                                device=getattr(self, "_device", "cpu"),
                                cache_dir=getattr(self, "_cache_dir", None),
                                use_cache=not self._backbone_state)
            if self._backbone_state and enc.extractor is not None:
                enc.extractor.backbone.load_state_dict(self._backbone_state)
            self._encoder = enc
        return self._encoder

    @property
    def labels(self) -> tuple[str, ...]:
        return self.taxonomy.names

    def _classes(self, classes: list[str] | None) -> list[int] | None:
        if classes is None:
            return None
        idx = self.taxonomy.subset(classes)
        if not idx:
            raise ValueError("classes= is empty: give at least one class name")
        return idx

    def _predictions(self, enc: Any, ids: list[str], classes: list[str] | None) -> list[Prediction]:
        with torch.no_grad():
            logits = self.head(enc.vis, enc.txt)
            probs = self.head.probs(logits, self._classes(classes)).cpu().numpy()
        return [Prediction(p, self.labels, id=i, description=d) for p, i, d in zip(probs, ids, enc.descriptions)]

    # ----- inference -----
    def predict_regions(self, regions: list[Region], classes: list[str] | None = None,
                        progress: bool = True) -> tuple[list[Prediction | None], list[tuple[str, str]]]:
        """Predictions aligned with ``regions`` (None where a region failed), and the failures."""
        if self.config.get("null_mask"):
            from dataclasses import replace

            regions = [replace(r, mask=None, box=None) for r in regions]
        enc = self.encoder.encode_regions(regions, progress=progress)
        preds = self._predictions(enc, [regions[i].id for i in enc.index], classes)
        out: list[Prediction | None] = [None] * len(regions)
        for i, p in zip(enc.index, preds):
            out[i] = p
        return out, enc.failures

    def predict(self, image: str | Path | Image.Image | np.ndarray, mask: str | Path | np.ndarray | None = None,
                box: tuple[float, float, float, float] | None = None, description: str | None = None,
                classes: list[str] | None = None, **prompts: Any) -> Prediction:
        """Classify one region of one image: ``mask`` (path or bool array), ``box`` (x0, y0, x1, y1), or the
        whole image. ``classes`` restricts the answer to a subset of the taxonomy.

        Region prompts (:mod:`fmmc.grounding.prompts`): ``point=(x, y)`` or ``object="the mug"`` ask SAM (and the
        grounder) for the mask; ``refine=True`` turns ``box`` into a SAM prompt too. The mask used is
        returned as ``Prediction.mask``."""
        img = _as_image(image)
        region = None
        if prompts:
            from fmmc.grounding.prompts import (
                resolve_prompt,  # point= / object= / refine= prompts (SAM, grounding)
            )

            if mask is not None:
                raise ValueError("give mask= or a region prompt (point=, object=, refine=), not both")
            region = resolve_prompt(self, img, box=box, **prompts)
            m = region.mask
        elif mask is not None:
            m = load_mask(mask, size=img.size) if isinstance(mask, (str, Path)) else np.asarray(mask).astype(bool)
            if m.shape != (img.height, img.width):
                raise ValueError(f"mask shape {m.shape} != image size {img.height}x{img.width} (H, W)")
            if not m.any():
                raise ValueError("mask is empty: no pixel is inside the region")
        elif box is not None:
            m = box_to_mask(box, img.size)
        else:
            m = None
        if self.config.get("null_mask"):
            m_used = None
        else:
            m_used = m
        enc = self.encoder.encode_arrays(img, [m_used], [description])
        pred = self._predictions(enc, [str(image) if isinstance(image, (str, Path)) else ""], classes)[0]
        pred.mask = m
        if region is not None:
            pred.extra["region"] = region.to_json()
        return pred

    def segment(self, image: str | Path | Image.Image | np.ndarray, mode: str = "sam", **kwargs: Any) -> Any:
        """A material map of the whole image (:class:`fmmc.model.maps.MaterialMap`): ``mode="sam"`` classifies SAM's
        automatic regions, ``mode="grid"`` every backbone patch (fast, no SAM). See :func:`fmmc.model.maps.segment_image`."""
        from fmmc.model.maps import segment_image

        return segment_image(self, _as_image(image), mode=mode, **kwargs)


def _as_image(image: str | Path | Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        from fmmc.data.imageio import to_rgb

        return to_rgb(image)
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    return load_image(image)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    from fmmc.core.hub import load_pretrained

    return Path(load_pretrained(lambda rid, **kw: snapshot_download(rid, **kw), repo_id, "fmmc model"))
