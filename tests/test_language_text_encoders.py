"""Text encoders built through the registry: tiny random CLIP/SigLIP saved to disk, the real offline MiniLM."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_synth import _bytes_to_unicode

from fmmc.core.hub import WeightsUnavailableError
from fmmc.core.registry import build
from fmmc.language.text_encoders import TextEncoder


def write_clip_tokenizer(out: Path) -> Any:
    """A real CLIPTokenizer from a locally written vocab.json/merges.txt (byte alphabet + a few merges)."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    merges = ["t h", "th e</w>", "i n", "in g</w>", "e r</w>"]
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(out, model_max_length=77)


def _text_cfg(vocab_size: int, **kw: int) -> dict[str, int]:
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                pad_token_id=vocab_size - 1, **kw)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    out = tmp_path_factory.mktemp("tiny-clip-text")
    tok = write_clip_tokenizer(out)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(**_text_cfg(len(tok), max_position_embeddings=77), projection_dim=512)
    CLIPTextModelWithProjection(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_tiny_clip_text(tiny_clip: Path, caplog: pytest.LogCaptureFixture):
    enc = build("text-encoder", f"hf:{tiny_clip}")
    assert isinstance(enc, TextEncoder)
    assert enc.spec == f"hf:{tiny_clip}" and enc.dim == 512 and enc.max_tokens == 77
    texts = ["appears polished and shines with reflections", "", "the thing " * 60]
    with caplog.at_level(logging.WARNING, logger="fmmc.language.text_encoders"):
        x = enc.encode(texts, batch_size=2)
    assert x.shape == (3, 512) and x.dtype == torch.float32 and x.device.type == "cpu" and not x.requires_grad
    assert torch.allclose(x.norm(dim=1), torch.ones(3), atol=1e-5)
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 3" in warnings[0].getMessage() and "77-token" in warnings[0].getMessage()
    assert torch.equal(enc.encode(texts, batch_size=2), x)  # deterministic
    assert torch.allclose(enc.encode(texts), x, atol=1e-5)  # batch (padding) independent
    assert torch.allclose(enc.encode([texts[0]])[0], x[0], atol=1e-6)
    # truncation is on purpose: anything after the 77th token cannot change the embedding
    long_a, long_b = "the thing " * 60 + "glass", "the thing " * 60 + "wood"
    a, b = enc.encode([long_a, long_b])
    assert torch.allclose(a, b, atol=1e-6)
    assert enc.encode([]).shape == (0, 512)
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("a single string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1 is NoneType"):
        enc.encode(["ok", None])  # type: ignore[list-item]


def test_tiny_clip_text_is_thread_safe(tiny_clip: Path):
    enc = build("text-encoder", f"hf:{tiny_clip}")
    ref = enc.encode(["glossy", "matte rough stone"])
    results: list[torch.Tensor] = []

    def work() -> None:
        for _ in range(5):
            results.append(enc.encode(["glossy", "matte rough stone"]))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and all(torch.equal(r, ref) for r in results)


def test_full_clip_checkpoint_gives_text_features(tmp_path: Path):
    """A whole CLIP checkpoint (like openai/clip-vit-base-patch32) loads its text tower + projection."""
    from transformers import CLIPConfig, CLIPModel

    tok = write_clip_tokenizer(tmp_path)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=_text_cfg(len(tok), max_position_embeddings=77),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=16),
                     projection_dim=512)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = build("text-encoder", f"hf:{tmp_path}")
    with torch.no_grad():
        ids = tok(["brushed steel"], return_tensors="pt")
        ref = model.get_text_features(**ids)
        ref = getattr(ref, "pooler_output", ref)
    assert torch.allclose(enc.encode(["brushed steel"]), torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)


def test_tiny_siglip_text(tmp_path: Path):
    from transformers import SiglipTextConfig, SiglipTextModel

    tok = write_clip_tokenizer(tmp_path)
    torch.manual_seed(0)
    SiglipTextModel(SiglipTextConfig(**_text_cfg(len(tok), max_position_embeddings=16))).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = build("text-encoder", f"hf:{tmp_path}")
    assert enc.dim == 32 and enc.max_tokens == 16
    x = enc.encode(["glossy", "", "the thing " * 20])
    assert x.shape == (3, 32) and torch.allclose(x.norm(dim=1), torch.ones(3), atol=1e-5)


def test_loading_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="local path"):
        build("text-encoder", "hf:no-such-org/no-such-clip")
    with pytest.raises(ValueError, match="needs a model id"):
        build("text-encoder", "hf:")
    with pytest.raises(ValueError, match="unknown builtin text encoder"):
        build("text-encoder", "builtin:bert")
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'bert' model.*st:"):
        build("text-encoder", f"hf:{tmp_path}")


def test_builtin_minilm_is_real_and_semantic():
    enc = build("text-encoder", "builtin:minilm")
    assert enc.spec == "builtin:minilm" and enc.dim == 384 and enc.max_tokens > 0
    x = enc.encode(["shiny polished metal surface", "brushed steel with reflections", "soft woolen knitted fabric", ""])
    assert x.shape == (4, 384) and x.dtype == torch.float32
    assert torch.allclose(x.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert torch.allclose(enc.encode(["shiny polished metal surface"])[0], x[0], atol=1e-5)
