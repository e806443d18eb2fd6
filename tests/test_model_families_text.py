"""SigLIP 2 text towers as `hf:` text encoders, against plain transformers.

Tiny random-init copies of the real architectures (``Siglip2Model`` + ``Siglip2Tokenizer``; a fixed-resolution
``SiglipModel`` + ``GemmaTokenizer`` as the hub ships SigLIP 2 FixRes), saved and loaded back by ``hf:<dir>``.
SigLIP 2's training text: lower-cased, padded at the end to 64 tokens, no attention mask, last position pooled.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fixtures_models import shared_tiny_model

from fmmc.core.registry import build, registry

TEXTS = ["Glossy WHITE glaze", "rough brown bark with deep grooves", "a"]


@pytest.fixture(scope="session")
def siglip2_dir(tmp_path_factory):
    return shared_tiny_model("siglip2", tmp_path_factory)


@pytest.fixture(scope="session")
def siglip2_fixres_dir(tmp_path_factory):
    return shared_tiny_model("siglip2_fixres", tmp_path_factory)


def _reference(model_cls, path, texts: list[str], side: str = "right", lower: bool = True) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ids = tok([t.lower() if lower else t for t in texts], padding="max_length", max_length=64, truncation=True,
              padding_side=side, return_tensors="pt")["input_ids"]
    model = model_cls.from_pretrained(path).eval()
    with torch.no_grad():
        return F.normalize(model(input_ids=ids).pooler_output, dim=-1)


def test_siglip2_text_matches_plain_transformers(siglip2_dir):
    from transformers import Siglip2TextModel

    enc = build("text-encoder", f"hf:{siglip2_dir}")
    assert enc.max_tokens == 64 and enc.dim == 32 and enc.lowercase
    got = enc.encode(TEXTS)
    assert torch.allclose(got, _reference(Siglip2TextModel, siglip2_dir, TEXTS), atol=1e-5)
    # Siglip2Tokenizer pads on the left by default; training padded at the end, and it matters here
    assert not torch.allclose(got, _reference(Siglip2TextModel, siglip2_dir, TEXTS, side="left"), atol=1e-3)


def test_fixres_siglip2_with_gemma_tokenizer_is_lower_cased(siglip2_fixres_dir):
    from transformers import AutoTokenizer, SiglipTextModel

    tok = AutoTokenizer.from_pretrained(siglip2_fixres_dir)
    assert type(tok).__name__ == "GemmaTokenizer" and tok("RED").input_ids != tok("red").input_ids
    enc = build("text-encoder", f"hf:{siglip2_fixres_dir}")
    assert enc.family == "siglip" and enc.lowercase and enc.max_tokens == 64
    got = enc.encode(["Glossy RED", "glossy red"])
    assert torch.allclose(got[0], got[1], atol=1e-6)
    want = _reference(SiglipTextModel, siglip2_fixres_dir, ["glossy red"])
    assert torch.allclose(got[1:], want, atol=1e-5)
    cased = _reference(SiglipTextModel, siglip2_fixres_dir, ["Glossy RED"], lower=False)
    assert not torch.allclose(got[:1], cased, atol=1e-3)


def test_siglip2_text_is_listed():
    notes = dict(registry("text-encoder").specs())
    assert any("siglip2" in spec and "lower" in help_.lower() for spec, help_ in notes.items()), notes
