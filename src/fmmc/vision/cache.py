"""Pooled-feature cache: ``<root>/<namespace>/{shard,part}-*.safetensors`` + ``index.jsonl``.

The namespace hashes everything that changes a feature (backbone spec, weights fingerprint, input size,
pooling, mask rule, dtype); the key hashes the image bytes and the mask bytes.

Durability: :meth:`FeatureCache.commit` (called after every batch) writes the batch's new vectors as a
small ``part-*`` file (temp file, fsync, rename) and then appends one ``index.jsonl`` line per key
(fsync). A process killed at any moment (``kill -9``, a preempted node) therefore loses at most the batch
in flight, and a half-written file is never indexed. Once this process's parts hold ``shard_size``
vectors (and at :meth:`compact`) they are merged into one ``shard-*`` file; the merged shard's index
lines come later in the file, and the last line of a key whose file exists wins, so a kill during a
merge leaves a valid cache too. Each process merges its own parts, so several writers can share a
cache; a writer holds an exclusive lock on ``writer-<id>.lock`` while it lives, and :meth:`compact` also
merges the parts of writers that died (their lock is free: the kernel released it with the process), so
the small parts of killed or preempted runs do not pile up (POSIX ``flock``; elsewhere they stay parts).
:meth:`FeatureCache.get` memory-maps shards lazily; a reader of many vectors (head training,
:mod:`fmmc.train.feature_data`) asks :meth:`FeatureCache.files_of` where they are and reads their
:func:`tensor_spans` itself.

A cache that cannot be written (read-only disk, full disk, a path under a file) raises
:class:`CacheUnwritable` from the constructor or a write when ``required``; otherwise it warns once and
keeps serving what it has, writing nothing (inference does not need a cache; ``fmmc features`` does).

    >>> cache = FeatureCache("~/.cache/fmmc/features", namespace_of({"backbone": "hf:facebook/dinov2-base"}))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open

from fmmc.core.errors import describe_os_error
from fmmc.core.io import save_safetensors

log = logging.getLogger(__name__)


class CacheUnwritable(OSError):
    """The feature cache cannot be written; the message names the folder and the fix."""


def namespace_of(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class TensorSpan(NamedTuple):
    """Where one tensor's bytes lie in a safetensors file: ``[start, stop)`` from the start of the file."""

    dtype: str  # safetensors' name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    start: int
    stop: int


MAX_HEADER = 1 << 30  # a safetensors header larger than this is a damaged length field, not a header


def tensor_spans(path: str | Path) -> dict[str, TensorSpan]:
    """The byte span of every tensor in a safetensors file, from its header alone (8-byte little-endian
    length + JSON, https://github.com/huggingface/safetensors#format): lets a reader take a few vectors
    with ``os.pread`` without mapping or loading the file."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            if not 0 < size <= MAX_HEADER:
                raise ValueError(f"header length {size}")
            header = json.loads(f.read(size))
            base = 8 + size
            return {k: TensorSpan(v["dtype"], tuple(v["shape"]), base + v["data_offsets"][0], base + v["data_offsets"][1])
                    for k, v in header.items() if k != "__metadata__"}
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e}); delete it: its features are "
                             "extracted again by the next run") from e


def default_cache_dir() -> Path:
    """The feature cache's default root: ``<cache_root>/features`` (:func:`fmmc.core.paths.cache_root`)."""
    from fmmc.core.paths import cache_root

    return cache_root() / "features"


class FeatureCache:
    def __init__(self, root: str | Path, namespace: str, settings: dict[str, Any] | None = None,
                 shard_size: int = 2048, required: bool = True) -> None:
        self.dir = Path(root).expanduser() / namespace
        self.shard_size = shard_size
        self.required = required
        self.writable = True
        self._lock = threading.Lock()
        self._index: dict[str, str] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._own_parts: dict[str, list[str]] = {}  # part file -> its keys (this process's, not yet merged)
        self._handles: dict[str, Any] = {}
        self._index_checked = False
        self._writer: tuple[str, int] | None = None  # (id, fd of its held writer-<id>.lock) once writing
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if settings is not None and not (self.dir / "settings.json").exists():
                from fmmc.core.io import write_text_atomic

                write_text_atomic(self.dir / "settings.json", json.dumps(settings, indent=1, sort_keys=True, default=str))
        except OSError as e:
            self._cannot_write(e)
        self._load_index()

    # --- reading ---
    def _load_index(self) -> None:
        idx = self.dir / "index.jsonl"
        if not idx.is_file():
            return
        present = {p.name for p in self.dir.glob("*.safetensors")}
        names: dict[str, str] = {}
        with open(idx, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    key, shard = rec["key"], rec["shard"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn line after a crash
                if shard in present:
                    # the last line whose file exists wins (a merge's lines come later); one str per file, not
                    # per line, keeps the index of 200k keys ~16 MB smaller
                    self._index[key] = names.setdefault(shard, shard)

    def __len__(self) -> int:
        return len(self._index) + len(self._pending)

    def __contains__(self, key: str) -> bool:
        return key in self._index or key in self._pending

    def keys(self) -> frozenset[str]:
        """Every key on disk or buffered (a snapshot: e.g. for decoding workers to skip cached regions)."""
        with self._lock:
            return frozenset(self._index) | frozenset(self._pending)

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            if key in self._pending:
                return self._pending[key]
            shard = self._shard_locked(key)
            if shard is None:
                return None
            h = self._handles.get(shard)
            if h is None:
                h = self._handles[shard] = safe_open(str(self.dir / shard), framework="pt")
            return h.get_tensor(key)

    def files_of(self, keys: Sequence[str]) -> list[Path | None]:
        """The committed file holding each key (None: not in the cache, or only buffered by :meth:`put`), for
        readers that take many vectors at once (:mod:`fmmc.train.feature_data`); the index is read again when a
        file was merged away by another process. A file's vectors are at its :func:`tensor_spans`."""
        with self._lock:
            names = [self._index.get(k) for k in keys]
            if any(not (self.dir / name).is_file() for name in set(names) - {None}):
                self._reload_locked()
                names = [self._index.get(k) for k in keys]
            paths = {name: self.dir / name for name in set(names) - {None}}  # one Path object per file
            return [None if name is None else paths[name] for name in names]

    def _shard_locked(self, key: str) -> str | None:
        shard = self._index.get(key)
        if shard is not None and shard not in self._handles and not (self.dir / shard).is_file():
            self._reload_locked()  # merged by another process since we read the index
            shard = self._index.get(key)
        return shard

    def _reload_locked(self) -> None:
        self._index.clear()
        self._handles.clear()
        self._load_index()

    # --- writing ---
    def put(self, key: str, value: torch.Tensor) -> None:
        """Buffer a vector; it is on disk after the next :meth:`commit`."""
        with self._lock:
            if key in self._index:
                return
            self._pending[key] = value.detach().to("cpu", torch.float32).contiguous().clone()

    def commit(self) -> None:
        """Write the buffered vectors durably (one ``part-*`` file + index lines); merge parts when they fill a shard."""
        with self._lock:
            self._commit_locked()
            if sum(len(k) for k in self._own_parts.values()) >= self.shard_size:
                self._merge_locked()

    flush = commit

    def compact(self) -> None:
        """Commit, then merge this process's parts into one shard, with the parts of writers that died
        (end of a run)."""
        with self._lock:
            self._commit_locked()
            adopted, parts = self._adopt_dead_writers_locked()
            if len(self._own_parts) > 1 or adopted:
                self._merge_locked()
            for part in parts:
                self._own_parts.pop(part, None)  # a failed merge: they stay the dead writer's, indexed, for a later run
            for wid, fd in adopted:
                if not any(self.dir.glob(f"part-{wid}-*.safetensors")):
                    with contextlib.suppress(OSError):
                        (self.dir / f"writer-{wid}.lock").unlink()  # while holding it: nobody adopts it twice
                os.close(fd)
            if not self._own_parts:
                self._release_writer_locked()

    def close(self) -> None:
        """:meth:`compact`, and give up this writer's lock."""
        self.compact()
        with self._lock:
            self._release_writer_locked()

    # --- writers: one lock file per live process that writes ---
    def _writer_id(self) -> str:
        """This writer's id, holding its ``writer-<id>.lock`` (created at the first write)."""
        if self._writer is None:
            fcntl = _fcntl()
            while True:
                wid = uuid.uuid4().hex[:12]
                path = self.dir / f"writer-{wid}.lock"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                if fcntl is None:
                    break
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh name: nobody else holds it
                except OSError as e:  # a file system without flock (some FUSE/network mounts): write unlocked
                    log.info("feature cache %s: no file locks here (%s); parts of killed runs stay parts",
                             self.dir, describe_os_error(e))
                    break
                if _same_file(fd, path):  # not deleted by an adopter that took it for a dead writer's
                    break
                os.close(fd)
            self._writer = (wid, fd)
        return self._writer[0]

    def _release_writer_locked(self) -> None:
        if self._writer is not None and not self._own_parts:
            wid, fd = self._writer
            self._writer = None
            with contextlib.suppress(OSError):
                (self.dir / f"writer-{wid}.lock").unlink()
            os.close(fd)

    def _adopt_dead_writers_locked(self) -> tuple[list[tuple[str, int]], list[str]]:
        """Take over the indexed parts of writers whose lock is free (dead): they join this writer's parts
        and are merged with them. Returns the (id, fd) of each lock taken (the caller closes them) and the
        parts taken."""
        fcntl = _fcntl()
        if fcntl is None or not self.writable:
            return [], []
        mine = self._writer[0] if self._writer is not None else None
        by_writer: dict[str, list[str]] = {}
        for p in self.dir.glob("part-*-*.safetensors"):
            wid = p.name.split("-")[1]
            if wid != mine:
                by_writer.setdefault(wid, []).append(p.name)
        taken: list[tuple[str, int]] = []
        for wid in sorted(by_writer):
            path = self.dir / f"writer-{wid}.lock"
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue  # no lock file: not a part this scheme wrote (or its adopter is finishing)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # alive: its parts are its own
                continue
            if not _same_file(fd, path):
                os.close(fd)
                continue
            taken.append((wid, fd))
        if not taken:
            return [], []
        self._reload_locked()  # the index as the dead writers left it: read once
        keys_of: dict[str, list[str]] = {}
        for key, shard in self._index.items():
            keys_of.setdefault(shard, []).append(key)
        adopted = []
        for wid, _ in taken:
            for part in by_writer[wid]:
                if part in keys_of:
                    self._own_parts[part] = keys_of[part]
                    adopted.append(part)
                else:  # every key of it is in a later file already (a merge killed before its cleanup)
                    with contextlib.suppress(OSError):
                        (self.dir / part).unlink()
            log.info("feature cache %s: merging %d part(s) of a writer that stopped (%s)", self.dir,
                     len(by_writer[wid]), wid)
        return taken, adopted

    def _commit_locked(self) -> None:
        if not self._pending:
            return
        if not self.writable:
            self._pending.clear()  # kept in memory by the caller's results; nothing to write
            return
        name = ""
        try:
            name = f"part-{self._writer_id()}-{uuid.uuid4().hex[:12]}.safetensors"
            save_safetensors(self._pending, self.dir / name, fsync=True)
            self._append_index(list(self._pending), name)
        except OSError as e:
            with contextlib.suppress(OSError):
                if name:
                    (self.dir / name).unlink(missing_ok=True)  # written but not indexed: never half-valid
            self._pending.clear()
            self._cannot_write(e)
            return
        self._own_parts[name] = list(self._pending)
        self._pending.clear()

    def _merge_locked(self) -> None:
        if not self.writable or not self._own_parts:
            return
        tensors: dict[str, torch.Tensor] = {}
        for part, keys in self._own_parts.items():
            with safe_open(str(self.dir / part), framework="pt") as h:
                for k in keys:
                    tensors[k] = h.get_tensor(k)
        name = f"shard-{uuid.uuid4().hex[:12]}.safetensors"
        try:
            save_safetensors(tensors, self.dir / name, fsync=True)
            self._append_index(list(tensors), name)
        except OSError as e:  # the parts are still there and indexed: nothing is lost
            (self.dir / name).unlink(missing_ok=True)
            log.warning("feature cache %s: could not merge parts (%s); they stay as they are",
                        self.dir, describe_os_error(e))
            return
        for part in self._own_parts:
            self._handles.pop(part, None)
            (self.dir / part).unlink(missing_ok=True)
        self._own_parts.clear()

    def _append_index(self, keys: list[str], shard: str) -> None:
        path = self.dir / "index.jsonl"
        with open(path, "a+b") as f:
            if not self._index_checked:  # a line torn by a crash must not swallow our first line
                self._index_checked = True
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
            f.write("".join(json.dumps({"key": k, "shard": shard}) + "\n" for k in keys).encode())
            f.flush()
            os.fsync(f.fileno())
        for k in keys:
            self._index[k] = shard

    def _cannot_write(self, e: OSError) -> None:
        message = (f"feature cache {self.dir} cannot be written: {describe_os_error(e)}; point $FMMC_CACHE (or "
                   "--cache-dir, where a command has it) at a writable folder")
        if self.required:
            raise CacheUnwritable(e.errno, message) from e
        if self.writable:
            log.warning("%s (running without storing features)", message)
        self.writable = False

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fcntl() -> Any:
    """The ``fcntl`` module where the OS has ``flock`` (POSIX), else None."""
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl if hasattr(fcntl, "flock") else None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not unlinked, not replaced)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
