"""One error shape for every failure: ``{"error": {"code": "...", "message": "..."}}`` with the right status.

Library exceptions map to statuses here, in one place: bad image files 400, prompts outside the image
422, objects not found 404, weights that cannot load (or an unreachable describer endpoint) 503 at once,
a file-system fault on the server 500 ``io_error`` (one line naming the path, from
:func:`fmmc.core.errors.describe_os_error`), anything else unexpected 500 (logged, never shown).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               408: "timeout", 413: "too_large", 415: "unsupported_media_type", 422: "invalid_request", 429: "busy", 503: "busy",
               504: "timeout"}


class ApiError(Exception):
    """An error for the client: HTTP ``status``, a stable machine ``code`` and a human ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def from_exception(e: BaseException) -> ApiError:
    """The ApiError a library exception stands for."""
    from fmmc.core.errors import is_io_fault
    from fmmc.core.hub import WeightsUnavailableError
    from fmmc.data.imageio import ImageError
    from fmmc.grounding.prompts import PromptError, RegionNotFound

    if isinstance(e, ApiError):
        return e
    if isinstance(e, ImageError):
        return ApiError(400, "bad_image", f"{e.path}: {e.problem}" + (f" ({e.fix})" if e.fix else ""))
    if isinstance(e, RegionNotFound):
        return ApiError(404, "not_found", str(e))
    if isinstance(e, PromptError):
        return ApiError(422, "bad_prompt", str(e))
    if isinstance(e, WeightsUnavailableError):
        return ApiError(503, "component_unavailable", str(e))
    if isinstance(e, ImportError) or getattr(e, "stops_run", False):  # stops_run: e.g. the VLM endpoint is down
        return ApiError(503, "component_unavailable", str(e))
    if isinstance(e, ValueError):
        return ApiError(422, "invalid_request", str(e))
    if is_io_fault(e):  # a full disk, a read-only mount... on the server: one line naming the path
        message = os_error_line(e)  # type: ignore[arg-type]
        log.error("I/O fault while serving a request: %s", message)
        return ApiError(500, "io_error", message)
    log.exception("unexpected error while serving a request", exc_info=e)
    return ApiError(500, "internal", "internal error; see the server log")


def os_error_line(e: OSError) -> str:
    """One line for a file-system fault: :func:`~fmmc.core.errors.describe_os_error` for an OS error (it
    names the path and the fix); the own message of a library's OSError subclass that already says it all
    (``CacheUnwritable``: raised with an errno and a full message, but no path)."""
    from fmmc.core.errors import describe_os_error

    if e.filename is None and type(e).__module__ != "builtins" and e.strerror:
        return " ".join(str(e.strerror).split())
    return describe_os_error(e)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(e.status_code, "error")
        message = e.detail if isinstance(e.detail, str) else code
        return error_response(e.status_code, code, message, getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _any(_: Request, e: Exception) -> JSONResponse:
        err = from_exception(e)
        return error_response(err.status, err.code, err.message, err.headers)
