"""Builders for the evaluation tests: small test sets in every layout, tiny models, a fake OpenAI server.

    from fixtures_eval import write_fmd, write_dms, write_folder, make_tiny_clip, openai_server, shared

    clip_dir = shared("clip", make_tiny_clip)   # built once per session, reused by every module

Images are solid colours with a little noise, one colour per class (``COLORS``), so a test can predict
what a colour-reading fake VLM will answer; the object is a centred rectangle (the mask).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

COLORS = {"metal": (200, 200, 210), "wood": (150, 90, 40), "fabric": (40, 60, 160), "glass": (120, 220, 230),
          "stone": (110, 110, 100), "plastic": (230, 30, 40)}


def region_image(label: str, rng: np.random.Generator, size: int = 64, background: tuple[int, int, int] = (20, 120, 20)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``[size, size, 3]`` uint8 image with a centred rectangle of the class colour, and its bool mask."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = background
    mask = np.zeros((size, size), dtype=bool)
    q = size // 4 + 3  # edges off the 8x8 JPEG grid, so JPEG masks get grey ringing
    mask[q:size - q, q:size - q] = True
    img[mask] = COLORS[label]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_fmd(root: Path, classes: tuple[str, ...] = ("metal", "wood", "fabric"), n: int = 4, size: int = 64,
              seed: int = 0) -> Path:
    """FMD layout: image/<class>/<name>.jpg + mask/<class>/<name>.jpg (JPEG masks, not exactly binary)."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        for k in range(n):
            img, mask = region_image(cls, rng, size)
            for sub, arr in (("image", img), ("mask", mask.astype(np.uint8) * 255)):
                (root / sub / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / sub / cls / f"{cls}_{k:03d}.jpg", quality=75)
    return root


def write_folder(root: Path, classes: tuple[str, ...] = ("metal", "wood"), n: int = 3, size: int = 48,
                 seed: int = 1) -> Path:
    """``<class>/*.jpg`` whole-image regions."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            arr = np.clip(np.array(COLORS[cls], dtype=np.float32) + rng.normal(0, 6, (size, size, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / cls / f"{k}.jpg", quality=90)
    return root


# DMS taxonomy indices used below (see fmmc.taxonomy.taxonomy.dms_names())
DMS = {"No label": 0, "Fabric/cloth": 13, "I cannot tell": 22, "Metal": 26, "Sky": 38, "Wood": 52, "Wood tree": 53}


def write_dms(root: Path, n: int = 3, size: int = 40, split: str = "test") -> Path:
    """DMS layout: labels/<split>/*.png label maps + images/<split>/*.jpg.

    Each map: left half Metal (26), right half Wood (52), a top band of Sky (38, unmapped), a bottom-left
    'I cannot tell' (22, non-material) patch, a No-label (0) border and a 2-pixel Fabric speck (below 1%).
    """
    rng = np.random.default_rng(2)
    for k in range(n):
        lab = np.zeros((size, size), dtype=np.uint8)
        lab[8:-1, 1:size // 2] = DMS["Metal"]
        lab[8:-1, size // 2:-1] = DMS["Wood"]
        lab[1:8, 1:-1] = DMS["Sky"]
        lab[-6:-1, 1:6] = DMS["I cannot tell"]
        lab[20, 20:22] = DMS["Fabric/cloth"]
        img = np.zeros((size, size, 3), dtype=np.float32)
        img[lab == DMS["Metal"]] = COLORS["metal"]
        img[lab == DMS["Wood"]] = COLORS["wood"]
        img[lab == DMS["Sky"]] = (130, 180, 240)
        img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
        for sub, arr, ext in (("labels", lab, "png"), ("images", img, "jpg")):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / split / f"oi_{k:04d}.{ext}")
    return root


def write_train(root: Path, classes: tuple[str, ...] = ("metal", "wood", "fabric"), n: int = 8, size: int = 64,
                seed: int = 3) -> Path:
    """A training set in the fmmc format (metadata.jsonl, PNG masks, descriptions)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    lines = []
    for cls in classes:
        for k in range(n):
            img, mask = region_image(cls, rng, size, background=tuple(int(v) for v in rng.integers(0, 255, 3)))
            name = f"{cls}_{k:03d}"
            Image.fromarray(img).save(root / "images" / f"{name}.jpg", quality=92)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
            lines.append({"file_name": f"images/{name}.jpg", "mask_file_name": f"masks/{name}.png", "label": cls,
                          "description": f"a {cls} looking surface"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def make_tiny_dinov2(path: Path, seed: int = 0) -> Path:
    """A tiny random-init DINOv2 saved with save_pretrained (loads back as ``hf:<path>``)."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=56)
    Dinov2Model(cfg).eval().save_pretrained(path)
    return path


def make_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A tiny random-init CLIPModel (both towers, 64-d projection) + processor + a locally written tokenizer.

    Usable as ``zeroshot:clip:<path>`` and as the text encoder ``hf:<path>``.
    """
    import torch
    from fixtures_synth import write_tiny_clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    write_tiny_clip_tokenizer(path)
    tok = CLIPTokenizer.from_pretrained(path, model_max_length=77)
    v = len(tok)
    text = dict(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=v - 2, eos_token_id=v - 1, pad_token_id=v - 1, projection_dim=64)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, projection_dim=64)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)).eval().save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(path)
    return path


_SHARED: dict[str, Path] = {}


def shared(name: str, build: Callable[[Path], Path]) -> Path:
    """``build(dir)`` once per test session (a temp dir removed at exit), shared by every test module."""
    if name not in _SHARED:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix=f"fmmc-test-{name}-"))
        atexit.register(shutil.rmtree, root, True)
        _SHARED[name] = build(root / name)
    return _SHARED[name]


def decode_images(body: dict[str, Any]) -> list[Image.Image]:
    """The images of a chat-completions request (data URLs)."""
    out = []
    for msg in body.get("messages", []):
        content = msg.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    data = part["image_url"]["url"].split(",", 1)[1]
                    out.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    return out


def nearest_class(img: Image.Image) -> str:
    """The class whose colour is nearest the image's centre pixels."""
    arr = np.asarray(img, dtype=np.float32)
    h, w = arr.shape[:2]
    mean = arr[h // 3: 2 * h // 3, w // 3: 2 * w // 3].reshape(-1, 3).mean(0)
    return min(COLORS, key=lambda c: float(np.sum((mean - np.array(COLORS[c])) ** 2)))


@contextmanager
def openai_server(reply: Callable[[dict[str, Any]], str]) -> Iterator[dict[str, Any]]:
    """A real HTTP server on 127.0.0.1 speaking OpenAI chat completions; ``reply(body)`` gives the text.

    Yields ``{"base_url": ..., "requests": [body, ...]}``.
    """
    state: dict[str, Any] = {"requests": []}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["requests"].append(body)
            if not self.path.endswith("/chat/completions"):
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": reply(body)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["base_url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
