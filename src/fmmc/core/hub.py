"""Where weights come from: a local directory, the Hugging Face hub, or the local hub cache (offline).

Every loader in fmmc goes through :func:`load_pretrained`, so offline mode (``HF_HUB_OFFLINE=1``) and
missing weights fail the same way everywhere, with a message that says how to fix it.

Before a ``from_pretrained`` is called for a hub id, fmmc knows where the weights will come from:

* a local path: loaded as is;
* ``HF_HUB_OFFLINE=1``: the local cache only (``local_files_only=True``);
* otherwise the hub endpoint (``HF_ENDPOINT``, else https://huggingface.co) is probed once with one short
  request (:data:`HUB_PROBE_TIMEOUT_S`; the answer is kept for the process, a failed probe for
  :data:`UNREACHABLE_TTL_S`). A hub that does not answer means the cached copy (if any) is used without
  asking the hub, and a spec that is not cached fails at once with :class:`WeightsUnavailableError`
  instead of minutes of huggingface_hub retries. Calls that do go to the hub have their retries capped
  (:data:`HUB_MAX_RETRIES`).

``os.environ`` is never changed.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_PROBE_TIMEOUT_S = 2.5  # one request; a hub that cannot answer in this long is treated as out of reach
UNREACHABLE_TTL_S = 30.0  # a failed probe is trusted this long, then the hub is asked again
HUB_MAX_RETRIES = 2  # huggingface_hub's own default is 5, with up to 8 s between tries
HUB_MAX_RETRY_WAIT_S = 4.0
OFFLINE_SPECS = "`builtin:efficientnet-lite0` (backbone) and `builtin:minilm` (text encoder)"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_GATEWAY_ERRORS = (502, 503, 504)  # what a proxy answers when it cannot reach the hub itself


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


# ----- the hub: reachable? cached? ----------------------------------------------------------------------
@dataclass(frozen=True)
class HubStatus:
    """The answer of one probe of a hub endpoint."""

    endpoint: str
    reachable: bool
    detail: str  # why it is not reachable ("" when it is)
    checked_at: float


_probe_lock = threading.Lock()
_probes: dict[str, HubStatus] = {}


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` (read now), else huggingface_hub's configured endpoint, else the public hub."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    try:
        from huggingface_hub import constants
    except ImportError:
        return DEFAULT_ENDPOINT
    return str(getattr(constants, "ENDPOINT", DEFAULT_ENDPOINT)).rstrip("/")


def hub_status(timeout: float = HUB_PROBE_TIMEOUT_S) -> HubStatus:
    """Whether the hub endpoint answers: probed once, then remembered (see the module docstring)."""
    endpoint = hub_endpoint()
    with _probe_lock:  # concurrent loads share one probe
        known = _probes.get(endpoint)
        if known is not None and (known.reachable or time.monotonic() - known.checked_at < UNREACHABLE_TTL_S):
            return known
        status = _probe(endpoint, timeout)
        _probes[endpoint] = status
    if status.reachable:
        log.info("hub %s answers", endpoint)
    else:
        log.info("hub %s is out of reach: %s", endpoint, status.detail)
    return status


def forget_hub_status() -> None:
    """Drop remembered probe results (the next hub load probes again)."""
    with _probe_lock:
        _probes.clear()


def _probe(endpoint: str, timeout: float) -> HubStatus:
    import httpx

    now = time.monotonic()
    try:
        response = httpx.head(endpoint, timeout=timeout, follow_redirects=False)
    except httpx.TimeoutException:
        return HubStatus(endpoint, False, f"{endpoint} did not answer within {timeout:g} s", now)
    except (httpx.HTTPError, OSError, ValueError) as e:
        return HubStatus(endpoint, False, f"{endpoint}: {type(e).__name__}: {_one_line(str(e), 160)}", now)
    if response.status_code in _GATEWAY_ERRORS:
        return HubStatus(endpoint, False, f"{endpoint} answered HTTP {response.status_code} (a proxy with no route "
                                          "to the hub?)", now)
    return HubStatus(endpoint, True, "", now)


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache a load would read: ``cache_dir``, else huggingface_hub's (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE).expanduser()
    except ImportError:
        home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
        return Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub").expanduser()


def is_cached(repo_id: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether the hub cache holds any snapshot of model repo ``repo_id`` (without asking the hub)."""
    snapshots = hub_cache_dir(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    try:
        return any(p.is_dir() and any(p.iterdir()) for p in snapshots.iterdir())
    except OSError:
        return False


def looks_like_repo_id(source: str) -> bool:
    """``name`` or ``org/name``: something the hub could serve (a missing local path is not one)."""
    return bool(_REPO_ID.match(source)) and ".." not in source and not source.endswith((".", "-"))


# ----- retries of calls that do go to the hub ------------------------------------------------------------
_capping: contextvars.ContextVar[bool] = contextvars.ContextVar("fmmc_cap_hub_retries", default=False)
_cap_lock = threading.Lock()


def _install_retry_cap() -> None:
    """Wrap huggingface_hub's backoff helper once so that calls made inside :func:`capped_hub_retries` retry
    at most :data:`HUB_MAX_RETRIES` times; everything else in the process keeps huggingface_hub's defaults."""
    try:
        from huggingface_hub.utils import _http
    except ImportError:
        return
    with _cap_lock:
        original = getattr(_http, "http_backoff", None)
        if original is None or getattr(original, "_fmmc_capped", False):
            return

        @functools.wraps(original)
        def capped(*args: Any, **kwargs: Any) -> Any:
            if _capping.get():
                kwargs["max_retries"] = min(int(kwargs.get("max_retries", HUB_MAX_RETRIES)), HUB_MAX_RETRIES)
                kwargs["max_wait_time"] = min(float(kwargs.get("max_wait_time", HUB_MAX_RETRY_WAIT_S)),
                                              HUB_MAX_RETRY_WAIT_S)
            return original(*args, **kwargs)

        capped._fmmc_capped = True  # type: ignore[attr-defined]
        _http.http_backoff = capped


@contextmanager
def capped_hub_retries() -> Iterator[None]:
    """Hub requests made in this block (this thread) retry at most :data:`HUB_MAX_RETRIES` times."""
    _install_retry_cap()
    token = _capping.set(True)
    try:
        yield
    finally:
        _capping.reset(token)


# ----- loading ------------------------------------------------------------------------------------------
def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def unavailable_message(source: str, what: str, reason: str) -> str:
    """The one message for hub weights that cannot be had here: what, why, and every way to fix it."""
    set_offline = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
                   if os.environ.get(v, "0").lower() in ("1", "true", "yes")]
    allow = (f"allow downloads (unset {' and '.join(set_offline)}, then check your network and HF_ENDPOINT)"
             if set_offline else "fix the hub's reach (your network, proxy and HF_ENDPOINT; HF_HUB_OFFLINE=1 makes "
             "fmmc stop asking it)")
    return (
        f"cannot load {what} {source!r}: the weights are not in the local Hugging Face cache and the hub "
        f"could not be reached ({reason}). Pass a local path (e.g. `hf:/path/to/model`, a directory written by "
        f"save_pretrained) or {allow}; the offline specs {OFFLINE_SPECS} work without a hub."
    )


def _plan_hub_load(source: str, what: str, kwargs: dict[str, Any]) -> HubStatus | None:
    """Decide, before any download starts, how a hub id is loaded: may set ``local_files_only`` or raise."""
    if is_offline():
        kwargs.setdefault("local_files_only", True)
        return None
    if kwargs.get("local_files_only") or not looks_like_repo_id(source):
        return None
    status = hub_status()
    if status.reachable:
        return status
    if is_cached(source, kwargs.get("cache_dir")):
        log.info("%s %s: hub out of reach (%s); using the cached copy", what, source, status.detail)
        kwargs["local_files_only"] = True
        return status
    raise WeightsUnavailableError(unavailable_message(source, what, status.detail))


def load_pretrained(loader: Callable[..., T], source: str, what: str, **kwargs: Any) -> T:
    """Call ``loader(source, **kwargs)`` (a ``from_pretrained``), turning hub/offline failures into one clear error.

    A hub id whose weights are not cached, with the hub out of reach, fails at once (no download is tried).
    """
    resolved = resolve_weights(source)
    local = is_local(resolved)
    status = None if local else _plan_hub_load(source, what, kwargs)
    try:
        if status is not None and status.reachable:
            with capped_hub_retries():
                return loader(resolved, **kwargs)
        return loader(resolved, **kwargs)
    except (OSError, ValueError) as e:
        raise WeightsUnavailableError(_failure_message(source, resolved, what, local, status, e)) from e


def _failure_message(source: str, resolved: str, what: str, local: bool, status: HubStatus | None,
                     error: BaseException) -> str:
    details = f"{type(error).__name__}: {_one_line(str(error))}"
    if local:
        return f"cannot load {what} from local path {resolved!r}: {details}"
    if status is not None and status.reachable:
        return (f"cannot load {what} {source!r} from the hub ({status.endpoint} answers): check the repo id, and "
                f"your token (`hf auth login`) for gated or private repos, or pass a local path (e.g. "
                f"`hf:/path/to/model`). Details: {details}")
    if not is_offline() and not looks_like_repo_id(source):
        return (f"cannot load {what} {source!r}: it is neither an existing local path nor a hub id (`org/name`). "
                f"Check the path, or use the offline specs {OFFLINE_SPECS}. Details: {details}")
    if is_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        reason = status.detail if status is not None else "only the local cache was asked (local_files_only)"
    return f"{unavailable_message(source, what, reason)} Details: {details}"
