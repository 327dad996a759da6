"""ASGI middleware of the daemon: count every response by endpoint and status code."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.metrics import Metrics


def api_paths(routers: Iterable[APIRouter]) -> frozenset[str]:
    """The paths of these routers' endpoints (an ``APIRouter(prefix=...)`` is included; FastAPI's /docs is not)."""
    return frozenset(route.path for router in routers for route in router.routes if isinstance(route, APIRoute))


class CountRequests:
    """Pure ASGI middleware: ``thalamus_http_requests{endpoint, status}``; any path not in ``endpoints`` is ``other``.

    Paths are matched exactly, so the label set stays bounded whatever clients send.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Iterable[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
