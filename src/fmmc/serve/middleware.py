"""ASGI middleware that guards the service from the request headers, before any body is read.

Pure ASGI (no request buffering by the framework), in this order:

* 401 when ``token`` is set and a ``/v1/*`` request lacks ``Authorization: Bearer <token>``;
* 415 when a POST to a multipart endpoint is not ``multipart/form-data``;
* 413 when the declared ``Content-Length`` is over the limit.

All three are answered without calling ``receive()``: nothing of the body is read, and a client that sent
``Expect: 100-continue`` never gets ``100 Continue``. Each refusal says ``connection: close`` (the server
stops reading the upload). A body that is read anyway (chunked, or a ``Content-Length`` within the limit)
is counted as it arrives: past the limit it gets 413, and a client that pauses longer than
``read_timeout`` gets 408, in both cases without waiting for the rest.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fmmc.serve.errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART_PATHS = ("/v1/classify", "/v1/segment")
AUTH_HELP = "missing or wrong bearer token: send 'Authorization: Bearer <token>'"
_PAGE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'"),
]


def needs_token(path: str) -> bool:
    """Whether ``path`` is behind the bearer token (the API; not ``/healthz``, the page or the schema)."""
    return path == "/v1" or path.startswith("/v1/")


def bearer_ok(authorization: str | None, token: str) -> bool:
    """The one token rule: ``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())


def json_error(status: int, code: str, message: str,
               extra: list[tuple[bytes, bytes]] | None = None) -> tuple[Message, Message]:
    """The two ASGI messages of an error answer that closes the connection."""
    body = json.dumps(error_body(code, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *(extra or [])]
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


async def _send_error(send: Send, status: int, code: str, message: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
    for msg in json_error(status, code, message, extra):
        await send(msg)


class GuardMiddleware:
    def __init__(self, app: ASGIApp, max_body: int, token: str | None = None, read_timeout: float = 10.0) -> None:
        self.app = app
        self.max_body = max_body
        self.token = token
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        body = _BodyGuard(self.max_body, self.read_timeout, receive, _page_headers(scope, send))
        await self.app(scope, body.receive, body.send)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[Any, ...] | None:
        """``(status, code, message[, headers])`` when the headers alone refuse the request, else None."""
        if self.token is not None and needs_token(scope["path"]) and not bearer_ok(headers.get("authorization"),
                                                                                   self.token):
            return 401, "unauthorized", AUTH_HELP, [(b"www-authenticate", b"Bearer")]
        if scope["method"] == "POST" and scope["path"] in MULTIPART_PATHS:
            ctype = headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):
                return (415, "unsupported_media_type",
                        f"send the request as multipart/form-data (got {ctype or 'no content type'!r}) "
                        "with the photo in the 'image' field")
        length = headers.get("content-length")
        if length is None:
            return None
        if not length.strip().isdigit():
            return 400, "bad_request", f"invalid Content-Length header {length[:40]!r}; send the body's size in bytes"
        if int(length) > self.max_body:
            return (413, "too_large", f"request body is {int(length) / 1e6:.1f} MB; the limit is "
                                      f"{self.max_body / 2**20:g} MiB: send a smaller file")
        return None


class _BodyGuard:
    """Counts the body as the app reads it: 413 past ``max_body``, 408 after a pause of ``read_timeout``.
    Once it has answered, the app sees a disconnect and whatever it sends is dropped."""

    def __init__(self, max_body: int, read_timeout: float, receive: Receive, send: Send) -> None:
        self.max_body = max_body
        self.read_timeout = read_timeout
        self._receive = receive
        self._send = send
        self.seen = 0
        self.body_done = False
        self.started = False
        self.answered = False

    async def send(self, msg: Message) -> None:
        if self.answered:
            return
        if msg["type"] == "http.response.start":
            self.started = True
        await self._send(msg)

    async def receive(self) -> Message:
        if self.answered:
            return {"type": "http.disconnect"}
        if self.body_done or self.started:  # e.g. a streaming response listening for a disconnect
            return await self._receive()
        try:
            msg = await asyncio.wait_for(self._receive(), self.read_timeout)
        except TimeoutError:
            return await self._answer(408, "timeout", f"the request body paused for over {self.read_timeout:g} s; "
                                                      "send it in one go")
        if msg["type"] == "http.request":
            self.seen += len(msg.get("body", b""))
            self.body_done = not msg.get("more_body", False)
            if self.seen > self.max_body:
                return await self._answer(413, "too_large", f"request body is over the limit of "
                                                            f"{self.max_body / 2**20:g} MiB: send a smaller file")
        return msg

    async def _answer(self, status: int, code: str, message: str) -> Message:
        if not self.started:
            await _send_error(self._send, status, code, message)
        self.answered = True
        return {"type": "http.disconnect"}


def _page_headers(scope: Scope, send: Send) -> Send:
    if scope["path"] != "/" and not scope["path"].startswith("/static/"):
        return send

    async def wrapped(msg: Message) -> None:
        if msg["type"] == "http.response.start":
            msg = dict(msg)
            msg["headers"] = list(msg.get("headers", [])) + _PAGE_HEADERS
        await send(msg)

    return wrapped
