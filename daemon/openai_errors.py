"""OpenAI's error shape on the OpenAI-compatible paths, from the app's one set of error handlers.

``install_openai_errors`` wraps every handler ``install_error_handlers`` registered (validation,
database outage) and FastAPI's ``HTTPException`` handler: on ``/v1/chat/completions``,
``/v1/completions`` and ``/v1/models`` the answer becomes ``{"error": {"message", "type", "param",
"code"}}`` with the same status and headers (a validation error becomes 400, as OpenAI answers);
everywhere else it stays ``{"detail": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 409: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 502: "api_error", 503: "api_error", 504: "timeout"}
_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded", 504: "upstream_timeout"}

Handler = Callable[[Request, Exception], Awaitable[Response]]


def is_openai_path(path: str) -> bool:
    return path in OPENAI_PATHS or path.startswith("/v1/models/")


def openai_error(status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer in OpenAI's shape."""
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error" if status >= 500 else
                                                               "invalid_request_error"),
                      "param": param, "code": code or _CODES.get(status)}}
    return JSONResponse(body, status_code=status, headers=headers)


def _reshaped(response: Response) -> Response:
    """``{"detail": ...}`` → OpenAI's shape, same status (422 → 400) and headers."""
    try:
        detail: Any = json.loads(bytes(response.body)).get("detail")
    except (ValueError, AttributeError):
        return response
    message = detail if isinstance(detail, str) else "invalid request"
    status = 400 if response.status_code == 422 else response.status_code
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return openai_error(status, message, headers=headers)


def _wrap(handler: Handler) -> Handler:
    async def handle(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        return _reshaped(response) if is_openai_path(request.url.path) else response

    return handle


def install_openai_errors(app: FastAPI) -> None:
    """Call after ``install_error_handlers``: wraps its handlers and the ``HTTPException`` one."""
    handlers: dict[Any, Handler] = dict(app.exception_handlers)
    handlers.setdefault(StarletteHTTPException, http_exception_handler)  # type: ignore[arg-type]
    for error, handler in handlers.items():
        if isinstance(error, type):
            app.add_exception_handler(error, _wrap(handler))
