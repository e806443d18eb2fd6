"""Tiny random-init models for the synthetic-data tests (a plain module; fixtures live in the test files).

    from fixtures_synth import make_tiny_sd_pipeline
    path = make_tiny_sd_pipeline(tmp_path / "tiny-sd")     # a save_pretrained folder, ~1 MB
    Generator(GenerateConfig(model_id=str(path), ...), root)  # loads it like a real checkpoint

The tokenizer is a byte-level CLIP BPE with no merges: every character is a token, so any prompt tokenizes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable-character table (the 256 base tokens of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _byte_vocab() -> dict[str, int]:
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def write_tiny_clip_tokenizer(path: str | Path) -> Path:
    """A CLIPTokenizer folder (vocab.json, merges.txt) with a character-level vocabulary of 514 tokens."""
    from transformers import CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(_byte_vocab()))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    tok.save_pretrained(path)
    return path


def make_tiny_sd_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save a random-init StableDiffusionPipeline (64x64 images, 4x4 latents per 8 px) to ``path``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=600, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=512, eos_token_id=513, pad_token_id=513,
    ))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(tmp))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


class OOMAbove:
    """Wrap a pipeline so any call with more than ``max_batch`` prompts raises a (fake) CUDA OOM."""

    def __init__(self, pipe: Any, max_batch: int) -> None:
        self.pipe = pipe
        self.max_batch = max_batch
        self.calls: list[int] = []

    def __call__(self, prompt: list[str], **kwargs: Any) -> Any:
        import torch

        self.calls.append(len(prompt))
        if len(prompt) > self.max_batch:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (batch {len(prompt)})")
        return self.pipe(prompt=prompt, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)


class BlackImages:
    """Wrap a pipeline so it returns all-black images, flagging every other one as NSFW (like SD's checker)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def __call__(self, prompt: list[str], **kwargs: Any) -> Any:
        from PIL import Image

        out = self.pipe(prompt=prompt, **kwargs)
        size = out.images[0].size
        out.images = [Image.new("RGB", size) for _ in out.images]
        out.nsfw_content_detected = [i % 2 == 0 for i in range(len(out.images))]
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)
