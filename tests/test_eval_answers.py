"""Parsing a VLM's free-text answer into one class."""

from __future__ import annotations

import pytest

from fmmc.evaluation.baselines.answers import AnswerParser
from fmmc.taxonomy import Taxonomy, load_taxonomy


@pytest.fixture(scope="module")
def parser() -> AnswerParser:
    return AnswerParser(load_taxonomy("default"))


@pytest.mark.parametrize("reply, label, how", [
    ("wood", "wood", "exact"),
    ("Wood.", "wood", "exact"),
    ("  METAL\n", "metal", "exact"),
    ("**Glass**", "glass", "exact"),
    ("Tiles", "tile", "exact"),  # plural
    ("fabrics", "fabric", "exact"),
    ("Porcelain", "ceramic", "exact"),  # synonym
    ("stainless steel", "metal", "exact"),
    ("Plastic clear", "plastic", "exact"),  # a DMS name
    ("cloth", "fabric", "exact"),  # part of DMS 'Fabric/cloth'
    ("It is made of wood.", "wood", "exact"),
    ("wood material", "wood", "exact"),
    ("Answer: Stone", "stone", "answer-field"),
    ("The region is a kitchen counter.\nMaterial: granite", "stone", "answer-field"),
    ('{"material": "Leather"}', "leather", "json"),
    ('```json\n{"label": "paper"}\n```', "paper", "json"),
    ('Sure! {"answer": "rubber"}', "rubber", "json"),
    ('"water"', "water", "json"),
    ("The outlined region looks like brushed aluminium to me.", "metal", "mention"),
    ("I believe this is a wooden surface with visible grain", "wood", "mention"),
])
def test_parses(parser: AnswerParser, reply: str, label: str, how: str):
    assert parser.parse(reply) == (label, how)


@pytest.mark.parametrize("reply, why", [
    ("", "empty reply"),
    (None, "empty reply"),
    ("I cannot tell from this image.", "no class named"),
    ("glass or plastic", "ambiguous: glass, plastic"),
    ("Not metal; it is wood.", "ambiguous: metal, wood"),  # negation is not guessed
    ("asphalt", "no class named"),
])
def test_unparseable(parser: AnswerParser, reply: str | None, why: str):
    assert parser.parse(reply) == (None, why)


def test_words_inside_other_words_do_not_match(parser: AnswerParser):
    assert parser.parse("tinted windows")[0] is None  # 'tin' (metal) must not match inside 'tinted'
    assert parser.parse("a goldfish")[0] is None


def test_custom_taxonomy_only_maps_to_its_classes():
    tax = Taxonomy(("metal", "wood"), aliases={"alu": "metal"})
    p = AnswerParser(tax, extra_synonyms={"oak": "wood"})
    assert p.parse("porcelain") == (None, "no class named")  # ceramic is not a class here
    assert p.parse("alu") == ("metal", "exact")
    assert p.parse("Answer: oak") == ("wood", "answer-field")
