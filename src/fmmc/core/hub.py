"""Where weights come from: a local directory, the Hugging Face hub, or the local hub cache (offline).

Every loader in fmmc goes through :func:`resolve_weights`, so offline mode (``HF_HUB_OFFLINE=1``) and
missing weights fail the same way everywhere, with a message that says how to fix it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class WeightsUnavailableError(RuntimeError):
    """Weights named by a spec cannot be loaded here (no local copy, hub not reachable)."""


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


def is_local(source: str) -> bool:
    return Path(source).expanduser().exists()


def resolve_weights(source: str) -> str:
    """Return ``source`` as a local path when it is one, else the hub id unchanged (logged either way)."""
    p = Path(source).expanduser()
    if p.exists():
        log.info("weights from local path %s", p)
        return str(p)
    log.info("weights from hub id %s%s", source, " (offline: local cache only)" if is_offline() else "")
    return source


def load_pretrained(loader: Callable[..., T], source: str, what: str, **kwargs: Any) -> T:
    """Call ``loader(source, **kwargs)`` (a ``from_pretrained``), turning hub/offline failures into one clear error."""
    resolved = resolve_weights(source)
    local = is_local(resolved)
    if not local and is_offline():
        kwargs.setdefault("local_files_only", True)
    try:
        return loader(resolved, **kwargs)
    except (OSError, ValueError) as e:
        if local:
            raise WeightsUnavailableError(f"cannot load {what} from local path {resolved!r}: {e}") from e
        raise WeightsUnavailableError(
            f"cannot load {what} {source!r}: the weights are not in the local Hugging Face cache and the hub "
            f"could not be reached{' (HF_HUB_OFFLINE is set)' if is_offline() else ''}. Pass a local path "
            f"(e.g. `hf:/path/to/model`, a directory written by save_pretrained) or allow downloads "
            f"(unset HF_HUB_OFFLINE and check your network). Details: {type(e).__name__}: {str(e)[:300]}"
        ) from e
