"""Where a model lives: a model directory, a training run's folder, or a hub repo id (downloaded).

    >>> model_dir("runs/demo")           # the run folder `fmmc train --out` wrote  # doctest: +SKIP
    PosixPath('runs/demo/model')
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["CONFIG_NAME", "model_dir"]

log = logging.getLogger(__name__)
CONFIG_NAME = "config.json"


def model_dir(source: str | Path) -> Path:
    """The directory holding a model's ``config.json``: ``source`` itself, ``source/model`` (the run folder
    ``fmmc train --out`` writes), or a hub repo id (downloaded). A path that does not exist is reported as a
    missing directory, not sent to the hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file() and (path / "model" / CONFIG_NAME).is_file():
            log.info("%s is a training run: using its model, %s", path, path / "model")
            return path / "model"
        return path
    text = str(source)
    looks_local = (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
                   or path.parent.is_dir() and path.parent != Path("."))
    if looks_local:
        raise ValueError(f"{source}: no such model directory (train one with `fmmc train --out DIR`, then pass "
                         "DIR or DIR/model; a hub model is named org/name)")
    return _download(text)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    from fmmc.core.hub import load_pretrained

    return Path(load_pretrained(lambda rid, **kw: snapshot_download(rid, **kw), repo_id, "fmmc model"))
