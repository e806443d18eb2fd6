"""Upload a model or dataset folder to the Hugging Face hub: ``create_repo`` + ``upload_folder``.

    >>> push_folder("runs/a/model", "me/mugs-material", private=True)                 # doctest: +SKIP
    'https://huggingface.co/me/mugs-material/commit/...'
    >>> push_folder("runs/synth/dataset", "me/synth-materials", repo_type="dataset")  # doctest: +SKIP

The endpoint is read when the push starts (``HF_ENDPOINT``, else huggingface_hub's, see
:func:`fmmc.core.hub.hub_endpoint`) and passed to ``HfApi``, so setting ``HF_ENDPOINT`` in a running process
works. ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) refuses at once, and every hub failure (no
network, a wrong token, a missing namespace) is one :class:`HubPushError` line saying what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
# fmmc's bookkeeping files are not part of what is shared
IGNORE = [".fmmc-output.json", ".fmmc-probe-*", "**/.fmmc-probe-*", ".*.tmp-*"]
REPO_TYPES = ("model", "dataset")


class HubPushError(RuntimeError):
    """A push that could not be done; the message says why and how to fix it."""


def check_can_push(what: str) -> None:
    """Refuse in offline mode, before any work, with the fix."""
    from fmmc.core.hub import is_offline

    if is_offline():
        raise HubPushError(f"cannot push {what}: offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set); "
                           "unset it to upload to the hub")


def push_folder(folder: str | Path, repo_id: str, *, repo_type: str = "model", private: bool | None = None,
                revision: str | None = None, token: str | None = None, commit_message: str | None = None,
                endpoint: str | None = None) -> str:
    """Create ``repo_id`` if needed (``private`` applies to a new repo only), create branch ``revision`` if
    given, upload every file of ``folder`` but fmmc's bookkeeping (:data:`IGNORE`) in one commit, and return
    the commit URL. ``token``: a hub token (default: the saved one, ``hf auth login``, or ``HF_TOKEN``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from fmmc.core.hub import capped_hub_retries, hub_endpoint, looks_like_repo_id

    folder = Path(folder)
    check_can_push(f"{folder} to {repo_id}")
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type={repo_type!r}: use one of {', '.join(REPO_TYPES)}")
    if not looks_like_repo_id(repo_id) or "/" not in repo_id:
        raise ValueError(f"{repo_id!r} is not a hub repo id: name it ORG/NAME (your user name or an organisation)")
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder to push")
    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    what = f"{repo_type} {repo_id} at {endpoint}"
    try:
        with capped_hub_retries():
            url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            log.info("hub repo %s", url)
            if revision:
                api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type, revision=revision,
                                     commit_message=commit_message or f"Upload {folder.name} with fmmc",
                                     ignore_patterns=list(IGNORE))
    except HfHubHTTPError as e:
        raise HubPushError(_http_message(what, e)) from e
    except (*_transport_errors(), OSError) as e:  # no route, refused, DNS, timeout
        raise HubPushError(f"cannot push to {what}: the hub could not be reached ({type(e).__name__}: "
                           f"{_first_line(e)}); check your network and HF_ENDPOINT") from e
    except ValueError as e:  # huggingface_hub's check of README.md's metadata, among others
        raise HubPushError(f"cannot push to {what}: {' '.join(str(e).split())}") from e
    commit_url = str(getattr(info, "commit_url", info))
    log.info("pushed %s to %s: %s", folder, repo_id, commit_url)
    return commit_url


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client errors huggingface_hub may raise: it uses ``httpx2`` (2.x) or ``httpx`` (older)."""
    import importlib

    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).HTTPError)
        except ImportError:
            pass
    return tuple(found)


def _http_message(what: str, e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    server = getattr(e, "server_message", None) or _first_line(e)
    fix = {401: "log in with `hf auth login`, or pass --token / set HF_TOKEN",
           403: "the token cannot write there: use a write token, or a namespace you belong to",
           404: "check the repo id and its namespace (and --revision)"}.get(status or 0, "check the repo id and token")
    return f"cannot push to {what}: HTTP {status}: {_first_line(server)}; {fix}"


def _first_line(e: object) -> str:
    text = " ".join(str(e).split("\n")[:1]).strip()
    return text[:200] + ("..." if len(text) > 200 else "")
