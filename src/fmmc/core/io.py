"""Atomic outputs: a result is either complete on disk or absent, never half-written.

    >>> with atomic_file("runs/eval/predictions.jsonl") as f:       # doctest: +SKIP
    ...     f.write("{}\n")
    >>> # the file is complete; had the block raised, the old file (or none) would be there

Files are written to a temp path next to the target and renamed into place (``os.replace`` is atomic on
one filesystem). Output folders (atomic, never replacing a user's files) are :mod:`fmmc.core.outputs`.
JSON floats that are NaN or infinite are written as null, so every file is valid JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fmmc.core.errors import naming


def clean_json(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None (recursively), so it serialises as valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return clean_json(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(clean_json(obj), indent=indent, ensure_ascii=False)


@contextlib.contextmanager
def atomic_file(path: str | Path, binary: bool = False) -> Iterator[IO[Any]]:
    """Write ``path`` through a temp file next to it: flushed, fsynced and renamed into place on success,
    removed on error, so readers see the old file or the new one, never half of one.

        >>> with atomic_file(tmp_path / "out.jsonl") as f:      # doctest: +SKIP
        ...     f.write("{}\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with naming(path), open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_file(path) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, dumps(obj) + "\n")


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None,
                     fsync: bool = False) -> Path:
    """``safetensors.torch.save_file`` written atomically and with the usual permissions.

    safetensors creates files owner-only (0600); models and feature caches are meant to be shared (a
    cluster's shared filesystem, docs/ray.md), so the file gets what ``open()`` would give (0666 & ~umask).
    ``fsync``: flush the file to the disk before it is renamed into place (caches that must survive a crash).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as e:  # safetensors reports a full disk as SafetensorError("... Os { code: 28 ...")
            m = re.search(r"code: (\d+)", str(e))
            if m is None or isinstance(e, OSError):
                raise
            raise OSError(int(m.group(1)), os.strerror(int(m.group(1))), str(path)) from e
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    try:  # Linux: read it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
