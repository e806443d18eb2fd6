"""One line for every I/O fault: what failed, on which path, and how to fix it.

The CLI and the service both describe an ``OSError`` with :func:`describe_os_error`, so a full disk, a
read-only mount or an output path that is a file reads the same wherever it happens:

    >>> import errno
    >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device", "runs/eval/metrics.json"))
    'runs/eval/metrics.json: no space left on the device (free some space or write elsewhere with --out)'
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

# errno -> (what happened, how to fix it)
_FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free some space or write elsewhere with --out"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere with --out"),
    errno.EROFS: ("read-only file system", "write to a writable folder (--out, or $FMMC_CACHE for the cache)"),
    errno.EACCES: ("permission denied", "check the permissions, or write elsewhere"),
    errno.EPERM: ("operation not permitted", "check the permissions, or write elsewhere"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "choose a path whose parents are folders"),
    errno.EISDIR: ("is a folder, not a file", "give a file path"),
    errno.EEXIST: ("already exists", "choose another path, or remove it first"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or lower the concurrency"),
    errno.EIO: ("input/output error", "check the disk or the network file system"),
    errno.ENOTEMPTY: ("folder is not empty", "choose another path, or remove it first"),
    errno.EXDEV: ("cannot move across file systems", "write the output on the same file system"),
}


def describe_os_error(e: OSError) -> str:
    """``"<path>: <what happened> (<fix>)"`` for ``e``; errors without a path or a known errno say what they can."""
    if e.filename is None and e.strerror and e.errno is not None and e.strerror != os.strerror(e.errno):
        return e.strerror  # a message of ours that already names the path and the fix (e.g. CacheUnwritable)
    paths = [p for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(str(Path(p)) if not isinstance(p, int) else f"fd {p}" for p in paths)
    known = _FAULTS.get(e.errno) if e.errno is not None else None
    if known is not None:
        what, fix = known
        return f"{where + ': ' if where else ''}{what} ({fix})"
    text = e.strerror or str(e) or type(e).__name__
    return f"{where}: {text}" if where and where not in text else text


def is_io_fault(e: BaseException) -> bool:
    """True for an ``OSError`` about the file system (it has an errno), as opposed to a library error that
    happens to subclass OSError without one (PIL's ``UnidentifiedImageError``, some hub errors)."""
    return isinstance(e, OSError) and e.errno is not None


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Attach ``path`` to an ``OSError`` raised without one (a ``write()`` on a full disk names no file)."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from e
        raise
