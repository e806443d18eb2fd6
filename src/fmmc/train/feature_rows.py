"""Cached vectors as training rows: one tensor when they fit a memory budget, else read from disk per batch.

    >>> rows = FeatureRows.from_cache(cache, keys)       # doctest: +SKIP
    >>> x = rows.take(torch.tensor([5, 0, 17]))          # [3, C] float32, the cached vectors of keys 5, 0, 17

Head training (``mode=head``) visits every region's pooled vector once an epoch, in a new random order each
time. Up to ``budget_bytes`` (:data:`IN_MEMORY_BYTES`) the vectors are read once into one tensor. Above it
they stay in the cache's safetensors files: each batch is read with ``os.preadv`` straight into the
batch's buffer, at the byte spans the files' headers give (:func:`fmmc.vision.cache.tensor_spans`), so the
process holds 12 bytes of index a row plus one batch, whatever the dataset's size. Not a memory map: the
pages a map touches count in the process's resident memory until it is unmapped, and a shuffled epoch
touches every page of every shard; ``pread`` goes through the page cache, which the kernel frees when it
needs to. At most :data:`MAX_OPEN` files are open at a time. Either way the rows hold the same bytes as
:meth:`FeatureCache.get <fmmc.vision.cache.FeatureCache.get>`, so training gives the same head.
"""

from __future__ import annotations

import os
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

IN_MEMORY_BYTES = 256 << 20  # vectors up to this size are held in memory (66k regions at 1024-d fp32)
MAX_OPEN = 256  # cache files open at once while streaming (a shard is 2048 vectors: 500k regions)
EVAL_ROWS = 2048  # rows per forward when a split is evaluated: 8192 left +200 MB of heap at 200k rows, 2048 +70
ROW_DTYPE = "F32"  # what FeatureCache.put stores
_IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024)


class FeatureRows:
    """``n`` vectors of width ``dim``, in memory (:attr:`table`) or at byte offsets of cache files."""

    def __init__(self, dim: int, table: torch.Tensor | None = None, files: list[Path] | None = None,
                 file_of: np.ndarray | None = None, start: np.ndarray | None = None, cache: Any = None,
                 keys: Sequence[str] | None = None) -> None:
        self.dim = dim
        self.table = table
        self.files = files or []
        self.file_of = file_of if file_of is not None else np.empty(0, np.int32)
        self.start = start if start is not None else np.empty(0, np.int64)
        self._cache = cache  # to find files merged away by another process (see _relocate)
        self._keys = keys
        self._open: OrderedDict[int, int] = OrderedDict()  # file number -> fd, least recently used first

    @classmethod
    def from_tensor(cls, x: torch.Tensor) -> FeatureRows:
        return cls(int(x.shape[1]), table=x)

    @classmethod
    def from_cache(cls, cache: Any, keys: Sequence[str], budget_bytes: int = IN_MEMORY_BYTES,
                   dim: int = 0) -> FeatureRows:
        """The vectors of ``keys`` (all committed to ``cache``, a :class:`~fmmc.vision.cache.FeatureCache`),
        in memory when ``len(keys) * width * 4 <= budget_bytes``, else streamed from the cache files.
        ``dim``: the width of an empty set of keys."""
        if not keys:
            return cls.from_tensor(torch.empty(0, dim))
        paths = cache.files_of(keys)
        missing = [k for k, p in zip(keys, paths) if p is None]
        if missing:
            raise KeyError(f"{len(missing)} of {len(keys)} feature(s) are not in the feature cache {cache.dir} "
                           f"(first key {missing[0]}); run `fmmc features` or `fmmc train` again to extract them")
        files, file_of, start, dim = _locate(keys, paths)
        rows = cls(dim, files=files, file_of=file_of, start=start, cache=cache, keys=keys)
        if len(keys) * dim * 4 <= budget_bytes:
            with rows:
                table = torch.from_numpy(rows.read(np.arange(len(keys))))
            return cls(dim, table=table)
        return rows

    def __len__(self) -> int:
        return len(self.table) if self.table is not None else len(self.file_of)

    @property
    def in_memory(self) -> bool:
        return self.table is not None

    @property
    def resident_bytes(self) -> int:
        """Bytes of vectors this object holds in memory (0 when streamed)."""
        return self.table.numel() * self.table.element_size() if self.table is not None else 0

    @property
    def open_files(self) -> list[Path]:
        return [self.files[f] for f in self._open]

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (a 1-d long tensor), in that order: ``[len(idx), dim]`` float32."""
        if self.table is not None:
            return self.table.index_select(0, idx)  # the rows table[idx] gives, without advanced indexing's overhead
        return torch.from_numpy(self.read(idx.numpy()))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows from the cache files into a new ``[len(rows), dim]`` float32 array, sorted by position so
        neighbouring rows come in one call."""
        for _ in range(3):
            try:
                return self._read_once(np.asarray(rows, dtype=np.int64))
            except FileNotFoundError as e:
                self._relocate(e.filename)
        raise RuntimeError(f"feature cache {self._cache.dir}: its files keep disappearing while being read (another "
                           "process merging them?); run `fmmc train` again once `fmmc features` has finished")

    def _read_once(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), np.float32)
        if not len(rows):
            return out
        f, s = self.file_of[rows], self.start[rows]
        order = np.lexsort((s, f))
        f, s = f[order], s[order]
        row_bytes = self.dim * 4
        cut = np.flatnonzero((f[1:] != f[:-1]) | (s[1:] != s[:-1] + row_bytes)) + 1
        bounds = [0, *cut.tolist(), len(rows)]
        for a, b in zip(bounds[:-1], bounds[1:]):  # a run of rows that lie back to back in one file
            for c in range(a, b, _IOV_MAX):
                e = min(b, c + _IOV_MAX)
                fd = self._fd(int(f[c]))
                got = os.preadv(fd, [out[j] for j in order[c:e]], int(s[c]))
                if got != (e - c) * row_bytes:
                    raise OSError(f"{self.files[int(f[c])]}: {got} of {(e - c) * row_bytes} bytes read at offset "
                                  f"{int(s[c])}: the file is truncated; delete it to extract its features again")
        return out

    def _fd(self, f: int) -> int:
        fd = self._open.get(f)
        if fd is not None:
            self._open.move_to_end(f)
            return fd
        if len(self._open) >= min(MAX_OPEN, _fd_limit() // 4):
            os.close(self._open.popitem(last=False)[1])
        fd = self._open[f] = os.open(self.files[f], os.O_RDONLY)
        return fd

    def _relocate(self, path: str | None) -> None:
        """Files named by the index were merged into a shard by another process: find their rows again."""
        gone = [f for f, p in enumerate(self.files) if not p.is_file()]
        if self._cache is None or self._keys is None or not gone:
            raise FileNotFoundError(f"{path}: a feature cache file disappeared while being read")
        rows = np.flatnonzero(np.isin(self.file_of, gone))
        keys = [self._keys[i] for i in rows]
        paths = self._cache.files_of(keys)
        if any(p is None for p in paths):
            raise FileNotFoundError(f"{path}: a feature cache file disappeared while being read, and its features "
                                    "with it; run `fmmc train` again to extract them")
        files, file_of, start, _ = _locate(keys, paths)
        self.file_of[rows] = file_of + len(self.files)
        self.start[rows] = start
        self.files += files

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1])

    def __enter__(self) -> FeatureRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fd_limit() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def balanced_chunks(n: int, size: int | None = None) -> list[slice]:
    """``range(n)`` as balanced slices of at most ``size`` rows (:data:`EVAL_ROWS`), for evaluation passes
    whose activations must stay bounded. Balanced, with no short tail: measured here (heads of 384 to
    1024 + 512 inputs, 2k to 40k rows), logits come out bit for bit the same in pieces of 1024 rows or
    more as in one forward, which is what up to ``size`` rows get, as before."""
    parts = max(1, -(-n // (size or EVAL_ROWS)))
    bounds = np.linspace(0, n, parts + 1).round().astype(int).tolist()
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _locate(keys: Sequence[str], paths: Sequence[Path | None]) -> tuple[list[Path], np.ndarray, np.ndarray, int]:
    """(files, file number of each row, byte offset of each row, width) from the files' headers, read once each."""
    from fmmc.vision.cache import tensor_spans

    by_file: defaultdict[Path, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_file[p].append(i)  # type: ignore[index]
    files = list(by_file)
    file_of = np.empty(len(keys), np.int32)
    start = np.empty(len(keys), np.int64)
    dim = -1
    for f, path in enumerate(files):
        spans = tensor_spans(path)
        for i in by_file[path]:
            span = spans.get(keys[i])
            if span is None:
                raise ValueError(f"{path}: the cache index places key {keys[i]} in this file, but it is not there; "
                                 "delete the file to extract its features again")
            width = span.shape[0] if len(span.shape) == 1 else -1
            if span.dtype != ROW_DTYPE or width < 1 or span.stop - span.start != 4 * width or dim not in (-1, width):
                raise ValueError(f"{path}: key {keys[i]} holds a {span.dtype} tensor of shape {list(span.shape)}, "
                                 f"not a float32 vector{f' of width {dim}' if dim > 0 else ''}; delete the file "
                                 "to extract its features again")
            dim = width
            file_of[i] = f
            start[i] = span.start
    return files, file_of, start, max(dim, 0)
