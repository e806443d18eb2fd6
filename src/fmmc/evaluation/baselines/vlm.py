"""Zero-shot VLM baseline (the paper's GPT-4v column): the VLM picks ONE label from the class list.

    fmmc eval zeroshot:vlm:openai:gpt-4o --data fmd:/data/fmd --out runs/eval-gpt4o
    fmmc eval "zeroshot:vlm:openai:Qwen/Qwen2.5-VL-7B-Instruct?base_url=http://localhost:8000/v1" --data ...

The region is shown as the describers show it (red outline + close-up crop, :mod:`fmmc.language.marking`)
and the model is asked for one material from the list of candidate classes (the test set's classes with
``--classes restrict``). Replies are parsed by :class:`fmmc.evaluation.baselines.answers.AnswerParser`; a reply it
cannot map to a class is an abstention (counted wrong) and listed in the report with the raw text.
Raw replies are cached in SQLite (keyed by image/mask bytes, model, and a hash of prompt + class list +
marking), so a re-run costs nothing and a better parser applies to cached replies too. Each prediction is
one-hot (a VLM reply carries no calibrated confidence).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fmmc.data.records import Region
from fmmc.evaluation.baselines.answers import AnswerParser
from fmmc.model.prediction import Prediction
from fmmc.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

SYSTEM = "You are an expert in materials. You classify the material of a marked image region."
PROMPT = ("Which material is {region} made of? Choose exactly ONE of these materials: {labels}. "
          "Reply with the material name only, exactly as written in the list.")


class VLMZeroShot:
    """An OpenAI-compatible chat model as a zero-shot region classifier."""

    def __init__(self, model: str, taxonomy: str | Taxonomy = "default", base_url: str | None = None,
                 api_key: str | None = None, cache_path: str | Path | None = None, marking: str = "contour+crop",
                 max_side: int | None = 1024, max_tokens: int = 30, timeout: float = 60.0, max_retries: int = 4,
                 backoff: float = 1.0, workers: int = 4) -> None:
        from fmmc.language.marking import MARKINGS
        from fmmc.language.openai_client import OpenAIChatClient

        if not model:
            raise ValueError("zeroshot:vlm:openai: needs a model name, e.g. zeroshot:vlm:openai:gpt-4o")
        if marking not in MARKINGS:
            raise ValueError(f"unknown marking {marking!r}; use one of {', '.join(MARKINGS)}")
        self.client = OpenAIChatClient(model, base_url=base_url, api_key=api_key, timeout=timeout,
                                       max_retries=max_retries, backoff=backoff)
        self.taxonomy = load_taxonomy(taxonomy)
        self.parser = AnswerParser(self.taxonomy)
        self.marking, self.max_side, self.max_tokens, self.workers = marking, max_side, max_tokens, max(1, workers)
        self.spec = f"zeroshot:vlm:openai:{model}"
        self.cache = None
        if cache_path is not None:
            from fmmc.language.cache import DescriptionCache

            self.cache = DescriptionCache(cache_path)
        self.config = {"kind": "zeroshot-vlm", "model": model, "base_url": self.client.base_url, "marking": marking,
                       "prompt": PROMPT, "system": SYSTEM, "max_tokens": max_tokens, "taxonomy": self.taxonomy.name,
                       "cache": str(cache_path) if cache_path else None}

    @property
    def labels(self) -> tuple[str, ...]:
        return self.taxonomy.names

    def prompt_text(self, candidates: list[str], whole_image: bool) -> str:
        from fmmc.language.marking import REGION_PHRASES

        phrase = REGION_PHRASES["whole" if whole_image else self.marking]
        return PROMPT.format(region=phrase, labels=", ".join(candidates))

    def prompt_version(self, candidates: list[str]) -> str:
        from fmmc.language.marking import prompt_version

        return prompt_version(kind="zeroshot-vlm", prompt=PROMPT, system=SYSTEM, candidates=candidates,
                              marking=self.marking, max_side=self.max_side, max_tokens=self.max_tokens)

    def ask(self, region: Region, candidates: list[str]) -> str:
        """The raw reply for one region (from the cache when it was asked before)."""
        from fmmc.data.regions import load_region
        from fmmc.language.cache import region_keys
        from fmmc.language.marking import mark_region
        from fmmc.language.openai_client import image_content

        version = self.prompt_version(candidates)
        keys = region_keys(region) if self.cache is not None else None
        if keys is not None:
            hit = self.cache.get(*keys, self.spec, version)  # type: ignore[union-attr]
            if hit is not None:
                return hit
        img, mask = load_region(region)
        images = mark_region(img, mask, self.marking, max_side=self.max_side)
        content = [image_content(im, max_side=None) for im in images]
        content.append({"type": "text", "text": self.prompt_text(candidates, whole_image=mask is None)})
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
        reply = self.client.chat(messages, temperature=0, max_tokens=self.max_tokens)
        if keys is not None:
            self.cache.put(*keys, self.spec, version, reply)  # type: ignore[union-attr]
        return reply

    def predict_regions(self, regions: list[Region], classes: list[str] | str | None = None,
                        progress: bool = True) -> tuple[list[Prediction | None], list[tuple[str, str]]]:
        """One-hot predictions; unparseable replies give an all-zero prediction with ``extra["abstained"]``.
        ``classes``: a subset, or None / ``"all"`` for the whole taxonomy."""
        from tqdm.auto import tqdm

        subset = classes not in (None, "all") and bool(classes)
        candidates = [self.taxonomy.names[i] for i in self.taxonomy.subset(classes)] if subset else list(self.labels)
        out: list[Prediction | None] = [None] * len(regions)
        failures: list[tuple[str, str]] = []

        def one(i: int) -> tuple[int, str | None, str | None]:
            try:
                return i, self.ask(regions[i], candidates), None
            except Exception as e:  # noqa: BLE001 - one bad region or request must not stop the evaluation
                if getattr(e, "stops_run", False):  # the endpoint is down (circuit breaker): stop the whole run
                    raise
                return i, None, f"{type(e).__name__}: {e}"

        bar = tqdm(total=len(regions), desc=f"zero-shot {self.spec}", unit="region", disable=not progress)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="fmmc-vlm") as pool:
            for i, reply, err in pool.map(one, range(len(regions))):
                bar.update(1)
                if err is not None:
                    failures.append((regions[i].id, err))
                    continue
                label, how = self.parser.parse(reply)
                probs = np.zeros(len(self.labels))
                if label is not None:
                    probs[self.taxonomy.index(label)] = 1.0
                extra: dict[str, Any] = {"answer": reply, "parsed_by": how}
                if label is None:
                    extra["abstained"] = True
                out[i] = Prediction(probs, self.labels, id=regions[i].id, extra=extra)
        bar.close()
        if failures:
            log.warning("%d of %d VLM requests failed (first: %s: %s)", len(failures), len(regions), *failures[0])
        return out, failures


def build_vlm_zeroshot(arg: str, taxonomy: str | Taxonomy = "default", cache_dir: str | Path | None = None,
                       **options: Any) -> VLMZeroShot:
    """``zeroshot:vlm:<llm spec>``, the chat model an ``llm`` registry spec names (``openai:<model>``, any
    OpenAI-compatible endpoint with image input); options: base_url, marking, workers, max_tokens, timeout,
    max_retries, backoff, max_side, device (ignored: the model runs behind the endpoint)."""
    from fmmc.core.registry import registry

    try:
        entry, model = registry("llm").parse(arg)
    except ValueError:
        entry, model = None, ""
    if entry is None or entry.prefix != "openai":
        raise ValueError(f"zeroshot:vlm:{arg}: the only VLM provider is 'openai' (any OpenAI-compatible endpoint: "
                         "OpenAI, vLLM, Ollama, LM Studio), e.g. zeroshot:vlm:openai:gpt-4o")
    options.pop("device", None)
    kwargs: dict[str, Any] = {}
    casts = {"base_url": str, "marking": str, "workers": int, "max_tokens": int, "timeout": float,
             "max_retries": int, "backoff": float, "max_side": int}
    for key, value in options.items():
        if key not in casts:
            raise ValueError(f"zeroshot:vlm: unknown option {key!r}; known: {', '.join(casts)}, taxonomy")
        kwargs[key] = casts[key](value)
    cache = Path(cache_dir) / "vlm_answers.sqlite" if cache_dir is not None else None
    return VLMZeroShot(model, taxonomy=taxonomy, cache_path=cache, **kwargs)
