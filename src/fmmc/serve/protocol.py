"""The uvicorn HTTP protocol ``fmmc serve`` runs: uvicorn's own, with three guards at the connection level.

    uvicorn.run(app, host=..., port=..., http=protocol_class(settings))

* Malformed HTTP (a bad request line, an invalid header, headers over h11's 16 KiB) gets the API's JSON
  error shape, ``400 bad_request``, instead of uvicorn's plain-text "Invalid HTTP request received.".
* Request headers must be complete within ``read_timeout`` seconds of the connection (or of the previous
  answer): a client that trickles them (slowloris) gets ``408`` and is disconnected.
* Lingering close: when the app answers before the request body has arrived (413, 401, ...) and closes,
  the server half-closes (FIN after the answer) and discards what the client still sends for at most
  ``linger_s`` seconds. A client busy uploading then reads the answer instead of a connection reset,
  and nothing of the body is stored.

It subclasses ``HttpToolsProtocol`` when ``httptools`` is installed (as uvicorn's ``auto`` does), else
``H11Protocol``.
"""

from __future__ import annotations

import asyncio
import http
import json
from typing import Any

from fmmc.serve.errors import error_body
from fmmc.serve.settings import ServeSettings

BAD_REQUEST = "malformed HTTP request (request line or a header); send a valid HTTP/1.1 request"


def protocol_class(settings: ServeSettings, linger_s: float = 2.0) -> type[asyncio.Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)`` / ``uvicorn.run(http=...)``."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    return type(f"Fmmc{base.__name__}", (GuardedProtocol, base),
                {"read_timeout": settings.read_timeout, "linger_s": linger_s})


def error_bytes(status: int, code: str, message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 error answer in the API's JSON shape, closing the connection."""
    body = json.dumps(error_body(code, message)).encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [b"content-type: application/json", b"content-length: " + str(len(body)).encode(),
              b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class GuardedProtocol:
    """Mixin over a uvicorn HTTP protocol class (see the module docstring)."""

    read_timeout: float = 10.0
    linger_s: float = 2.0
    # provided by the uvicorn protocol class
    cycle: Any
    loop: asyncio.AbstractEventLoop
    server_state: Any
    transport: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.lingering = False
        self._partial = False
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[misc]
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # the rest of a refused upload: dropped unread
        if self.cycle is None or self.cycle.response_complete:
            self._partial = True  # bytes of a request whose headers are not complete yet
        super().data_received(data)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._partial = False
        self._arm_deadline()

    def send_400_response(self, msg: str) -> None:
        self.write_error(400, "bad_request", BAD_REQUEST)

    def write_error(self, status: int, code: str, message: str) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(error_bytes(status, code, message, self.server_state.default_headers))
        self.transport.close()

    def _arm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        armed = self.cycle

        def expire() -> None:
            if self.transport.is_closing() or self.cycle is not armed:
                return  # closed, or a request's headers arrived in time
            if armed is not None and not armed.response_complete:
                return
            if self._partial:
                self.write_error(408, "timeout", f"the request headers took over {self.read_timeout:g} s; "
                                                 "send them in one go")
            else:
                self.transport.close()  # an idle connection that never sent a request

        self._deadline = self.loop.call_later(self.read_timeout, expire)


class _LingeringTransport:
    """The connection's transport, whose ``close()`` lingers while the client may still be sending a body."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def close(self) -> None:
        p, t = self._protocol, self._transport
        body_pending = p.cycle is not None and getattr(p.cycle, "more_body", False)
        if p.lingering or t.is_closing() or not body_pending or not t.can_write_eof():
            t.close()
            return
        p.lingering = True
        t.write_eof()  # the answer, then FIN; keep reading (and dropping) for a moment
        t.resume_reading()
        p.loop.call_later(p.linger_s, t.close)
