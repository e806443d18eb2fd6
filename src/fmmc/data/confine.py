"""Keep a dataset's paths inside its folder: datasets come from the internet, and a line naming
``../../../../etc/passwd`` or ``/home/you/private.jpg`` must not make fmmc open that file.

    >>> inside_root(Path("data/ds"), "images/0001.jpg")
    PosixPath('data/ds/images/0001.jpg')
    >>> inside_root(Path("data/ds"), "../../etc/passwd") is None
    True

The check is lexical: the name written in ``metadata.jsonl`` is normalised (``..`` collapsed) and must stay
under the folder; the normalised path is the one opened, so no ``..`` reaches the file system. Symbolic
links *inside* the folder are the folder's own content and are followed (a Hugging Face hub snapshot links
every file into ``blobs/``, and ``fmmc synth`` may link its images). Trusting a dataset that names files
elsewhere is an explicit choice: ``load_dataset(..., allow_outside_root=True)``, ``fmmc validate
--allow-outside-paths``, or the environment variable ``FMMC_ALLOW_OUTSIDE_PATHS=1``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path, PurePath

log = logging.getLogger(__name__)

ENV = "FMMC_ALLOW_OUTSIDE_PATHS"
LINKS = "linked"  # write_dataset's folder of links to files that live outside the dataset
OPT_IN = f"to trust this dataset: --allow-outside-paths, load_dataset(..., allow_outside_root=True) or {ENV}=1"


def outside_paths_allowed(allow_outside_root: bool = False) -> bool:
    """True when the caller asks for it or ``$FMMC_ALLOW_OUTSIDE_PATHS`` is 1/true/yes/on (read at call time)."""
    return allow_outside_root or os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def inside_root(base: Path, name: str) -> Path | None:
    """``base/name`` normalised, or None when ``name`` (relative, or absolute) leaves ``base``."""
    if PurePath(name).anchor:  # absolute (or, on Windows, another drive): fine only when it lies under base
        full = Path(os.path.normpath(os.path.abspath(name)))
        return full if full.is_relative_to(os.path.normpath(os.path.abspath(base))) else None
    rel = Path(os.path.normpath(name))
    return None if rel.parts[:1] == ("..",) else base / rel


def link_into(root: Path, target: Path) -> str:
    """The name ``root``'s metadata.jsonl gives ``target``, a file outside ``root``: a symbolic link
    ``linked/<hash of its folder>/<name>`` made under ``root``; the absolute path where links cannot be made."""
    target = Path(os.path.abspath(target))
    link = root / LINKS / hashlib.sha256(str(target.parent).encode()).hexdigest()[:12] / target.name
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and Path(os.readlink(link)) != target:
            link.unlink()
        if not link.is_symlink():
            os.symlink(target, link)
    except OSError as e:
        log.warning("%s: cannot link %s into the dataset (%s); wrote its absolute path, which readers accept only "
                    "with %s=1", root, target, e, ENV)
        return str(target)
    return link.relative_to(root).as_posix()
