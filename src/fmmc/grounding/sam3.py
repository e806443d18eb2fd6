"""SAM 3 through transformers: a text prompt -> every matching instance's mask, in one model.

    >>> from fmmc.core.registry import build
    >>> seg = build("segmenter", "hf:facebook/sam3", device="auto")                  # doctest: +SKIP
    >>> found = seg.segment_text(image, "vase", threshold=0.5)   # best score first    # doctest: +SKIP
    >>> found[0].mask.shape, found[0].score, found[0].extra["detection"].box           # doctest: +SKIP
    ((480, 640), 0.91, (88.0, 40.0, 402.0, 498.0))

``hf:<id or dir>`` segmenter specs whose ``config.json`` says ``model_type: sam3`` build a
:class:`Sam3Segmenter` (see ``fmmc.grounding.segmenter.build_hf_segmenter``). It replaces grounder + SAM
where a region is named by text: the ``sam3`` synth labeler and ``predict(object=...)`` /
``fmmc predict --object`` call :meth:`Sam3Segmenter.segment_text` instead of a grounder box prompting SAM.
Point and box prompts stay with SAM / SAM 2 checkpoints. Scores, boxes and masks are those of
``Sam3Processor.post_process_instance_segmentation`` (instance logit x presence score, masks resized straight
to the image). The vision features of the last image are cached, so several phrases on one image cost one
ViT pass. transformers' SAM 3 image processor needs torchvision (CI: ``tests/test_tv_sam3.py``, second
environment). SAM 3 is gated on the hub: request access on the model page and ``hf auth login``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

from PIL import Image

from fmmc.core.device import resolve_device
from fmmc.core.hub import load_pretrained
from fmmc.grounding.common import Detection, MaskResult, resolve_dtype

log = logging.getLogger(__name__)

SAM3_TYPES = ("sam3", "sam3_video")  # sam3_video checkpoints hold the image detector as detector_config
DEFAULT_SAM3 = "facebook/sam3"
DEFAULT_THRESHOLD = 0.5  # instance score kept (transformers' own default is 0.3)


class Sam3Segmenter:
    """Load once; ``segment_text(image, phrase)`` gives every instance of ``phrase``, best score first."""

    def __init__(self, source: str = DEFAULT_SAM3, device: str = "cpu", dtype: str | None = None) -> None:
        from transformers import AutoProcessor, Sam3Model

        self.source = source
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.spec = f"hf:{source}"
        self.processor = load_pretrained(AutoProcessor.from_pretrained, source, "SAM 3 processor")
        model = load_pretrained(Sam3Model.from_pretrained, source, "SAM 3 segmenter")
        self.model = model.to(self.device, self.dtype).eval()
        self._lock = threading.Lock()
        self._cache: tuple[Any, Any] | None = None  # (image key, vision features)
        log.info("segmenter %s (Sam3Model, text prompts) on %s (%s)", source, self.device, self.dtype)

    def _vision(self, image: Image.Image) -> Any:
        """The image's vision features (cached: the same pixels are encoded once)."""
        import torch

        key = (image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"]
        with self._lock, torch.inference_mode():
            feats = self.model.get_vision_features(pixel_values=pixel_values.to(self.device, self.dtype))
        self._cache = (key, feats)
        return feats

    def segment_text(self, image: Image.Image, phrase: str, threshold: float = DEFAULT_THRESHOLD,
                     mask_threshold: float = 0.5) -> list[MaskResult]:
        """Every instance of ``phrase`` scoring above ``threshold``, best first.

        Each result's ``score`` is the instance score (0-1); ``extra["detection"]`` is its
        :class:`~fmmc.grounding.common.Detection` (box in image pixels, score, phrase). ``mask_threshold``
        binarizes the sigmoid mask probabilities.
        """
        import torch

        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError("segment_text() needs a non-empty phrase, e.g. 'vase'")
        if not 0.0 <= threshold <= 1.0 or not 0.0 <= mask_threshold <= 1.0:
            raise ValueError(f"threshold {threshold!r} and mask_threshold {mask_threshold!r} must be in [0, 1]")
        image = image if image.mode == "RGB" else image.convert("RGB")
        feats = self._vision(image)
        text = self.processor(text=phrase.strip(), return_tensors="pt")
        with self._lock, torch.inference_mode():
            out = self.model(vision_embeds=feats, input_ids=text["input_ids"].to(self.device),
                             attention_mask=text["attention_mask"].to(self.device))
        for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
            value = getattr(out, name)
            if value is not None:
                setattr(out, name, value.float().cpu())
        found = self.processor.post_process_instance_segmentation(
            out, threshold=threshold, mask_threshold=mask_threshold, target_sizes=[(image.height, image.width)])[0]
        order = found["scores"].argsort(descending=True).tolist()
        results = []
        for i in order:
            score = float(found["scores"][i])
            box = tuple(float(v) for v in found["boxes"][i].tolist())
            det = Detection(box, score, phrase.strip())  # type: ignore[arg-type]
            results.append(MaskResult(mask=found["masks"][i].numpy().astype(bool), score=score,
                                      extra={"detection": det}))
        return results

    def segment(self, image: Image.Image, box: Any = None, points: Any = None, **_: Any) -> list[MaskResult]:
        """Not offered: fmmc prompts SAM 3 with text only (:meth:`segment_text`)."""
        raise ValueError(f"segmenter hf:{self.source} is SAM 3, which fmmc prompts with text only "
                         "(object names, segment_text); use a SAM or SAM 2 checkpoint (hf:facebook/sam-vit-base) "
                         "for point and box prompts")


def is_sam3(config: Any) -> bool:
    """True for a transformers config of the SAM 3 family (``model_type`` sam3 / sam3_video)."""
    return getattr(config, "model_type", "") in SAM3_TYPES
