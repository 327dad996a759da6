"""Serve the HTTP API with uvicorn: one process, or ``THALAMUS_WORKERS`` processes sharing the port.

Each worker process builds its own app from the environment (the parent writes its settings there
first), so each loads the router, runs its own hot-swap watcher, log writer and spool, and swaps on
its own. uvicorn picks uvloop and httptools when they are installed (they are dependencies).
"""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI

from store.settings import Settings


def run_server(settings: Settings) -> None:
    from daemon.app import create_app
    from daemon.auth import check_binding

    check_binding(settings)  # no unauthenticated daemon on a non-loopback address
    options = {"host": settings.host, "port": settings.port, "log_level": "info", "timeout_graceful_shutdown": 10}
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
        return
    for key in [k for k in os.environ if k.startswith("THALAMUS_")]:
        del os.environ[key]  # as_env leaves out unset settings: an old variable must not come back
    os.environ.update(settings.as_env())  # what every worker process reads in app_from_environment
    uvicorn.run("daemon.server:app_from_environment", factory=True, workers=settings.workers,
                **options)  # type: ignore[arg-type]


def app_from_environment() -> FastAPI:
    """The app of one worker process, from the ``THALAMUS_*`` settings its parent exported."""
    from daemon.app import create_app

    return create_app(Settings())
