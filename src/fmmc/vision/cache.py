"""Pooled-feature cache: ``<root>/<namespace>/shard-*.safetensors`` + ``index.jsonl``.

The namespace hashes everything that changes a feature (backbone spec, input size, pooling, mask rule,
dtype); the key hashes the image bytes and the mask bytes. New vectors are buffered and written as a
new shard every ``shard_size`` vectors (atomically: temp file + rename, then one index line per key), so
a crash loses at most the unflushed buffer and memory stays bounded. Reads memory-map shards lazily.

    >>> cache = FeatureCache("~/.cache/fmmc/features", namespace_of({"backbone": "hf:facebook/dinov2-base"}))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from fmmc.core.io import save_safetensors


def namespace_of(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def default_cache_dir() -> Path:
    """The feature cache's default root: ``<cache_root>/features`` (:func:`fmmc.core.paths.cache_root`)."""
    from fmmc.core.paths import cache_root

    return cache_root() / "features"


class FeatureCache:
    def __init__(self, root: str | Path, namespace: str, settings: dict[str, Any] | None = None,
                 shard_size: int = 2048) -> None:
        self.dir = Path(root).expanduser() / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self._lock = threading.Lock()
        self._index: dict[str, str] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._handles: dict[str, Any] = {}
        if settings is not None and not (self.dir / "settings.json").exists():
            (self.dir / "settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True, default=str))
        self._load_index()

    def _load_index(self) -> None:
        idx = self.dir / "index.jsonl"
        if not idx.exists():
            return
        with open(idx, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn last line after a crash
                if (self.dir / rec["shard"]).exists():
                    self._index[rec["key"]] = rec["shard"]

    def __len__(self) -> int:
        return len(self._index) + len(self._pending)

    def __contains__(self, key: str) -> bool:
        return key in self._index or key in self._pending

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            if key in self._pending:
                return self._pending[key]
            shard = self._index.get(key)
            if shard is None:
                return None
            h = self._handles.get(shard)
            if h is None:
                h = self._handles[shard] = safe_open(str(self.dir / shard), framework="pt")
            return h.get_tensor(key)

    def put(self, key: str, value: torch.Tensor) -> None:
        with self._lock:
            if key in self._index:
                return
            self._pending[key] = value.detach().to("cpu", torch.float32).contiguous().clone()
            if len(self._pending) >= self.shard_size:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        n = len(list(self.dir.glob("shard-*.safetensors")))
        while (self.dir / f"shard-{n:05d}.safetensors").exists():
            n += 1
        name = f"shard-{n:05d}.safetensors"
        save_safetensors(self._pending, self.dir / name)
        with open(self.dir / "index.jsonl", "a", encoding="utf-8") as f:
            for key in self._pending:
                f.write(json.dumps({"key": key, "shard": name}) + "\n")
                self._index[key] = name
            f.flush()
            os.fsync(f.fileno())
        self._pending.clear()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
