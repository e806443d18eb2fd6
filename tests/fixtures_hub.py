"""A local Hugging Face hub for tests: a real threaded HTTP server that answers huggingface_hub's upload calls
(create_repo, create_branch, preupload, commit, validate-yaml) and serves back what was pushed (repo info, the
tree listing, ``resolve`` HEAD/GET), minimally but with the fields and headers huggingface_hub 2.4 reads, and
records every request. ``run_online`` runs ``fmmc`` or Python in a fresh process pointed at it with ``HF_ENDPOINT``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

SRC = Path(__file__).resolve().parents[1] / "src"


def git_blob_id(data: bytes) -> str:
    """The git blob sha1 of ``data``: the ``oid`` / ``ETag`` the hub gives a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Every file is a "regular" upload (sent base64 in the commit's ndjson), so what reached the server can be
    checked byte for byte, and is served back as a regular git file. ``requests``: (method, path, headers
    lower-cased, body) of every call; ``commits``: parsed commits; ``trees``: (kind, repo, revision or commit
    oid) -> (commit oid, {path: bytes}), the files a revision holds after the commits so far."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.commits: list[dict[str, Any]] = []
        self.repos: set[tuple[str, str]] = set()
        self.trees: dict[tuple[str, str, str], tuple[str, dict[str, bytes]]] = {}
        self.blobs: dict[str, bytes] = {}  # GET /blobs/NAME: what a URL input fetches
        self.deny: int | None = None  # answer every POST with this status (a bad token: 401)
        self.lock = threading.Lock()
        self.closed = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                hub._record(self, b"")
                name = self.path.removeprefix("/blobs/")
                if self.path.startswith("/blobs/") and name in hub.blobs:
                    return self._send(200, hub.blobs[name], "application/octet-stream")
                self._serve()

            def do_HEAD(self) -> None:  # noqa: N802
                hub._record(self, b"")
                if "/resolve/" in self.path:
                    return self._serve()
                self._send(200, b"")  # the endpoint's root: fmmc's reachability probe

            def _serve(self) -> None:
                status, headers, data = hub.download(urlsplit(self.path).path)
                self._send(status, data, headers.pop("Content-Type", "application/json"), headers)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub._record(self, body)
                status, answer = hub.answer(self.path.split("?")[0], body, f"http://{self.headers['Host']}")
                self._send(status, json.dumps(answer).encode())

            def _send(self, status: int, data: bytes, kind: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self.lock:
            self.requests.append((handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()},
                                  body))

    # ----- uploads -----------------------------------------------------------------------------------------
    def answer(self, path: str, body: bytes, base: str) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if self.deny:
            return self.deny, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/repos/create":
            p = json.loads(body)
            kind, repo = p.get("type") or "model", f"{p['organization']}/{p['name']}"
            if (kind, repo) in self.repos:
                return 409, {"error": "You already created this repo"}
            self.repos.add((kind, repo))
            return 200, {"url": f"{base}/{'datasets/' if kind == 'dataset' else ''}{repo}"}
        if path == "/api/validate-yaml":
            text = json.loads(body)["content"]
            try:
                yaml.safe_load(text.split("---")[1])
            except (yaml.YAMLError, IndexError) as e:
                return 400, {"errors": [{"message": str(e)}]}
            return 200, {"errors": [], "warnings": []}
        if len(parts) >= 5 and parts[0] == "api":  # /api/{type}s/{org}/{name}/{action}/{revision}
            kind, repo, action, rev = parts[1][:-1], f"{parts[2]}/{parts[3]}", parts[4], unquote("/".join(parts[5:]))
            if (kind, repo) not in self.repos:
                return 404, {"error": "Repository not found"}
            if action == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in files]}
            if action == "branch":
                return 200, {}
            if action == "commit":
                lines = [json.loads(x) for x in body.splitlines() if x.strip()]
                files = {v["value"]["path"]: base64.b64decode(v["value"]["content"]) for v in lines if v["key"] == "file"}
                oid = hashlib.sha1(body).hexdigest()
                self.commits.append({"kind": kind, "repo": repo, "revision": rev, "oid": oid, "header": lines[0],
                                     "files": files})
                with self.lock:
                    _, tree = self.trees.get((kind, repo, rev), ("", {}))
                    tree = {**tree, **files}
                    for v in lines:
                        if v["key"] == "deletedFile":
                            tree.pop(v["value"]["path"], None)
                    self.trees[(kind, repo, rev)] = self.trees[(kind, repo, oid)] = (oid, tree)
                prefix = "datasets/" if kind == "dataset" else ""
                return 200, {"commitUrl": f"{base}/{prefix}{repo}/commit/{oid}", "commitOid": oid}
        return 404, {"error": f"no route {path}"}

    # ----- downloads: what snapshot_download / hf_hub_download ask --------------------------------------------
    def download(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """``GET /api/{type}s/{org}/{name}/revision/{rev}`` (repo info: ``sha``, ``siblings``), ``GET
        .../tree/{rev}`` (the recursive listing: ``oid`` and ``size`` per file), and ``HEAD``/``GET
        /[{type}s/]{org}/{name}/resolve/{rev}/{file}`` (the bytes, with ``X-Repo-Commit`` and ``ETag``)."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "api" and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            kind, repo, action, rev = parts[1][:-1], f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            found = self._tree(kind, repo, rev)
            if found is None:
                return self._missing(kind, repo, f"revision {rev!r}")
            oid, tree = found
            if action == "revision":
                info = {"id": repo, "sha": oid, "private": False, "siblings": [{"rfilename": n} for n in sorted(tree)]}
                return 200, {}, json.dumps(info).encode()
            listing = [{"type": "file", "path": n, "size": len(d), "oid": git_blob_id(d)} for n, d in sorted(tree.items())]
            return 200, {}, json.dumps(listing).encode()
        kind = "model"
        if parts[0] in ("datasets", "spaces"):
            kind, parts = parts[0][:-1], parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, name = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
            found = self._tree(kind, repo, rev)
            if found is None or name not in found[1]:
                return self._missing(kind, repo, f"entry {name!r}" if found else f"revision {rev!r}")
            data = found[1][name]
            return 200, {"Content-Type": "application/octet-stream", "X-Repo-Commit": found[0],
                         "ETag": f'"{git_blob_id(data)}"'}, data
        return 404, {}, json.dumps({"error": f"no route {path}"}).encode()

    def _tree(self, kind: str, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        with self.lock:
            return self.trees.get((kind, repo, rev))

    def _missing(self, kind: str, repo: str, what: str) -> tuple[int, dict[str, str], bytes]:
        """The hub's 404s, with the ``X-Error-Code`` huggingface_hub turns into its typed errors."""
        code = "RepoNotFound" if (kind, repo) not in self.repos else (
            "RevisionNotFound" if what.startswith("revision") else "EntryNotFound")
        return 404, {"X-Error-Code": code}, json.dumps({"error": f"{repo}: {what} not found"}).encode()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.shutdown()
            self.server.server_close()


def online_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """This process's environment made online with ``HF_ENDPOINT`` at the local hub and an empty hub cache
    (huggingface_hub reads offline mode at import, and the test process imported it offline)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1",
               PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]))
    return env


def run_online(hub: FakeHub, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``fmmc ARGV`` in a fresh process online at the local hub (:func:`online_env`)."""
    return subprocess.run([sys.executable, "-m", "fmmc.cli.main", *argv], env=online_env(hub, tmp_path),
                          capture_output=True, text=True, timeout=120)


def run_python_online(hub: FakeHub, tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """``python -c CODE`` in a fresh process online at the local hub, run in ``tmp_path`` (so that a hub id
    ``org/name`` is never a local folder)."""
    return subprocess.run([sys.executable, "-c", code], env=online_env(hub, tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
