"""The paper's describer: an OpenAI-compatible VLM describes the material appearance of a marked region.

    >>> from fmmc.core.registry import build
    >>> d = build("describer", "openai:gpt-4o-mini")                        # hosted, OPENAI_API_KEY
    >>> d = build("describer", "openai:Qwen/Qwen2.5-VL-7B-Instruct",
    ...           base_url="http://localhost:8000/v1")                      # vLLM, no key  # doctest: +SKIP
    >>> d.describe(image, mask)                                             # doctest: +SKIP
    'Smooth, highly reflective silver surface with fine brushed streaks and crisp specular highlights.'

The region is drawn on the image as a red outline (plus, by default, a close-up crop as a second
image; see :mod:`fmmc.language.marking`). Deterministic settings: temperature 0, ``max_tokens`` 60.

A dead endpoint stops a run instead of failing region after region: after ``max_consecutive_failures`` (3)
connection failures or timeouts in a row the client raises
:class:`~fmmc.language.openai_client.EndpointUnavailableError`, which ``describe_regions`` does not swallow;
so does OpenAI's hosted API when ``OPENAI_API_KEY`` is not set (refused before any request is sent).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from fmmc.data.records import Region
from fmmc.language.marking import (
    DEFAULT_PROMPT,
    DEFAULT_SYSTEM,
    MARKINGS,
    clean_description,
    mark_region,
    prompt_version,
    region_prompt,
)
from fmmc.language.openai_client import OpenAIChatClient, image_content


class OpenAIDescriber:
    """Describes regions through an OpenAI-compatible chat endpoint; stateless apart from its thread-safe client."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        prompt: str = DEFAULT_PROMPT,
        system: str | None = DEFAULT_SYSTEM,
        marking: str = "contour+crop",
        max_side: int | None = 1024,
        line_width: int | None = None,
        temperature: float = 0.0,
        max_tokens: int = 60,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_consecutive_failures: int = 3,
        client: OpenAIChatClient | None = None,
    ) -> None:
        if marking not in MARKINGS:
            raise ValueError(f"unknown marking {marking!r}; use one of {', '.join(MARKINGS)}")
        self.client = client or OpenAIChatClient(model, base_url=base_url, api_key=api_key, timeout=timeout,
                                                 max_retries=max_retries, backoff=backoff,
                                                 max_consecutive_failures=max_consecutive_failures)
        self.spec = f"openai:{model}"
        self.prompt, self.system, self.marking = prompt, system, marking
        self.max_side, self.line_width = max_side, line_width
        self.temperature, self.max_tokens = temperature, max_tokens
        # The endpoint's URL is left out on purpose: the same model served elsewhere shares the cache.
        self.prompt_version = prompt_version(prompt=prompt, system=system, marking=marking, max_side=max_side,
                                             line_width=line_width, temperature=temperature, max_tokens=max_tokens)

    def messages(self, image: Image.Image, mask: np.ndarray | None) -> list[dict[str, Any]]:
        """The chat messages sent for one region (useful to inspect or log a request)."""
        images = mark_region(image, mask, self.marking, max_side=self.max_side, line_width=self.line_width)
        text = region_prompt(self.prompt, self.marking, whole_image=mask is None)
        content = [image_content(im, max_side=None) for im in images] + [{"type": "text", "text": text}]
        out: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        return out + [{"role": "user", "content": content}]

    def describe(self, image: Image.Image, mask: np.ndarray | None, region: Region | None = None) -> str:
        reply = self.client.chat(self.messages(image, mask), temperature=self.temperature, max_tokens=self.max_tokens)
        return clean_description(reply)

    def __repr__(self) -> str:
        return f"OpenAIDescriber({self.spec!r}, base_url={self.client.base_url!r}, prompt_version={self.prompt_version!r})"


def build_openai_describer(arg: str, **kwargs: Any) -> OpenAIDescriber:
    """``openai:<model>``; kwargs go to :class:`OpenAIDescriber` (base_url, api_key, prompt, marking, ...)."""
    if not arg:
        raise ValueError("describer 'openai:' needs a model name, e.g. 'openai:gpt-4o-mini'")
    return OpenAIDescriber(arg, **kwargs)
