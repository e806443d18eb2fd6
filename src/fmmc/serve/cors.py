"""CORS with the API's one error shape: a refused preflight answers ``{"error": {"code", "message"}}``.

Starlette's :class:`~starlette.middleware.cors.CORSMiddleware` decides (allowed origins, methods, headers);
only its refusal changes, from a plain-text ``Disallowed CORS origin`` to the JSON every other error uses,
status 400 as before, so a page's ``fetch`` error handler reads one format.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from fmmc.serve.errors import error_body

__all__ = ["JSONCORSMiddleware"]


class JSONCORSMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code != 400:
            return answer
        what = bytes(answer.body).decode("utf-8", "replace").removeprefix("Disallowed CORS ").strip() or "request"
        origin = request_headers.get("origin", "")
        message = (f"cross-origin request from {origin!r} refused ({what} not allowed): this server answers GET and "
                   "POST with Authorization and Content-Type headers from the origins given with --cors-origin; "
                   "start it with --cors-origin ORIGIN for each page that calls it")
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in ("content-type", "content-length")}
        return JSONResponse(error_body("cors_refused", message), status_code=400, headers=headers)
