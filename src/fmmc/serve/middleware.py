"""ASGI middleware that guards the service before any parsing: body size (413), body type (415), headers.

Pure ASGI (no request buffering by the framework): a body announced larger than the limit is refused
from its ``Content-Length``; a chunked body is counted as it arrives and refused once it passes the limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART_PATHS = ("/v1/classify", "/v1/segment")
_PAGE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'"),
]


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a refused body (up to ``budget`` bytes) so the client sees our answer
    instead of a connection reset in the middle of its upload."""
    seen = 0
    while seen <= budget:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        seen += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return


class GuardMiddleware:
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        limit_mb = self.max_body / (1024 * 1024)
        if scope["method"] == "POST" and scope["path"] in MULTIPART_PATHS:
            ctype = headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):
                await _send_error(send, 415, "unsupported_media_type",
                                  f"send the request as multipart/form-data (got {ctype or 'no content type'!r}) "
                                  "with the photo in the 'image' field")
                return
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                await _send_error(send, 400, "bad_request", "invalid Content-Length header")
                return
            if too_big:
                await _drain(receive, 8 * self.max_body)
                await _send_error(send, 413, "too_large",
                                  f"request body is {int(length) / 1e6:.1f} MB; the limit is {limit_mb:g} MiB")
                return
            await self.app(scope, receive, self._headers_for(scope, send))
            return
        # no Content-Length (chunked): read up to the limit, then replay to the app
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                if msg.get("more_body", False):
                    await _drain(receive, 8 * self.max_body)
                await _send_error(send, 413, "too_large", f"request body is over the limit of {limit_mb:g} MiB")
                return
            chunks.append(chunk)
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, self._headers_for(scope, send))

    @staticmethod
    def _headers_for(scope: Scope, send: Send) -> Send:
        if scope["path"] != "/" and not scope["path"].startswith("/static/"):
            return send

        async def wrapped(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                msg = dict(msg)
                msg["headers"] = list(msg.get("headers", [])) + _PAGE_HEADERS
            await send(msg)

        return wrapped
