"""Output folders that never destroy a user's files.

Every folder an fmmc command writes (``fmmc train --out``, ``eval --out``, ``reproduce --out``,
``segment --out``, ``synth build --out``) carries a marker file, ``.fmmc-output.json``, saying which
command wrote it and whether it is complete. Before any work, :func:`check_output_dir` refuses:

* a path that is a file, or lies under a file;
* an existing folder with files in it that fmmc did not write (no marker), or that another command wrote;
* a complete earlier output of the same command, unless ``overwrite`` (``--overwrite``) asks to replace it.

An incomplete output of the same command (a run that was stopped) is taken up again: that is how jobs
resume. :func:`atomic_dir` writes a result next to the target and swaps it in only when complete, so a
half-written result never looks valid; what it replaces is only ever an earlier fmmc output of the same
kind.

    >>> check_output_dir("runs/eval-fmd", "eval", overwrite=False)          # doctest: +SKIP
    >>> with atomic_dir("runs/eval-fmd", "eval", overwrite=True) as tmp:    # doctest: +SKIP
    ...     (tmp / "metrics.json").write_text("{}")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MARKER = ".fmmc-output.json"


class OutputRefused(ValueError):
    """``--out`` names something fmmc must not write over; the message says why and what to do instead."""


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of an fmmc output folder, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "kind" in data else None


def write_marker(folder: str | Path, kind: str, complete: bool, **extra: Any) -> None:
    from fmmc import __version__
    from fmmc.core.io import write_json_atomic

    write_json_atomic(Path(folder) / MARKER, {"kind": kind, "complete": complete, "fmmc_version": __version__,
                                              "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})


def check_output_dir(out: str | Path, kind: str, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse an output folder fmmc must not write into (see the module docstring), before any work.

    Also checks that the folder can be created and written (a probe file), so a read-only disk or a path
    under a file fails now, not after an hour of work. Returns the path.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputRefused(f"{option} {out}: is a file, not a folder; give a folder path (the file is left as it is)")
    _check_parents(out, option)
    if out.is_dir() and any(out.iterdir()):
        marker = read_marker(out)
        if marker is None:
            raise OutputRefused(f"{option} {out}: the folder exists and holds files fmmc did not write (no {MARKER}); "
                                "choose a new or empty folder (nothing in it was changed)")
        if marker["kind"] != kind:
            raise OutputRefused(f"{option} {out}: holds the output of `fmmc {marker['kind']}`, not `fmmc {kind}`; "
                                "choose another folder")
        if marker.get("complete") and not overwrite:
            raise OutputRefused(f"{option} {out}: holds a finished `fmmc {kind}` output; pass --overwrite to replace "
                                "it, or choose another folder")
    probe_writable(out)
    return out


def check_output_file(out: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse an output file fmmc must not write, before any work: a folder, a path under a file, or an
    existing file without ``overwrite``; the folder it goes in must be writable. Returns the path."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise OutputRefused(f"{option} {out}: is a folder; give a file path")
    _check_parents(out, option)
    if out.exists() and not overwrite:
        raise OutputRefused(f"{option} {out}: exists; pass --overwrite to replace it, or choose another file "
                            "(it was left as it is)")
    probe_writable(out.parent)
    return out


def _check_parents(out: Path, option: str) -> None:
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputRefused(f"{option} {out}: {parent} is a file, so nothing can be made under it; "
                                    "choose another path")
            return


def probe_writable(folder: Path) -> None:
    """Create ``folder`` (and parents) and write + remove a probe file in it; an OSError names the fault."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".fmmc-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
    finally:
        probe.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # leave no empty folder behind if the command then fails early


@contextlib.contextmanager
def atomic_dir(out: str | Path, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to ``out``; on success it becomes ``out`` (marked complete), on error it is
    deleted and ``out`` is untouched. An existing ``out`` is replaced only if :func:`check_output_dir`
    allows it (an fmmc output of the same kind, ``overwrite`` for a complete one)."""
    out = Path(out)
    check_output_dir(out, kind, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        write_marker(tmp, kind, complete=True)
        check_output_dir(out, kind, overwrite)  # again: something may have appeared while we worked
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)  # an fmmc output of this kind (checked above), or an empty folder
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
