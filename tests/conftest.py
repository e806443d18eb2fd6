"""Shared fixtures: offline mode, tiny random-init models saved to disk, small generated datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# colour + stripe pattern per class: learnable from max-pooled features of a random backbone
CLASS_STYLE = {"metal": ((200, 200, 210), 2), "wood": ((150, 90, 40), 6), "fabric": ((40, 60, 160), 3)}


def make_region_image(rng: np.random.Generator, label: str, size: int = 96) -> tuple[Image.Image, np.ndarray]:
    """An image with a textured object of class ``label`` on a noisy background, and its mask."""
    color, period = CLASS_STYLE[label]
    bg = rng.integers(0, 255, (size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx // period) % 2).astype(np.float32)[..., None]
    obj = np.clip(np.array(color)[None, None] * (0.75 + 0.25 * stripes) + rng.normal(0, 8, (size, size, 3)), 0, 255)
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    r = rng.integers(size // 5, size // 3)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    img = np.where(mask[..., None], obj, bg).astype(np.uint8)
    return Image.fromarray(img), mask


def write_dataset(root: Path, n_per_class: int = 10, seed: int = 0, size: int = 96,
                  labels: tuple[str, ...] = ("metal", "wood", "fabric"), describe: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    lines = []
    for label in labels:
        for k in range(n_per_class):
            img, mask = make_region_image(rng, label, size)
            name = f"{label}_{k:03d}"
            img.save(root / "images" / f"{name}.jpg", quality=92)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
            line = {"file_name": f"images/{name}.jpg", "mask_file_name": f"masks/{name}.png", "label": label}
            if describe:
                line["description"] = {"metal": "cold grey sheen with fine lines", "wood": "warm brown with wide grain",
                                       "fabric": "soft blue woven threads"}[label]
            lines.append(line)
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny_dataset"))


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init DINOv2 saved with save_pretrained (loaded back through `hf:<dir>`)."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=112)
    path = tmp_path_factory.mktemp("tiny_dinov2")
    Dinov2Model(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init CLIP text tower (512-d projection) + a locally written BPE tokenizer."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    path = tmp_path_factory.mktemp("tiny_clip_text")
    chars = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, projection_dim=512, max_position_embeddings=77,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPTextModelWithProjection(cfg).eval().save_pretrained(path)
    return path
