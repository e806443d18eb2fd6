"""The optional LLM step of the triplet stage: ask for more objects per class, judge their plausibility.

    >>> client = make_llm_client("openai:gpt-4o-mini")             # doctest: +SKIP
    >>> propose_objects(client, taxonomy, "wax", [], n=20)          # doctest: +SKIP
    [('candle holder', 'beeswax'), ...]

The client is named by an ``llm`` spec of :mod:`fmmc.core.registry` (``triplets.llm``; ``fmmc list llms``):
``none``, ``openai:MODEL`` (any OpenAI-compatible chat endpoint, ``fmmc.language.openai_client``: hosted
APIs, vLLM, Ollama, LM Studio) or your own ``package.module:factory``. Replies are parsed with
:func:`extract_json`, which tolerates code fences, prose around the JSON, trailing commas and single quotes;
a reply that still cannot be read is logged and skipped (the curated table alone always gives a usable
result). :func:`fmmc.synth.triplets.propose_triplets` turns the proposals into triplet records.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from typing import Any

from fmmc.taxonomy import Taxonomy

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z][a-z0-9 '\-]{0,38}[a-z0-9]$")

PROPOSE_SYSTEM = ("You help build a balanced image dataset of materials. You answer with JSON only, no prose.")
PROPOSE_USER = """Material class: {label} ({description}).
List {n} different everyday physical objects that are commonly made entirely of {label}, each with one
specific sub-material or appearance adjective for it (e.g. for ceramic: vase / porcelain, mug / stoneware).
Rules: every object is a concrete, countable thing an object detector can draw a box around (like "vase",
"cake pan", "armchair"); never a surface, texture, pattern, scene, background or a container holding
something else. Use plain lower-case English, at most 4 words each. Do not repeat these objects: {avoid}.
Answer with a JSON list: [{{"object": "...", "submaterial": "..."}}, ...]"""

JUDGE_SYSTEM = "You check prompts for a text-to-image dataset of materials. You answer with JSON only, no prose."
JUDGE_USER = """For each numbered (object, material class, sub-material) triplet decide whether a photo of
"a <sub-material> <object>" would plausibly show that object made (almost) entirely of that material class,
clearly visible and easy to outline. Say false for impossible pairs (e.g. a metal sponge), for objects whose
main visible part is another material, and for surfaces or textures that are not objects.
{items}
Answer with a JSON list with one entry per triplet: [{{"i": 0, "plausible": true, "reason": "short"}}, ...]"""


def make_llm_client(spec: str, base_url: str | None = None) -> Any:
    """The chat client named by the ``llm`` spec (``none`` -> None; ``openai:MODEL``; ``package.module:factory``)."""
    from fmmc.core.registry import build

    try:
        return build("llm", spec, base_url=base_url)
    except (ValueError, ImportError) as e:
        raise type(e)(f"triplets.llm={spec!r}: {e}") from e


def build_no_llm(arg: str = "", **_: Any) -> None:
    """``none``: no LLM step (the curated table only)."""
    return None


def build_openai_llm(model: str, base_url: str | None = None, **options: Any) -> Any:
    """``openai:MODEL`` -> an OpenAI-compatible chat client (base URL and key from args or environment)."""
    if not model:
        raise ValueError("'openai:' needs a model name, e.g. openai:gpt-4o-mini, or a model served by vLLM/Ollama "
                         "with triplets.llm_base_url=http://host:port/v1")
    from fmmc.language.openai_client import OpenAIChatClient

    return OpenAIChatClient(model, base_url=base_url, **options)


# ------------------------------------------------------------------------------------------- parsing
def extract_json(text: str) -> Any:
    """The first JSON value in an LLM reply.

    >>> extract_json('Sure! ```json\\n[{"object": "vase", "submaterial": "porcelain",}]\\n``` Hope it helps')
    [{'object': 'vase', 'submaterial': 'porcelain'}]
    >>> extract_json("[{'i': 0, 'plausible': True}]")
    [{'i': 0, 'plausible': True}]
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty reply")
    chunks = re.findall(r"```[a-zA-Z]*\s*(.*?)```", text, re.S) + [text]
    for chunk in chunks:
        for candidate in (chunk.strip(), _first_balanced(chunk)):
            if not candidate:
                continue
            value = _loads(candidate)
            if value is not None:
                return value
    raise ValueError(f"no JSON value found in the reply: {text[:200]!r}")


def _loads(s: str) -> Any:
    for attempt in (s, re.sub(r",\s*([\]}])", r"\1", s)):
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            pass
        try:
            py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", attempt)))
            value = ast.literal_eval(py)
            if isinstance(value, (list, dict)):
                return value
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
    return None


def _first_balanced(text: str) -> str:
    """The first bracketed ``[...]`` or ``{...}`` span, quotes respected."""
    start = next((i for i, c in enumerate(text) if c in "[{"), None)
    if start is None:
        return ""
    stack, quote, escape = [], "", False
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[{":
            stack.append("]" if c == "[" else "}")
        elif c in "]}":
            if not stack or stack.pop() != c:
                return ""
            if not stack:
                return text[start:i + 1]
    return ""


def _as_list(value: Any, keys: tuple[str, ...]) -> list[Any]:
    if isinstance(value, dict):
        for k in keys:
            if isinstance(value.get(k), list):
                return value[k]
        return [value]
    return value if isinstance(value, list) else []


def clean_name(value: Any) -> str | None:
    """A usable object / sub-material name (lower case, 2-40 plain characters), else None."""
    if not isinstance(value, str):
        return None
    name = re.sub(r"\s+", " ", value.strip().strip(".").lower())
    return name if _NAME.match(name) else None


# ------------------------------------------------------------------------------------------- propose
def _pair(item: Any) -> tuple[Any, Any]:
    if isinstance(item, dict):
        obj = item.get("object") or item.get("name")
        sub = next((item[k] for k in ("submaterial", "sub_material", "sub-material", "adjective") if k in item), None)
        return obj, sub
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return item[0], item[1]
    if isinstance(item, str) and "," in item:
        obj, sub = item.split(",", 1)
        return obj, sub
    return None, None


def propose_objects(client: Any, taxonomy: Taxonomy, label: str, avoid: list[str], n: int,
                    temperature: float = 0.7) -> list[tuple[str, str]]:
    """Ask ``client`` for ``n`` (object, sub-material) pairs of class ``label``; unclean names are skipped.

    Raises whatever the client or :func:`extract_json` raises (the caller decides what a failure costs).
    """
    prompt = PROPOSE_USER.format(label=label, description=taxonomy.describe(label), n=n,
                                 avoid=", ".join(avoid) or "(none)")
    messages = [{"role": "system", "content": PROPOSE_SYSTEM}, {"role": "user", "content": prompt}]
    items = _as_list(extract_json(client.chat(messages, temperature=temperature)), ("triplets", "objects", "items"))
    out = []
    for item in items:
        obj, sub = (clean_name(v) for v in _pair(item))
        if obj is None or sub is None:
            log.debug("LLM proposal for %r skipped (not a clean object/sub-material): %r", label, item)
            continue
        out.append((obj, sub))
    return out


# --------------------------------------------------------------------------------------------- judge
def _verdict(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "yes", "plausible", "1"):
            return True
        if v in ("false", "no", "implausible", "0"):
            return False
    return None


def judge_triplets(client: Any, triplets: list[dict[str, Any]], batch: int = 40) -> list[tuple[bool | None, str]]:
    """``(plausible, reason)`` per triplet; ``None`` where the LLM gave no readable verdict."""
    verdicts: list[tuple[bool | None, str]] = [(None, "no verdict")] * len(triplets)
    batch = max(1, batch)
    for start in range(0, len(triplets), batch):
        chunk = triplets[start:start + batch]
        lines = "\n".join(f"{i}. ({t['object']}, {t['label']}, {t['submaterial']})" for i, t in enumerate(chunk))
        messages = [{"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": JUDGE_USER.format(items=lines)}]
        try:
            answer = _as_list(extract_json(client.chat(messages, temperature=0)), ("triplets", "results", "items"))
        except Exception as e:  # noqa: BLE001
            log.warning("LLM judge failed for triplets %d-%d (%s: %s); they stay unjudged",
                        start, start + len(chunk) - 1, type(e).__name__, e)
            for i in range(len(chunk)):
                verdicts[start + i] = (None, f"judge failed: {type(e).__name__}")
            continue
        for pos, item in enumerate(answer):
            if isinstance(item, dict):
                idx = item.get("i", item.get("index", item.get("id", pos)))
                ok = _verdict(item.get("plausible", item.get("ok", item.get("valid"))))
                why = str(item.get("reason", ""))[:200]
            else:
                idx, ok, why = pos, _verdict(item), ""
            if isinstance(idx, str) and idx.isdigit():
                idx = int(idx)
            if isinstance(idx, int) and 0 <= idx < len(chunk) and ok is not None:
                verdicts[start + idx] = (ok, why)
    return verdicts
