"""Object-material-submaterial triplets: curated table -> sanity filter -> (LLM) -> de-dup -> per-class quota.

    >>> from fmmc.taxonomy import load_taxonomy
    >>> from fmmc.synth.config import TripletsConfig
    >>> result = make_triplets(TripletsConfig(per_class=10), load_taxonomy("default"), seed=0)
    >>> sum(r["status"] == "kept" for r in result.records)
    210

Every candidate is kept in ``triplets.jsonl`` with its provenance (``source``: curated | llm) and fate
(``status``: kept | filtered, ``reason``), so a dataset's composition can always be explained. Classes of
the taxonomy with no triplets at all are listed in ``result.warnings`` (and the dataset card), never a crash.
The curated table is ``data/triplets.yaml``; the rule-based blocklist is ``data/blocklist.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmmc.core.io import atomic_file, write_text_atomic
from fmmc.synth.blocklist import blocked, load_blocklist, name_list, read_data_file
from fmmc.synth.config import TripletsConfig
from fmmc.taxonomy import Taxonomy

log = logging.getLogger(__name__)

KEPT, FILTERED = "kept", "filtered"


# ----------------------------------------------------------------------------------------------- tables
def load_table(spec: str = "builtin") -> dict[str, dict[str, Any]]:
    """A curated table as ``{material: {"word", "submaterials", "objects": [{"name", "submaterials"}]}}``."""
    data, where = read_data_file(spec, "triplets.yaml", "triplet table")
    materials = data.get("materials") if isinstance(data, dict) else None
    if not isinstance(materials, dict) or not materials:
        raise ValueError(f"{where}: expected a top-level 'materials:' mapping (see fmmc/synth/data/triplets.yaml)")
    table: dict[str, dict[str, Any]] = {}
    for material, entry in materials.items():
        w = f"{where}: materials.{material}"
        if not isinstance(entry, dict):
            raise ValueError(f"{w}: expected a mapping with 'objects' and 'submaterials'")
        unknown = set(entry) - {"word", "submaterials", "objects"}
        if unknown:
            raise ValueError(f"{w}: unknown key(s) {sorted(unknown)}; known: word, submaterials, objects")
        subs = name_list(entry.get("submaterials", []), f"{w}.submaterials") if "submaterials" in entry else []
        objects = []
        for i, obj in enumerate(entry.get("objects") or []):
            ow = f"{w}.objects[{i}]"
            if isinstance(obj, str):
                obj = {"name": obj}
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
                raise ValueError(f"{ow}: expected an object name or {{name, submaterials | extra_submaterials}}")
            bad = set(obj) - {"name", "submaterials", "extra_submaterials"}
            if bad:
                raise ValueError(f"{ow}: unknown key(s) {sorted(bad)}; known: name, submaterials, extra_submaterials")
            own = name_list(obj["submaterials"], f"{ow}.submaterials") if "submaterials" in obj else list(subs)
            own += name_list(obj.get("extra_submaterials", []), f"{ow}.extra_submaterials")
            if not own:
                raise ValueError(f"{ow}: no sub-materials; give the material a 'submaterials' list or the object one")
            objects.append({"name": obj["name"].strip(), "submaterials": list(dict.fromkeys(own))})
        if not objects:
            raise ValueError(f"{w}: no objects")
        word = entry.get("word", material)
        table[str(material)] = {"word": "" if word is None else str(word), "submaterials": subs, "objects": objects}
    return table


def merge_tables(base: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add ``extra``'s objects to ``base`` (a material new to ``base`` is added whole)."""
    out = {m: {**e, "objects": list(e["objects"])} for m, e in base.items()}
    for material, entry in extra.items():
        if material in out:
            out[material]["objects"] += entry["objects"]
        else:
            out[material] = entry
    return out


# --------------------------------------------------------------------------------------------- triplets
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "as")):
        return word[:-1]
    return word


def normalize(text: str, plural: bool = True) -> str:
    """Lower case, articles dropped, a plural last word folded (``the vases`` -> ``vase``): a de-dup key."""
    words = re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()
    words = [w for w in words if w not in ("a", "an", "the")]
    if plural and words:
        words[-1] = _singular(words[-1])
    return " ".join(words)


def triplet_id(label: str, obj: str, submaterial: str) -> str:
    """A stable, filesystem-safe id (also the de-dup key): ``ceramic--vase--porcelain``."""
    return f"{slug(label)}--{slug(normalize(obj))}--{slug(normalize(submaterial, plural=False))}"


def make_triplet(obj: str, material: str, submaterial: str, label: str, word: str | None = None,
                 source: str = "curated") -> dict[str, Any]:
    return {
        "id": triplet_id(label, obj, submaterial), "object": obj, "material": material,
        "submaterial": submaterial, "label": label, "material_word": material if word is None else word,
        "source": source, "status": KEPT, "reason": "",
    }


def expand_table(table: dict[str, dict[str, Any]], taxonomy: Taxonomy) -> tuple[list[dict[str, Any]], list[str]]:
    """Every (object, sub-material) of every table material that is a class of ``taxonomy``."""
    out, unused = [], []
    for material, entry in table.items():
        label = taxonomy.canonical(material)
        if label is None:
            unused.append(material)
            continue
        for obj in entry["objects"]:
            for sub in obj["submaterials"]:
                out.append(make_triplet(obj["name"], material, sub, label, entry["word"]))
    if unused:
        log.debug("table materials not in taxonomy %r (skipped): %s", taxonomy.name, ", ".join(unused))
    return out, unused


def render_prompt(template: str, t: dict[str, Any]) -> str:
    """Fill a prompt template; the material word is left out when the sub-material or object already says it.

    >>> render_prompt("a photo of a {submaterial} {material} {object}",
    ...               {"object": "candle", "material": "wax", "submaterial": "beeswax", "label": "wax"})
    'a photo of a beeswax candle'
    >>> render_prompt("a photo of a {submaterial} {material} {object}",
    ...               {"object": "armchair", "material": "leather", "submaterial": "oxblood", "label": "leather"})
    'a photo of an oxblood leather armchair'
    """
    word = t.get("material_word", t["material"]) or ""
    if word and (word.lower() in t["submaterial"].lower() or word.lower() in t["object"].lower()):
        word = ""
    try:
        text = template.format(object=t["object"], material=word, submaterial=t["submaterial"], label=t["label"])
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"prompt template {template!r}: {e!r}; it may use only the fields "
                         "{object} {material} {submaterial} {label}") from e
    text = re.sub(r"\s+", " ", text).replace(" ,", ",").strip()
    return fix_articles(text)


def fix_articles(text: str) -> str:
    """``a oak chair`` -> ``an oak chair`` (and back); ``A`` keeps its capital."""
    def repl(m: re.Match[str]) -> str:
        art, nxt = m.group(1), m.group(2)
        vowel = nxt[0].lower() in "aeio" or (nxt[0].lower() == "u" and not nxt.lower().startswith(("uni", "use", "usu", "ut")))
        if nxt.lower().startswith(("one", "eu")):
            vowel = False
        if nxt.lower().startswith(("hour", "honest", "heir")):
            vowel = True
        new = ("an" if vowel else "a")
        return (new.capitalize() if art[0].isupper() else new) + " " + nxt

    return re.sub(r"\b(an?|An?)\s+([A-Za-z][\w'-]*)", repl, text)


# ------------------------------------------------------------------------------------------------ quota
def select_balanced(items: list[dict[str, Any]], n: int, seed: int | str, key: str = "object") -> list[dict[str, Any]]:
    """``n`` items sampled round-robin over ``key`` groups (seeded), so every object is used before any repeats."""
    if n <= 0 or n >= len(items):
        return list(items)
    rng = random.Random(str(seed))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in sorted(items, key=lambda x: x["id"]):
        groups[normalize(str(it[key]))].append(it)
    order = sorted(groups)
    rng.shuffle(order)
    for g in order:
        rng.shuffle(groups[g])
    out: list[dict[str, Any]] = []
    depth = 0
    while len(out) < n:
        for g in order:
            if depth < len(groups[g]):
                out.append(groups[g][depth])
                if len(out) == n:
                    break
        depth += 1
    return out


# ----------------------------------------------------------------------------------------------- driver
@dataclass
class TripletResult:
    records: list[dict[str, Any]]               # every candidate, kept or filtered (with reason)
    warnings: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == KEPT]

    def report(self) -> dict[str, Any]:
        per_class: dict[str, Any] = {}
        for c in self.classes:
            rs = [r for r in self.records if r["label"] == c]
            per_class[c] = {
                "candidates": len(rs),
                "kept": sum(r["status"] == KEPT for r in rs),
                "kept_by_source": dict(Counter(r["source"] for r in rs if r["status"] == KEPT)),
                "objects": len({normalize(r["object"]) for r in rs if r["status"] == KEPT}),
                "filtered": dict(Counter(_reason_kind(r["reason"]) for r in rs if r["status"] == FILTERED)),
            }
        return {"classes": per_class, "warnings": list(self.warnings),
                "total_kept": len(self.kept), "total_candidates": len(self.records)}


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _filter(t: dict[str, Any], reason: str) -> None:
    t["status"], t["reason"] = FILTERED, reason


def propose_triplets(client: Any, taxonomy: Taxonomy, classes: list[str], existing: list[dict[str, Any]],
                     words: dict[str, str], n: int, temperature: float = 0.7) -> list[dict[str, Any]]:
    """Ask the LLM ``client`` for ``n`` triplets per class (``source: llm``), avoiding the objects of ``existing``;
    a class whose request or reply fails is logged and skipped."""
    from fmmc.synth.llm_triplets import propose_objects

    out = []
    for label in classes:
        avoid = sorted({t["object"] for t in existing if t["label"] == label})[:40]
        try:
            pairs = propose_objects(client, taxonomy, label, avoid, n, temperature)
        except Exception as e:  # noqa: BLE001 - one bad class must not lose the others
            log.warning("LLM proposals for %r failed (%s: %s); using the curated table only", label, type(e).__name__, e)
            continue
        out += [make_triplet(obj, label, sub, label, words.get(label), source="llm") for obj, sub in pairs]
        log.info("LLM proposed %d usable triplets for %r", len(pairs), label)
    return out


def make_triplets(cfg: TripletsConfig, taxonomy: Taxonomy, classes: list[str] | None = None, seed: int = 0,
                  llm: Any = None) -> TripletResult:
    """All candidate triplets for ``classes`` (default: the whole taxonomy) with kept/filtered decisions.

    ``llm`` is a chat client (``.chat(messages) -> str``); when None and ``cfg.llm`` names one, it is built.
    """
    wanted = [taxonomy.index(c) for c in classes] if classes else list(range(len(taxonomy)))
    selected = [taxonomy.names[i] for i in wanted]
    table = load_table(cfg.table)
    for extra in cfg.extra_tables:
        table = merge_tables(table, load_table(extra))
    candidates, _ = expand_table(table, taxonomy)
    candidates = [c for c in candidates if c["label"] in selected]
    words = {taxonomy.canonical(m): e["word"] for m, e in table.items() if taxonomy.canonical(m)}

    if llm is None and cfg.llm:
        from fmmc.synth.llm_triplets import make_llm_client

        llm = make_llm_client(cfg.llm, cfg.llm_base_url)  # None for "none"
    if llm is not None and cfg.llm_propose_per_class > 0:
        candidates += propose_triplets(llm, taxonomy, selected, candidates, words, cfg.llm_propose_per_class)

    rules = load_blocklist(cfg.blocklist)
    seen: dict[str, str] = {}
    for t in candidates:
        if t["label"] not in selected:
            _filter(t, f"unknown class: {t['material']!r} is not a selected class of taxonomy {taxonomy.name!r}")
        elif (why := blocked(t, rules)) is not None:
            _filter(t, f"blocklist: {why}")
        elif t["id"] in seen:
            _filter(t, f"duplicate: of {seen[t['id']]} ({t['object']!r}, {t['submaterial']!r})")
        else:
            seen[t["id"]] = t["source"]
    if llm is not None and cfg.llm_judge:
        from fmmc.synth.llm_triplets import judge_triplets

        todo = [t for t in candidates if t["status"] == KEPT and (t["source"] == "llm" or cfg.llm_judge_curated)]
        for t, (ok, why) in zip(todo, judge_triplets(llm, todo, cfg.llm_judge_batch)):
            t["judged"] = ok
            if ok is False:
                _filter(t, f"llm judged implausible: {why}")
            elif ok is None:
                t["reason"] = f"not judged ({why})"

    warnings = []
    for label in selected:
        kept = [t for t in candidates if t["label"] == label and t["status"] == KEPT]
        if not kept:
            warnings.append(f"class {label!r} has no triplets: add objects for it to a table "
                            f"(triplets.extra_tables) or enable the LLM (triplets.llm=openai:MODEL)")
            continue
        if cfg.per_class and len(kept) < cfg.per_class:
            warnings.append(f"class {label!r} has only {len(kept)} triplets (quota {cfg.per_class})")
        chosen = {t["id"] for t in select_balanced(kept, cfg.per_class, f"{seed}:{label}")}
        for t in kept:
            if t["id"] not in chosen:
                _filter(t, "over quota: not sampled (triplets.per_class)")
    for w in warnings:
        log.warning("triplets: %s", w)
    candidates.sort(key=lambda t: (selected.index(t["label"]) if t["label"] in selected else len(selected),
                                   t["status"] != KEPT, t["id"]))
    return TripletResult(candidates, warnings, selected)


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records atomically (temp file, fsync, rename)."""
    path = Path(path)
    with atomic_file(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (readers on other shards never see half a file)."""
    path = Path(path)
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
