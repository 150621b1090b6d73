"""JSON answers for what no route handles, shared by every Starlette app: unknown paths and
methods get a JSON reason (a 405 with its ``Allow`` header), and an unexpected exception is
logged with its trace and answered with a plain 500 (the trace never reaches the client)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = structlog.get_logger()
REASONS = {404: "no such endpoint", 405: "method not allowed"}


def error_handlers(count: Callable[[int], None] | None = None) -> dict[Any, Callable[..., Any]]:
    """Starlette ``exception_handlers``; ``count(status)`` is called for each answer (metrics)."""

    async def unrouted(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if count is not None:
            count(status)
        headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}  # 405 carries Allow
        return JSONResponse({"error": REASONS.get(status, "request not handled")}, status_code=status,
                            headers=headers)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("unhandled_error", path=request.url.path)
        if count is not None:
            count(500)
        return JSONResponse({"error": "internal error; it was logged"}, status_code=500)

    return {404: unrouted, 405: unrouted, Exception: crashed}
