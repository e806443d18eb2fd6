"""Open-vocabulary boxes from text: Grounding DINO, MM-Grounding-DINO / LLMDet and OWLv2 through transformers.

    >>> from fmmc.core.registry import build
    >>> grounder = build("grounder", "hf:IDEA-Research/grounding-dino-base", device="auto")  # doctest: +SKIP
    >>> grounder.detect(Image.open("vase.png"), "vase")                                      # doctest: +SKIP
    [Detection(box=(102.3, 40.1, 388.0, 500.2), score=0.71, phrase='vase')]

Any transformers zero-shot object detector whose processor has ``post_process_grounded_object_detection``
works (``IDEA-Research/grounding-dino-tiny``, ``-base``, ``openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg``,
an LLMDet checkpoint, a fine-tuned copy, a local ``save_pretrained`` dir). Each family gets the text it was
trained on: Grounding DINO and MM-Grounding-DINO one lower-case string of ``.``-ended phrases, OWLv2/OWL-ViT
one query per phrase (``"a photo of a vase"``), scored per query with no ``text_threshold``. OWLv2 scores
run lower than Grounding DINO's (transformers' default threshold is 0.1): lower ``box_threshold`` for it.
Boxes come back in pixels of the input image, clipped to it, de-duplicated by NMS, best first.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

from PIL import Image

from fmmc.core.device import resolve_device
from fmmc.core.hub import load_pretrained
from fmmc.grounding.common import Detection, box_area, clip_box, nms, resolve_dtype

log = logging.getLogger(__name__)

DEFAULT_GROUNDER = "IDEA-Research/grounding-dino-base"


def grounding_text(text: str | Sequence[str]) -> str:
    """Grounding DINO's text format: lower case, phrases separated and ended by ``.``.

    >>> grounding_text("Cake-pan")
    'cake pan.'
    >>> grounding_text(["red cup", "table"])
    'red cup. table.'
    """
    return ". ".join(grounding_phrases(text)) + "."


def grounding_phrases(text: str | Sequence[str]) -> list[str]:
    """The cleaned phrases of ``text``: lower case, ``_``/``-`` as spaces, no trailing ``.``.

    >>> grounding_phrases(["Cake-pan", "red  cup."])
    ['cake pan', 'red cup']
    """
    phrases = [text] if isinstance(text, str) else list(text)
    cleaned = []
    for p in phrases:
        p = re.sub(r"[_\-]+", " ", str(p)).strip().lower().rstrip(".").strip()
        p = re.sub(r"\s+", " ", p)
        if p:
            cleaned.append(p)
    if not cleaned:
        raise ValueError(f"empty grounding text {text!r}: pass an object name such as 'vase'")
    return cleaned


OWL_TYPES = ("owlv2", "owlvit")
OWL_TEMPLATE = "a photo of a {}"  # the query form of transformers' OWLv2 examples (CLIP-style)


class Grounder:
    """Load once, then ``detect(image, text)`` many times. Thread-safe (one forward at a time)."""

    def __init__(self, source: str = DEFAULT_GROUNDER, device: str = "cpu", dtype: str | None = None,
                 nms_iou: float = 0.5) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        if not source:
            raise ValueError(f"grounder needs a hub id or local dir, e.g. hf:{DEFAULT_GROUNDER}")
        self.source = source
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.nms_iou = nms_iou
        self.spec = f"hf:{source}"
        self.processor = load_pretrained(AutoProcessor.from_pretrained, source, "grounder processor")
        if not hasattr(self.processor, "post_process_grounded_object_detection"):
            raise ValueError(
                f"{source!r} is not a grounded detector (its processor {type(self.processor).__name__} has no "
                "post_process_grounded_object_detection); use a Grounding DINO checkpoint such as "
                f"hf:{DEFAULT_GROUNDER}"
            )
        model = load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained, source, "grounder")
        self.model = model.to(self.device, self.dtype).eval()
        self.owl = getattr(model.config, "model_type", "") in OWL_TYPES  # one query per phrase, no text threshold
        self._lock = threading.Lock()
        log.info("grounder %s on %s (%s)", source, self.device, self.dtype)

    def detect(self, image: Image.Image, text: str | Sequence[str], box_threshold: float = 0.35,
               text_threshold: float = 0.25, max_detections: int | None = None) -> list[Detection]:
        """Boxes for ``text`` (an object name, or several phrases) in ``image``, best first."""
        return self.detect_batch([image], [text], box_threshold, text_threshold, max_detections)[0]

    def detect_batch(self, images: Sequence[Image.Image], texts: Sequence[str | Sequence[str]],
                     box_threshold: float = 0.35, text_threshold: float = 0.25,
                     max_detections: int | None = None) -> list[list[Detection]]:
        """One forward pass for several images, each with its own text; a list of detections per image."""
        import torch

        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts; pass one text per image")
        if not images:
            return []
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        sizes = [(im.height, im.width) for im in rgb]
        if self.owl:
            phrases = [grounding_phrases(t) for t in texts]
            queries = [[OWL_TEMPLATE.format(p) for p in ps] for ps in phrases]
            # OWL's text context is 16 tokens: a longer query is cut, not an error
            inputs = self.processor(images=rgb, text=queries, truncation=True, return_tensors="pt")
        else:
            inputs = self.processor(images=rgb, text=[grounding_text(t) for t in texts], padding=True,
                                    return_tensors="pt")
        inputs = {k: self._to_device(v) for k, v in inputs.items()}
        with self._lock, torch.inference_mode():
            outputs = self.model(**inputs)
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        if self.owl:  # boxes relative to the padded square: transformers scales them by the longer side
            n = max(len(ps) for ps in phrases)
            outputs.logits = outputs.logits.clone()  # an inference tensor; the copy can be edited
            for i, ps in enumerate(phrases):  # the processor pads short query lists with " ": never a match
                outputs.logits[i, :, len(ps):] = float("-inf")
            results = self.processor.post_process_grounded_object_detection(
                outputs, threshold=box_threshold, target_sizes=sizes,
                text_labels=[ps + [""] * (n - len(ps)) for ps in phrases])
        else:
            results = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
                target_sizes=sizes)
        out: list[list[Detection]] = []
        for im, res in zip(rgb, results):
            dets = []
            labels = res.get("text_labels", [""] * len(res["scores"]))
            for box, score, phrase in zip(res["boxes"].tolist(), res["scores"].tolist(), labels):
                box = clip_box(box, im.size)
                if box_area(box) <= 0:
                    continue
                dets.append(Detection(box=box, score=float(score), phrase=_clean_phrase(phrase)))
            dets = nms(dets, self.nms_iou)
            out.append(dets[:max_detections] if max_detections else dets)
        return out

    def _to_device(self, value: Any) -> Any:
        import torch

        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            return value.to(self.device, self.dtype)
        return value.to(self.device)


def _clean_phrase(phrase: Any) -> str:
    text = phrase if isinstance(phrase, str) else " ".join(map(str, phrase))
    text = re.sub(r"\s*\[(SEP|CLS|PAD)\]\s*", " ", text).replace(" ##", "")
    return text.strip().rstrip(".").strip()


def build_hf_grounder(source: str = DEFAULT_GROUNDER, device: str = "cpu", dtype: str | None = None,
                      nms_iou: float = 0.5, **_: Any) -> Grounder:
    """Registry factory for ``hf:<hub id or dir>`` grounders."""
    return Grounder(source or DEFAULT_GROUNDER, device=device, dtype=dtype, nms_iou=nms_iou)
