"""The sanity filter of the triplet stage: rules that block impossible object-material-submaterial triplets.

    >>> from fmmc.synth.triplets import make_triplet
    >>> blocked(make_triplet("sponge", "metal", "brushed steel", "metal"), load_blocklist())
    'a sponge or foam object cannot be made of a hard material'

Rules live in a data file (``data/blocklist.yaml``, or your own with ``triplets.blocklist=FILE``): a rule blocks
a triplet when every key it gives matches (shell wildcards, any of a list) and none of its ``not_*`` keys does.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

_MATCH_KEYS = ("object", "material", "submaterial")


def read_data_file(spec: str, builtin: str, what: str) -> tuple[dict[str, Any], str]:
    """``(data, where)`` of a built-in data file (``spec="builtin"``) or a user's YAML/JSON file."""
    if spec == "builtin":
        text = resources.files("fmmc.synth").joinpath("data", builtin).read_text(encoding="utf-8")
        return yaml.safe_load(text) or {}, f"built-in {what} data/{builtin}"
    p = Path(spec)
    if not p.is_file():
        raise ValueError(f"{what} {spec!r} is neither 'builtin' nor an existing YAML/JSON file")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{what} file {p}: cannot parse: {e}") from e
    return data or {}, f"{what} file {p}"


def name_list(value: Any, where: str) -> list[str]:
    """``value`` as a list of stripped non-empty strings, else a ValueError naming ``where``."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: expected a list of non-empty strings, got {value!r}")
    return [v.strip() for v in value]


@dataclass(frozen=True)
class Rule:
    """Blocks a triplet when every ``match`` key matches and no ``exclude`` key does (shell wildcards)."""

    reason: str
    match: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @staticmethod
    def _hits(key: str, patterns: tuple[str, ...], t: dict[str, Any]) -> bool:
        values = [t["material"], t["label"]] if key == "material" else [t[key]]
        return any(fnmatch.fnmatchcase(v.lower(), p.lower()) for v in values for p in patterns)

    def blocks(self, t: dict[str, Any]) -> bool:
        return all(self._hits(k, p, t) for k, p in self.match.items()) and not any(
            self._hits(k, p, t) for k, p in self.exclude.items())


def load_blocklist(spec: str = "builtin") -> list[Rule]:
    if spec in ("none", ""):
        return []
    data, where = read_data_file(spec, "blocklist.yaml", "blocklist")
    raw = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected a top-level 'rules:' list (see fmmc/synth/data/blocklist.yaml)")
    rules = []
    known = set(_MATCH_KEYS) | {f"not_{k}" for k in _MATCH_KEYS} | {"reason"}
    for i, r in enumerate(raw):
        w = f"{where}: rules[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("reason"), str):
            raise ValueError(f"{w}: expected a mapping with a 'reason' and some of {sorted(known - {'reason'})}")
        bad = set(r) - known
        if bad:
            raise ValueError(f"{w}: unknown key(s) {sorted(bad)}; known: {sorted(known)}")

        def pats(v: Any, key: str, w: str = w) -> tuple[str, ...]:
            return tuple(name_list([v] if isinstance(v, str) else v, f"{w}.{key}"))

        match = {k: pats(r[k], k) for k in _MATCH_KEYS if k in r}
        exclude = {k: pats(r[f"not_{k}"], f"not_{k}") for k in _MATCH_KEYS if f"not_{k}" in r}
        if not match and not exclude:
            raise ValueError(f"{w}: a rule needs at least one of {sorted(known - {'reason'})}")
        rules.append(Rule(r["reason"], match, exclude))
    return rules


def blocked(t: dict[str, Any], rules: Iterable[Rule]) -> str | None:
    """The reason of the first rule blocking ``t``, or None."""
    for rule in rules:
        if rule.blocks(t):
            return rule.reason
    return None
