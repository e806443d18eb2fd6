"""Zero-shot CLIP/SigLIP baseline: a prompt ensemble per class, the region's masked crop per image.

    fmmc eval zeroshot:clip:openai/clip-vit-base-patch32 --data fmd:/data/fmd --out runs/eval-clip

    >>> zs = ClipZeroShot("openai/clip-vit-base-patch32")                          # doctest: +SKIP
    >>> preds, failures = zs.predict_regions(regions, classes=["metal", "wood"])    # doctest: +SKIP

Class weights follow open_clip's ``build_zero_shot_classifier``: each template filled with the class name
is embedded, the embeddings are L2-normalised, averaged and normalised again. The image is the region's
bounding-box crop with pixels outside the mask set to the processor's mean colour (zero after
normalisation), so the model sees the material, not its surroundings; whole-image regions are used as
they are. Probabilities are a softmax over ``logit_scale * cosine`` (SigLIP's bias is constant over
classes, so it does not change the ranking or the softmax).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fmmc.data.records import Region
from fmmc.model.prediction import Prediction
from fmmc.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

TEMPLATES = (
    "a photo of a {} surface.",
    "a close-up photo of {} material.",
    "a photo of something made of {}.",
    "the texture of {}.",
    "a close-up of a {} texture.",
    "an object made of {}.",
    "a photo of the material {}.",
)


def masked_crop(image: Image.Image, mask: np.ndarray | None, fill: tuple[int, int, int]) -> Image.Image:
    """The mask's bounding box cut from ``image``, outside-mask pixels set to ``fill``; no mask: the image."""
    if mask is None:
        return image
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("mask is empty: no pixel is inside the region")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    arr = np.array(image.convert("RGB"))[y0:y1, x0:x1]
    arr[~mask[y0:y1, x0:x1]] = fill
    return Image.fromarray(arr)


def _features(out: Any) -> torch.Tensor:
    # transformers < 5 returns the projected tensor, >= 5 an output object with it in pooler_output
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipZeroShot:
    """A CLIP or SigLIP checkpoint (hub id or local dir) as a zero-shot region classifier."""

    def __init__(self, source: str, taxonomy: str | Taxonomy = "default", templates: Sequence[str] = TEMPLATES,
                 device: str = "cpu", batch_size: int = 16) -> None:
        from transformers import AutoConfig, AutoModel, AutoProcessor

        from fmmc.core.hub import load_pretrained

        if not source:
            raise ValueError("zeroshot:clip: needs a hub id or a local dir, e.g. zeroshot:clip:openai/clip-vit-base-patch32")
        config = load_pretrained(AutoConfig.from_pretrained, source, "zero-shot CLIP config")
        model_type = getattr(config, "model_type", "")
        if not (model_type.startswith("clip") or model_type.startswith("siglip")):
            raise ValueError(f"zeroshot:clip:{source} is a {model_type!r} model; it needs a CLIP or SigLIP checkpoint "
                             "with both towers (e.g. openai/clip-vit-base-patch32, google/siglip-base-patch16-224)")
        self.family = "siglip" if model_type.startswith("siglip") else "clip"
        self.model = load_pretrained(AutoModel.from_pretrained, source, "zero-shot CLIP model").eval().to(device)
        self.model.requires_grad_(False)
        self.processor = load_pretrained(AutoProcessor.from_pretrained, source, "zero-shot CLIP processor")
        self.taxonomy = load_taxonomy(taxonomy)
        self.templates = tuple(templates)
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("every zero-shot template needs a '{}' for the class name, e.g. 'a photo of {} material.'")
        self.device = torch.device(device)
        self.batch_size = batch_size
        mean = getattr(self.processor.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        self.fill = tuple(int(round(255 * float(v))) for v in mean)
        self.spec = f"zeroshot:clip:{source}"
        self.config = {"kind": "zeroshot-clip", "model": source, "family": self.family, "templates": list(self.templates),
                       "taxonomy": self.taxonomy.name, "crop": "mask bounding box, outside-mask pixels = processor mean"}
        self.class_weights = self._class_weights()
        scale = getattr(self.model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if scale is not None else 100.0

    @property
    def labels(self) -> tuple[str, ...]:
        return self.taxonomy.names

    @torch.inference_mode()
    def _class_weights(self) -> torch.Tensor:
        """``[K, D]`` unit vectors: the normalised mean of each class's normalised template embeddings."""
        padding: Any = "max_length" if self.family == "siglip" else True
        rows = []
        for name in self.taxonomy.names:
            texts = [t.format(name) for t in self.templates]
            batch = self.processor(text=texts, return_tensors="pt", padding=padding, truncation=True).to(self.device)
            batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            if self.family == "siglip":
                batch.pop("attention_mask", None)
            emb = torch.nn.functional.normalize(_features(self.model.get_text_features(**batch)).float(), dim=-1)
            rows.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
        return torch.stack(rows)

    @torch.inference_mode()
    def _image_probs(self, crops: list[Image.Image], keep: list[int] | None) -> np.ndarray:
        pix = self.processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
        emb = torch.nn.functional.normalize(_features(self.model.get_image_features(pixel_values=pix)).float(), dim=-1)
        logits = self.logit_scale * emb @ self.class_weights.T
        if keep is not None:
            mask = torch.full_like(logits, float("-inf"))
            mask[:, keep] = 0
            logits = logits + mask
        return logits.softmax(-1).cpu().numpy()

    def predict_regions(self, regions: list[Region], classes: list[str] | str | None = None,
                        progress: bool = True) -> tuple[list[Prediction | None], list[tuple[str, str]]]:
        """Predictions aligned with ``regions`` (None where the image or mask could not be used);
        ``classes``: a subset, or None / ``"all"`` for the whole taxonomy (a zero-shot model has no training)."""
        from tqdm.auto import tqdm

        from fmmc.data.regions import load_region

        keep = self.taxonomy.subset(classes) if classes not in (None, "all") else None
        out: list[Prediction | None] = [None] * len(regions)
        failures: list[tuple[str, str]] = []
        bar = tqdm(total=len(regions), desc="zero-shot CLIP", unit="region", disable=not progress)
        for start in range(0, len(regions), self.batch_size):
            idx, crops = [], []
            for i in range(start, min(start + self.batch_size, len(regions))):
                r = regions[i]
                try:
                    img, mask = load_region(r)
                    crops.append(masked_crop(img, mask, self.fill))  # type: ignore[arg-type]
                    idx.append(i)
                except (ValueError, OSError) as e:
                    failures.append((r.id, str(e)))
            if crops:
                for i, p in zip(idx, self._image_probs(crops, keep)):
                    out[i] = Prediction(p, self.labels, id=regions[i].id)
            bar.update(min(self.batch_size, len(regions) - start))
        bar.close()
        return out, failures


def build_clip_zeroshot(arg: str, taxonomy: str | Taxonomy = "default", cache_dir: str | Path | None = None,
                        **options: Any) -> ClipZeroShot:
    """``zeroshot:clip:<id or dir>``; options: ``templates`` (a file, one template per line), ``device``, ``batch_size``.

    ``cache_dir`` is unused (the class weights are computed at load).
    """
    kwargs: dict[str, Any] = {}
    if "templates" in options:
        lines = Path(options.pop("templates")).read_text().splitlines()
        kwargs["templates"] = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if "device" in options:
        kwargs["device"] = options.pop("device")
    if "batch_size" in options:
        kwargs["batch_size"] = int(options.pop("batch_size"))
    if options:
        raise ValueError(f"zeroshot:clip: unknown option(s) {sorted(options)}; known: templates, device, batch_size, taxonomy")
    return ClipZeroShot(arg, taxonomy=taxonomy, **kwargs)
