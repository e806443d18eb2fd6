"""A local transformers VLM as the describer (no API, no key): an image-text-to-text model with a chat template
(SmolVLM, Qwen2.5-VL, Qwen3-VL, Llava, ...) or Florence-2 (task tokens, :mod:`fmmc.language.florence`).

    >>> from fmmc.core.registry import build
    >>> d = build("describer", "hf:HuggingFaceTB/SmolVLM-256M-Instruct", device="cuda")  # doctest: +SKIP
    >>> d.describe(image, mask)                                                            # doctest: +SKIP

Same marking and prompt as the OpenAI describer (:mod:`fmmc.language.marking`); greedy decoding,
``max_new_tokens`` 60. Florence-2 takes its own markings (``box``, the default, or ``crop``) and no prompt. The model is loaded through :func:`fmmc.core.hub.load_pretrained`, so local
directories, the hub and offline mode behave as everywhere else. Calls are serialised by a lock.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import torch
from PIL import Image

from fmmc.core.hub import load_pretrained
from fmmc.data.records import Region
from fmmc.language.describers import DescriberError
from fmmc.language.florence import CAPTION_TASK, FLORENCE_MARKINGS, REGION_TASK, florence_request, is_florence
from fmmc.language.marking import (
    DEFAULT_PROMPT,
    MARKINGS,
    clean_description,
    mark_region,
    prompt_version,
    region_prompt,
)

log = logging.getLogger(__name__)


class HFDescriber:
    """Describes regions with a local ``AutoModelForImageTextToText`` + ``AutoProcessor``."""

    def __init__(
        self,
        source: str,
        *,
        prompt: str = DEFAULT_PROMPT,
        marking: str | None = None,
        max_side: int | None = 768,
        line_width: int | None = None,
        max_new_tokens: int = 60,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = load_pretrained(AutoProcessor.from_pretrained, source, "VLM processor")
        self.florence = is_florence(self.processor)
        markings = FLORENCE_MARKINGS if self.florence else MARKINGS
        marking = marking or markings[0]
        if marking not in markings:
            raise ValueError(f"unknown marking {marking!r} for {source!r}; use one of {', '.join(markings)}")
        if self.florence:
            if prompt != DEFAULT_PROMPT:
                raise ValueError(f"{source!r} is Florence-2, which answers fixed task tokens only; drop the prompt "
                                 "(describe.prompt) or use a chat VLM such as SmolVLM or Qwen2.5-VL")
            prompt = f"florence-2 {REGION_TASK} {CAPTION_TASK}"  # what it is asked, for prompt_version
        elif getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"the processor of {source!r} has no chat template; 'hf:' describers need an "
                             "instruction-tuned VLM (e.g. hf:HuggingFaceTB/SmolVLM-256M-Instruct)")
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        self.model = load_pretrained(AutoModelForImageTextToText.from_pretrained, source, "VLM", **kwargs)
        self.model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.spec = f"hf:{source}"
        self.prompt, self.marking = prompt, marking
        self.max_side, self.line_width, self.max_new_tokens = max_side, line_width, max_new_tokens
        self.prompt_version = prompt_version(prompt=prompt, marking=marking, max_side=max_side,
                                             line_width=line_width, max_new_tokens=max_new_tokens, decoding="greedy")
        self._lock = threading.Lock()

    def messages(self, images: list[Image.Image], text: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "image", "image": im} for im in images]
        return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]

    def request(self, image: Image.Image, mask: np.ndarray | None) -> tuple[list[Image.Image], str]:
        """The images and the text the model is shown for a region (the text before any chat template)."""
        if self.florence:
            return florence_request(self.processor, image, mask, self.marking, max_side=self.max_side)
        images = mark_region(image, mask, self.marking, max_side=self.max_side, line_width=self.line_width)
        return images, region_prompt(self.prompt, self.marking, whole_image=mask is None)

    def model_inputs(self, images: list[Image.Image], text: str) -> Any:
        """The processor's output (``input_ids``, ``pixel_values``, ...) for :meth:`request`'s images and text."""
        if self.florence:
            return self.processor(text=text, images=images, return_tensors="pt")
        return self.processor.apply_chat_template(self.messages(images, text), add_generation_prompt=True,
                                                  tokenize=True, return_dict=True, return_tensors="pt")

    @torch.inference_mode()
    def token_ids(self, image: Image.Image, mask: np.ndarray | None) -> torch.Tensor:
        """The generated token ids of the reply, ``[1, n]`` (without the prompt)."""
        images, text = self.request(image, mask)
        with self._lock:
            try:
                inputs = self.model_inputs(images, text).to(self.device)
                if "pixel_values" in inputs and self.model.dtype.is_floating_point:
                    inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
                out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                raise DescriberError(f"{self.spec}: generation failed: {type(e).__name__}: {e}") from e
        if self.model.config.is_encoder_decoder:  # the decoder's output holds no prompt
            return out
        return out[:, inputs["input_ids"].shape[1]:]

    def describe(self, image: Image.Image, mask: np.ndarray | None, region: Region | None = None) -> str:
        new_tokens = self.token_ids(image, mask)
        return clean_description(self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0])

    def __repr__(self) -> str:
        return f"HFDescriber({self.spec!r}, prompt_version={self.prompt_version!r})"


def build_hf_describer(arg: str, **kwargs: Any) -> HFDescriber:
    """``hf:<VLM id or dir>``; kwargs: ``device``, ``dtype``, ``prompt``, ``marking``, ``max_new_tokens``, ...

    ``marking`` defaults to ``contour`` (chat-template VLMs) or ``box`` (Florence-2)."""
    if not arg:
        raise ValueError("describer 'hf:' needs a VLM id or directory, e.g. 'hf:HuggingFaceTB/SmolVLM-256M-Instruct'")
    return HFDescriber(arg, **kwargs)
