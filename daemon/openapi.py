"""The served OpenAPI document: FastAPI's, plus what only the settings know (the prompt length limit)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from store.settings import Settings

_PROMPT_BODIES = ("RouteRequest", "InferRequest")


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve ``openapi_document`` at /openapi.json (FastAPI's documented way: replace ``app.openapi``)."""

    def openapi() -> dict[str, Any]:
        return openapi_document(app, settings)

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI documents overriding the method this way


def openapi_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """Built once per app; ``prompt.maxLength`` is ``THALAMUS_MAX_PROMPT_CHARS``."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
        for name in _PROMPT_BODIES:
            prompt = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {}).get("prompt")
            if prompt is not None:
                prompt["maxLength"] = settings.max_prompt_chars
        from daemon.auth import document_open_paths

        document_open_paths(schema, settings)
        app.openapi_schema = schema
    return app.openapi_schema
