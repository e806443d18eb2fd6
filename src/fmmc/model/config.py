"""Typed configs of a classifier: what decides a vision feature, the head's shape, the whole artifact.

:class:`FeatureSpec` is the one description of "what decides a pooled feature" (backbone, input size,
pooling, layers, scales, flip TTA, mask-to-grid rule, dtype, the null-mask ablation; see
:mod:`fmmc.vision.extractor`). :class:`~fmmc.train.config.TrainConfig` and
:class:`~fmmc.engine.features.FeatureJob` extend it, the encoder is built from it, and the feature
cache's key is derived from it plus what the loaded backbone adds (its preprocessing and a fingerprint
of its weights, see :meth:`fmmc.vision.extractor.FeatureExtractor.settings`).

:class:`ModelConfig` is ``config.json`` of a saved model, read with a clear error for an old or damaged
file:

    >>> ModelConfig.from_json({"streams": "vision"}, where="runs/a/model/config.json")
    Traceback (most recent call last):
    ...
    ValueError: runs/a/model/config.json: missing field(s) ['head', 'taxonomy'] (this file was not written by fmmc's save_pretrained, or is damaged: retrain, or restore the model directory)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fmmc.core.config import from_dict


@dataclass
class FeatureSpec:
    """Everything that decides a pooled vision feature (shared by TrainConfig, FeatureJob and the artifact)."""

    backbone: str | None = "hf:facebook/dinov2-base"
    image_size: int | None = None  # None: the backbone's default (448 for DINOv2)
    pooling: str = "max"  # max (paper) | mean | gem | cls, or several joined by "+" (max+mean): fmmc.vision.pooling
    min_coverage: float = 0.5  # mask -> patch grid rule, see fmmc.vision.pooling
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (frozen weights cast) | auto (bf16 on native-bf16 hardware)
    null_mask: bool = False  # ablation: ignore masks, pool the whole image
    decoder: str = "pil"  # pil (full decode, the one rule) | pil-draft (JPEG DCT-scaled) | torchvision-gpu (on the device)
    layers: int = 1  # pool each of the backbone's last N layers (conv nets: stages) and concatenate (DINOv2 eval: 4)
    scales: str = "1"  # input scales, e.g. "1,1.5": image_size * s (patch multiple); features averaged over scales
    flip_tta: bool = False  # also the mirrored image (mask mirrored too); features averaged

    def feature_spec(self) -> FeatureSpec:
        """Just the feature fields (of a TrainConfig, a FeatureJob or a ModelConfig)."""
        return FeatureSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FeatureSpec)})


@dataclass
class HeadConfig:
    vision_dim: int
    text_dim: int
    num_classes: int
    hidden: int = 512  # 0: a linear head
    dropout: float = 0.1
    standardize: bool = False  # the head holds the training features' mean/std (configs before it: False)


REQUIRED = ("taxonomy", "streams", "head")
# describers that read a region's text from its dataset line: a new photo has none
DATASET_DESCRIBERS = ("metadata",)


def description_fix(give: str = "--description TEXT (Python: predict(..., description='...'))",
                    describer: str = "--describer SPEC (Python: MaterialClassifier.from_pretrained(path, "
                                     "describer=SPEC))") -> str:
    """The one-line fix for a model whose language stream cannot describe a new photo (``needs_description``);
    ``give`` / ``describer`` say how this entry point takes a description or a describer."""
    return ("this model's language stream reads each region's description from its dataset (describer "
            f"'metadata'), and a new photo has none: give one with {give}, or choose a describer that can "
            f"describe a photo with {describer}, e.g. openai:gpt-4o-mini, hf:<local VLM>, or none (no text)")


@dataclass(kw_only=True)
class ModelConfig(FeatureSpec):
    """``config.json`` of a saved classifier."""

    taxonomy: dict[str, Any]
    streams: str
    head: HeadConfig
    text_encoder: str | None = None
    describer: str | None = None
    segmenter: str | None = None  # region prompts (point=, refine=, SAM maps); None: the default spec
    grounder: str | None = None  # object= prompts; None: the default spec
    preprocess: dict[str, Any] | None = None  # the backbone's preprocessing at training time: used at load
    decode: str = "full"  # fmmc.data.regions.DECODE_RULE at training time
    mode: str = "head"
    # the classes seen in training (taxonomy order): predictions choose among them unless told otherwise;
    # None (models saved before fmmc recorded them): the whole taxonomy
    trained_classes: list[str] | None = None
    train: dict[str, Any] = field(default_factory=dict)
    fmmc_version: str = ""
    backbone_weights_included: bool = False
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer fmmc wrote: kept, written back

    @classmethod
    def from_json(cls, data: Any, where: str = "config.json") -> ModelConfig:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = sorted(k for k in REQUIRED if k not in data)
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing} (this file was not written by fmmc's "
                             "save_pretrained, or is damaged: retrain, or restore the model directory)")
        head = data["head"]
        if not isinstance(head, dict):
            raise ValueError(f"{where}: field 'head' must be an object with vision_dim, text_dim, num_classes")
        head_missing = sorted(k for k in ("vision_dim", "text_dim", "num_classes") if k not in head)
        if head_missing:
            raise ValueError(f"{where}: field 'head' lacks {head_missing} (damaged config: retrain or restore it)")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and k != "extra"}
        kwargs["extra"] = {**data.get("extra", {}), **{k: v for k, v in data.items() if k not in known}}
        return from_dict(cls, kwargs, where=where)

    @property
    def needs_description(self) -> bool:
        """True when a new photo's language-stream text must be given by the user: the model has a language
        stream and its describer (``metadata``) reads the dataset's ``description`` field, which a new photo
        lacks. Load with ``describer=`` (an image describer, or ``none``) to predict without one."""
        return self.streams != "vision" and (self.describer or "none") in DATASET_DESCRIBERS

    def override(self, **values: Any) -> None:
        """Set fields by name (``from_pretrained(..., describer=...)``, ``fmmc serve`` overrides)."""
        known = {f.name for f in dataclasses.fields(self)} - {"extra"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s) {unknown}; known: {sorted(known)}")
        for k, v in values.items():
            setattr(self, k, v)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}
