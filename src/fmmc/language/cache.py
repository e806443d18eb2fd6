"""A persistent cache of region descriptions in one SQLite file (VLM calls are slow and cost money).

    >>> cache = DescriptionCache("runs/descriptions.sqlite")
    >>> image_sha, mask_sha = region_keys(region)                                    # doctest: +SKIP
    >>> cache.get(image_sha, mask_sha, "openai:gpt-4o-mini", describer.prompt_version)  # doctest: +SKIP

A description is keyed by *what was shown* (sha256 of the image file's bytes and of the mask file's
bytes) and *who was asked how* (describer spec + prompt version), so renaming or moving files keeps
the cache valid and changing the prompt or the model misses it. The database is in WAL mode with a
busy timeout: several threads and processes can read and write it at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from fmmc.data.imageio import file_sha256
from fmmc.data.records import Region

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS descriptions (
    image_sha TEXT NOT NULL,
    mask_sha TEXT NOT NULL,
    describer TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    text TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (image_sha, mask_sha, describer, prompt_version)
)
"""


def box_sha(box: tuple[float, float, float, float]) -> str:
    """The mask key of a box region: sha256 of ``"box:x0,y0,x1,y1"``."""
    return hashlib.sha256(("box:" + ",".join(str(v) for v in box)).encode()).hexdigest()


def region_keys(region: Region) -> tuple[str, str]:
    """``(image_sha, mask_sha)`` of a region; ``mask_sha`` is "" for a whole-image region.

    A mask file wins over a box when a region has both (that is also what :func:`describe_regions` shows).
    Raises ``FileNotFoundError`` when the image or mask file is missing.
    """
    image_sha = file_sha256(region.image)
    if region.mask is not None:
        return image_sha, file_sha256(region.mask)
    if region.box is not None:
        return image_sha, box_sha(region.box)
    return image_sha, ""


class DescriptionCache:
    """Descriptions in a SQLite file, safe to share between threads and processes."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._local = threading.local()
        self._warned = False
        try:
            conn = self._conn()
            # WAL is a property of the file, so setting it once here covers every later connection.
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("description cache %s: journal mode is %s, not WAL (network filesystem?)", self.path, mode)
            with conn:
                conn.execute(_SCHEMA)
        except sqlite3.Error as e:
            raise OSError(f"cannot open description cache {self.path}: {e}") from e

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread (and per process: a forked child must not reuse its parent's).
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                conn = sqlite3.connect(self.path, timeout=self.timeout)
            except sqlite3.Error as e:
                raise OSError(f"cannot open description cache {self.path}: {e}") from e
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def get(self, image_sha: str, mask_sha: str, describer: str, prompt_version: str) -> str | None:
        """The cached description, or None."""
        row = self._conn().execute(
            "SELECT text FROM descriptions WHERE image_sha=? AND mask_sha=? AND describer=? AND prompt_version=?",
            (image_sha, mask_sha, describer, prompt_version),
        ).fetchone()
        return None if row is None else row[0]

    def put(self, image_sha: str, mask_sha: str, describer: str, prompt_version: str, text: str) -> None:
        """Store (or replace) a description. A write that fails (disk full, read-only) is skipped with one
        warning: the description is still returned to the caller, only not remembered."""
        try:
            conn = self._conn()
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO descriptions VALUES (?, ?, ?, ?, ?, ?)",
                    (image_sha, mask_sha, describer, prompt_version, text, time.time()),
                )
        except (sqlite3.Error, OSError) as e:
            if not self._warned:
                self._warned = True
                log.warning("description cache %s cannot be written (%s): descriptions are not stored", self.path, e)

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM descriptions").fetchone()[0])

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __repr__(self) -> str:
        return f"DescriptionCache({str(self.path)!r})"
