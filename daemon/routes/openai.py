"""The OpenAI-compatible endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.

Point the official ``openai`` package at ``http://HOST:PORT/v1`` with an API key of the ``route``
scope; the work is in ``daemon/gateway.py``, the error shape in ``daemon/openai_errors.py``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.responses import Response

from daemon.auth import PrincipalDep
from daemon.gateway import Gateway
from daemon.openai_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    Model,
    ModelList,
    openai_error_responses,
)

router = APIRouter(tags=["openai"])

_STREAM: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                 "description": "The completion; with ``stream: true`` a stream of server-sent events."}}
_ERRORS = openai_error_responses(400, 401, 403, 404, 409, 422, 429, 502, 503, 504)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**_STREAM, **_ERRORS})
async def chat_completions(body: ChatCompletionRequest, principal: PrincipalDep, request: Request) -> Response:
    """Route the user messages (``model: thalamus[:preset]``) or call the named expert; OpenAI's chat API."""
    return await _gateway(request).handle(body, "chat", principal.app_or(None))


@router.post("/v1/completions", response_model=Completion, responses={**_STREAM, **_ERRORS})
async def completions(body: CompletionRequest, principal: PrincipalDep, request: Request) -> Response:
    """Route the prompt (``model: thalamus[:preset]``) or call the named expert; OpenAI's completions API."""
    return await _gateway(request).handle(body, "completions", principal.app_or(None))


@router.get("/v1/models", response_model=ModelList, responses=openai_error_responses(401, 403, 429))
async def models(principal: PrincipalDep, request: Request) -> dict[str, Any]:
    """``thalamus``, ``thalamus:<preset>`` and every expert that answers completions."""
    return {"object": "list", "data": _gateway(request).models()}


@router.get("/v1/models/{model}", response_model=Model, responses=openai_error_responses(401, 403, 404, 422, 429))
async def model(model: str, principal: PrincipalDep, request: Request) -> dict[str, Any]:
    """One model of ``GET /v1/models``."""
    for row in _gateway(request).models():
        if row["id"] == model:
            return row
    raise HTTPException(404, f"unknown model {model!r}; GET /v1/models lists the models this daemon serves")
