"""Triplet stage: curated table coverage, blocklist, de-dup, quotas, user taxonomies, the LLM step."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from fmmc.synth.blocklist import blocked, load_blocklist
from fmmc.synth.config import TripletsConfig
from fmmc.synth.llm_triplets import extract_json, judge_triplets
from fmmc.synth.triplets import (
    load_table,
    make_triplet,
    make_triplets,
    normalize,
    propose_triplets,
    render_prompt,
    select_balanced,
)
from fmmc.taxonomy import load_taxonomy

TAX = load_taxonomy("default")


@pytest.fixture(scope="module")
def all_triplets():
    return make_triplets(TripletsConfig(per_class=0), TAX, seed=0)


def test_every_default_class_has_dozens_of_objects(all_triplets):
    report = all_triplets.report()
    assert set(report["classes"]) == set(TAX.names)
    for name, row in report["classes"].items():
        assert row["objects"] >= 20, f"{name}: only {row['objects']} objects"
        assert row["kept"] >= 150, f"{name}: only {row['kept']} triplets"
    assert all_triplets.warnings == []


def test_curated_table_passes_its_own_blocklist(all_triplets):
    filtered = [r for r in all_triplets.records if r["status"] == "filtered"]
    assert filtered == [], filtered[:5]


def test_curated_objects_are_segmentable_names():
    rules = load_blocklist()
    for material, entry in load_table().items():
        for obj in entry["objects"]:
            t = make_triplet(obj["name"], material, obj["submaterials"][0], material)
            assert blocked(t, rules) is None, (material, obj["name"])
            assert obj["name"] == obj["name"].strip() and len(obj["name"].split()) <= 4, obj["name"]


def test_blocklist_removes_impossible_pairs():
    rules = load_blocklist()
    assert "hard material" in blocked(make_triplet("sponge", "metal", "brushed steel", "metal"), rules)
    assert "segmentable" in blocked(make_triplet("wood texture", "wood", "oak", "wood"), rules)
    assert "container" in blocked(make_triplet("glass of water", "water", "clear", "water"), rules)
    assert "ceramic" in blocked(make_triplet("chair", "wood", "porcelain", "wood"), rules)
    assert blocked(make_triplet("vase", "ceramic", "porcelain", "ceramic"), rules) is None
    assert blocked(make_triplet("kitchen sponge", "sponge", "yellow", "sponge"), rules) is None


def test_blocked_candidates_are_kept_in_the_output_with_a_reason(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"materials": {"metal": {"objects": [
        {"name": "sponge", "submaterials": ["brushed steel"]}, {"name": "vases", "submaterials": ["copper"]},
        {"name": "vase", "submaterials": ["copper"]}]}}}))
    res = make_triplets(TripletsConfig(per_class=0, extra_tables=[str(extra)]), TAX, ["metal"], seed=0)
    by = {(r["object"], r["submaterial"]): r for r in res.records}
    assert by[("sponge", "brushed steel")]["status"] == "filtered"
    assert by[("sponge", "brushed steel")]["reason"].startswith("blocklist:")
    # "vases"/"vase" + copper are one triplet: the curated metal vase comes first, the extras are duplicates
    dups = [r for r in res.records if r["id"] == "metal--vase--copper"]
    assert [d["status"] for d in dups] == ["kept", "filtered", "filtered"]
    assert all(d["reason"].startswith("duplicate") for d in dups[1:])


def test_quota_balances_classes_and_spreads_objects():
    res = make_triplets(TripletsConfig(per_class=30), TAX, seed=0)
    counts = Counter(r["label"] for r in res.kept)
    assert set(counts.values()) == {30} and len(counts) == 21
    for label in TAX.names:
        objects = Counter(normalize(r["object"]) for r in res.kept if r["label"] == label)
        n_objects = len({normalize(r["object"]) for r in res.records if r["label"] == label})
        assert max(objects.values()) - min(objects.values()) <= 1 or len(objects) == n_objects
    over = [r for r in res.records if r["status"] == "filtered"]
    assert over and all(r["reason"].startswith("over quota") for r in over)
    assert len({r["id"] for r in res.records}) == len(res.records)  # the curated table has no duplicates


def test_quota_sampling_is_seeded():
    a = make_triplets(TripletsConfig(per_class=5), TAX, ["wax", "tile"], seed=1)
    b = make_triplets(TripletsConfig(per_class=5), TAX, ["wax", "tile"], seed=1)
    c = make_triplets(TripletsConfig(per_class=5), TAX, ["wax", "tile"], seed=2)
    ids = lambda r: [t["id"] for t in r.kept]  # noqa: E731
    assert ids(a) == ids(b) != ids(c)


def test_select_balanced_round_robin():
    items = [{"id": f"{o}{k}", "object": o} for o in "abc" for k in range(5)]
    chosen = select_balanced(items, 6, seed=0)
    assert Counter(i["object"] for i in chosen) == {"a": 2, "b": 2, "c": 2}
    assert select_balanced(items, 0, seed=0) == items


def test_user_taxonomy_class_without_triplets_is_a_warning(tmp_path):
    tax = load_taxonomy({"name": "mine", "classes": ["wood", "metal", "unobtainium"]})
    res = make_triplets(TripletsConfig(per_class=3), tax, seed=0)
    assert Counter(r["label"] for r in res.kept) == {"wood": 3, "metal": 3}
    assert any("unobtainium" in w and "no triplets" in w for w in res.warnings)
    assert res.report()["classes"]["unobtainium"]["kept"] == 0


def test_bad_table_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"materials": {"wood": {"objects": [{"nme": "chair"}]}}}))
    with pytest.raises(ValueError, match=r"materials.wood.objects\[0\]"):
        load_table(str(bad))
    bad.write_text(yaml.safe_dump({"rules": [{"object": "x", "colour": "red", "reason": "r"}]}))
    with pytest.raises(ValueError, match=r"rules\[0\].*colour"):
        load_blocklist(str(bad))


def test_render_prompt_drops_redundant_material_word_and_fixes_articles():
    t = make_triplet("candle", "wax", "beeswax", "wax")
    assert render_prompt("a photo of a {submaterial} {material} {object}", t) == "a photo of a beeswax candle"
    t = make_triplet("vase", "ceramic", "earthenware", "ceramic")
    assert render_prompt("a photo of a {submaterial} {material} {object}", t) == "a photo of an earthenware ceramic vase"
    t = make_triplet("kitchen sponge", "sponge", "yellow", "sponge")
    assert render_prompt("A {submaterial} {material} {object}", t) == "A yellow kitchen sponge"
    with pytest.raises(ValueError, match="fields"):
        render_prompt("a {colour} {object}", t)


# ---- the LLM step, with a scripted client ----------------------------------------------------------------
class FakeLLM:
    def __init__(self, replies):
        self.replies = list(replies)
        self.messages = []

    def chat(self, messages, **params):
        self.messages.append(messages)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_extract_json_is_robust():
    assert extract_json('```json\n[{"a": 1,},]\n```') == [{"a": 1}]
    assert extract_json('Here you go: {"triplets": [["vase", "porcelain"]]} thanks') == {"triplets": [["vase", "porcelain"]]}
    assert extract_json("[{'i': 0, 'plausible': false}]") == [{"i": 0, "plausible": False}]
    assert extract_json('text [1, 2] then {"x": "]"}') == [1, 2]
    with pytest.raises(ValueError):
        extract_json("no json here")


def test_llm_proposes_and_judges(tmp_path):
    proposals = ('Sure!\n```json\n[{"object": "candle holder", "submaterial": "beeswax"},\n'
                 ' {"object": "sponge", "submaterial": "paraffin"},\n {"object": "wax TEXTURE", "submaterial": "soy"},\n'
                 ' {"object": "", "submaterial": "x"}, ["lip balm stick", "natural"], {"object": "candle", "submaterial": "dripping"},]\n```')
    judge = json.dumps([{"i": 0, "plausible": True}, {"i": 1, "plausible": "no", "reason": "lip balm is not wax"}])
    llm = FakeLLM([proposals, judge])
    res = make_triplets(TripletsConfig(per_class=0, llm_propose_per_class=5), TAX, ["wax"], seed=0, llm=llm)
    got = {(r["object"], r["submaterial"]): r for r in res.records if r["source"] == "llm"}
    assert got[("candle holder", "beeswax")]["status"] == "kept" and got[("candle holder", "beeswax")]["judged"] is True
    assert got[("lip balm stick", "natural")]["status"] == "filtered"
    assert "llm judged implausible: lip balm" in got[("lip balm stick", "natural")]["reason"]
    assert got[("wax texture", "soy")]["reason"].startswith("blocklist")  # not a segmentable object
    assert got[("candle", "dripping")]["reason"].startswith("duplicate")  # already curated
    assert ("", "x") not in got
    assert "wax" in llm.messages[0][1]["content"]


def test_llm_failures_never_crash_the_stage():
    llm = FakeLLM([RuntimeError("connection refused"), "not json at all"])
    res = make_triplets(TripletsConfig(per_class=4), TAX, ["wax", "wicker"], seed=0, llm=llm)
    assert Counter(r["label"] for r in res.kept) == {"wax": 4, "wicker": 4}
    assert all(r["source"] == "curated" for r in res.records)


def test_judge_handles_partial_and_failed_answers():
    ts = [make_triplet(f"obj{i}", "wood", "oak", "wood", source="llm") for i in range(3)]
    verdicts = judge_triplets(FakeLLM(['[{"index": "2", "plausible": false, "reason": "no"}]']), ts)
    assert verdicts[2] == (False, "no") and verdicts[0][0] is None
    verdicts = judge_triplets(FakeLLM([ValueError("boom")]), ts)
    assert all(v[0] is None and "judge failed" in v[1] for v in verdicts)


def test_propose_skips_unclean_names():
    reply = json.dumps({"objects": [{"object": "Vase!!", "submaterial": "clay"}, {"name": "bowl", "adjective": "raku"}]})
    out = propose_triplets(FakeLLM([reply]), TAX, ["ceramic"], [], {"ceramic": "ceramic"}, n=2)
    assert [(t["object"], t["submaterial"], t["source"]) for t in out] == [("bowl", "raku", "llm")]


def test_llm_spec_is_resolved_by_the_registry(tmp_path, monkeypatch):
    from fmmc.language.openai_client import OpenAIChatClient
    from fmmc.synth.llm_triplets import make_llm_client

    assert make_llm_client("none") is None
    client = make_llm_client("openai:tiny-chat", base_url="http://127.0.0.1:9/v1")
    assert isinstance(client, OpenAIChatClient) and client.model == "tiny-chat" and client.spec == "openai:tiny-chat"
    with pytest.raises(ValueError, match=r"(?s)triplets.llm='bogus/x': unknown llm spec.*openai:gpt-4o-mini"):
        make_llm_client("bogus/x")
    with pytest.raises(ValueError, match="'openai:' needs a model name"):
        make_llm_client("openai:")
    # your own client by 'package.module:factory', built with the configured base URL
    (tmp_path / "my_llms.py").write_text(
        "import json\n"
        "class Canned:\n"
        "    def __init__(self, base_url):\n"
        "        self.base_url = base_url\n"
        "    def chat(self, messages, **_):\n"
        "        if 'List' in messages[-1]['content']:\n"
        "            return json.dumps([{'object': 'drinking straw', 'submaterial': 'reed'}])\n"
        "        return json.dumps([{'i': 0, 'plausible': True}])\n"
        "def make(base_url=None):\n"
        "    return Canned(base_url)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = TripletsConfig(per_class=0, llm="my_llms:make", llm_base_url="http://x/v1", llm_propose_per_class=1)
    res = make_triplets(cfg, TAX, ["wicker"], seed=0)
    got = [r for r in res.records if r["source"] == "llm"]
    assert [(r["object"], r["submaterial"], r.get("judged")) for r in got] == [("drinking straw", "reed", True)]
