"""Serve the HTTP API with uvicorn."""

from __future__ import annotations

import uvicorn

from store.settings import Settings


def run_server(settings: Settings) -> None:
    from daemon.app import create_app
    from daemon.auth import check_binding

    check_binding(settings)  # no unauthenticated daemon on a non-loopback address
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=10)
