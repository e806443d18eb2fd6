"""Turn a VLM's free-text answer into one taxonomy class, robustly, or say why it could not.

    >>> from fmmc.taxonomy import load_taxonomy
    >>> parser = AnswerParser(load_taxonomy("default"))
    >>> parser.parse("Answer: Wood.")
    ('wood', 'answer-field')
    >>> parser.parse('{"material": "Stainless steel"}')
    ('metal', 'json')
    >>> parser.parse("I think it is glass or plastic")
    (None, 'ambiguous: glass, plastic')

Order of attempts: a JSON object (keys material/label/answer/class/category) or JSON string; an
``Answer:``/``Material:`` field; the whole reply; then every class word mentioned in the reply — one
distinct class is accepted, several are ambiguous (counted as no answer). Each candidate is matched
case-insensitively against class names, taxonomy aliases, synonyms (``data/synonyms.json`` plus the DMS
names, e.g. "Fabric/cloth") and singular forms ("tiles" -> "tile"). Mentions ignore negation: "not
metal, it is wood" is ambiguous, which is counted wrong rather than guessed.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

from fmmc.taxonomy import Taxonomy

_JSON_KEYS = ("material", "label", "answer", "class", "category", "material_class")
_FIELD = re.compile(r"(?:final answer|answer|material|label|class)\s*(?:is)?\s*[:=\-]\s*(.+)", re.IGNORECASE)
_STRIP = " \t\r\n.,;:!?\"'`*_()[]{}<>"
_FILLER = ("a ", "an ", "the ", "made of ", "it is ", "it's ", "this is ")
_SUFFIX = (" material", " surface", " texture")


@lru_cache(maxsize=1)
def _builtin_synonyms() -> dict[str, str]:
    data = json.loads(resources.files("fmmc.evaluation").joinpath("data", "synonyms.json").read_text())
    out = {k.lower(): v for k, v in data["synonyms"].items()}
    from fmmc.taxonomy import load_label_map

    for dms_name, target in load_label_map("dms").items():
        if target is None:
            continue
        out.setdefault(dms_name.lower(), target)
        for part in dms_name.split("/"):
            out.setdefault(part.strip().lower(), target)
    return out


def _singulars(word: str) -> list[str]:
    out = []
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])
    if word.endswith("s") and len(word) > 2:
        out.append(word[:-1])
    return out


class AnswerParser:
    """Map answers onto ``taxonomy``; ``extra_synonyms`` adds or overrides ``{word: class}`` entries."""

    def __init__(self, taxonomy: Taxonomy, extra_synonyms: dict[str, str] | None = None) -> None:
        self.taxonomy = taxonomy
        terms: dict[str, str] = {}
        for word, target in {**_builtin_synonyms(), **(extra_synonyms or {})}.items():
            name = taxonomy.canonical(target)
            if name is not None:
                terms[word.lower()] = name
        for alias, target in taxonomy.aliases.items():
            name = taxonomy.canonical(target)
            if name is not None:
                terms[alias.lower()] = name
        for n in taxonomy.names:
            terms[n.lower()] = n
        self.terms = terms
        # longest terms first, so "stainless steel" wins over "steel"; optional plural suffix
        alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
        self._mention = re.compile(rf"(?<![\w-])({alternatives})(?:e?s)?(?![\w-])", re.IGNORECASE)

    def lookup(self, candidate: str) -> str | None:
        """The class for one short candidate answer, or None."""
        text = " ".join(candidate.lower().split()).strip(_STRIP)
        for _ in range(3):
            changed = False
            for prefix in _FILLER:
                if text.startswith(prefix):
                    text, changed = text[len(prefix):].strip(_STRIP), True
            for suffix in _SUFFIX:
                if text.endswith(suffix):
                    text, changed = text[: -len(suffix)].strip(_STRIP), True
            if not changed:
                break
        for form in (text, *_singulars(text)):
            if form in self.terms:
                return self.terms[form]
        return None

    def parse(self, reply: str | None) -> tuple[str | None, str]:
        """``(class or None, how)``; ``how`` says which rule matched, or why nothing did."""
        if reply is None or not reply.strip():
            return None, "empty reply"
        text = reply.strip()
        if text.startswith("```"):
            text = text.strip("`").removeprefix("json").strip()
        for cand in self._json_candidates(text):
            label = self.lookup(cand)
            if label is not None:
                return label, "json"
        for m in _FIELD.finditer(text):
            label = self.lookup(m.group(1).splitlines()[0])
            if label is not None:
                return label, "answer-field"
        label = self.lookup(text)
        if label is not None:
            return label, "exact"
        found = list(dict.fromkeys(self.terms[m.group(1).lower()] for m in self._mention.finditer(text)))
        if len(found) == 1:
            return found[0], "mention"
        if found:
            return None, "ambiguous: " + ", ".join(found)
        return None, "no class named"

    @staticmethod
    def _json_candidates(text: str) -> list[str]:
        blobs = [text]
        m = re.search(r"\{.*\}", text, re.DOTALL)
        if m and m.group(0) != text:
            blobs.append(m.group(0))
        out = []
        for blob in blobs:
            try:
                obj = json.loads(blob)
            except (json.JSONDecodeError, ValueError):
                continue
            if isinstance(obj, str):
                out.append(obj)
            elif isinstance(obj, dict):
                lowered = {str(k).lower(): v for k, v in obj.items()}
                out += [lowered[k] for k in _JSON_KEYS if isinstance(lowered.get(k), str)]
        return out
