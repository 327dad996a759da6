"""The daemon's ASGI app: its parts in ``app.state``, one router per concern, middleware and error handlers.

| module | holds |
|---|---|
| `daemon/routes/routing.py` | `POST /v1/route`, `POST /v1/infer` |
| `daemon/routes/feedback.py` | `POST /v1/feedback` |
| `daemon/routes/status.py` | `GET /v1/status`, `GET /healthz`, `GET /metrics` |
| `daemon/routes/openai.py` | `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models` (gateway.py) |
| `daemon/routes/admin.py` | `/v1/admin/...`: versions, job runs, experts (the CLI verbs' functions) |
| `daemon/auth.py` | API keys, scopes and rate limits: one app-level dependency |
| `daemon/deps.py` | the dependencies endpoints ask for (settings, holder, writer, metrics, probe, experts) |
| `daemon/lifespan.py` | start-up (writer and spool replay, cold start, watcher) and shutdown |
| `daemon/middleware.py`, `daemon/errors.py`, `daemon/openapi.py` | request counting, error handlers, the document |

A new router (a gateway, an admin API) is one module under ``daemon/routes/`` plus one entry in
``ROUTERS``: ``create_app`` includes it, and ``/metrics`` counts its endpoints by their paths.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from daemon.auth import KeyCache, RateLimits, authenticate
from daemon.errors import install_error_handlers
from daemon.health import DatabaseProbe
from daemon.holder import RouterHolder
from daemon.lifespan import lifespan
from daemon.logwriter import RequestLogWriter
from daemon.metrics import Metrics
from daemon.middleware import CountRequests, api_paths
from daemon.openai_errors import install_openai_errors
from daemon.openapi import install_openapi
from daemon.routes import admin, feedback, openai, routing, status
from daemon.schemas import error_responses
from daemon.shadow import ShadowRunner
from daemon.spool import Spool
from store.settings import Settings

ROUTERS: tuple[APIRouter, ...] = (routing.router, feedback.router, status.router, openai.router, admin.router)
"""Every router of the API, in the order they are matched and documented."""


def create_app(settings: Settings, holder: RouterHolder | None = None,
               writer: RequestLogWriter | None = None, shadows: ShadowRunner | None = None) -> FastAPI:
    """The daemon's ASGI app; its lifespan bootstraps a router, starts the watcher and the log writer."""
    from experts.local import ExpertCache
    from router.constraints import validate_lambdas

    validate_lambdas(settings.default_lambdas)  # a misconfigured default fails at start-up, not per request
    holder = holder or RouterHolder(settings)
    metrics = holder.metrics
    writer = writer or RequestLogWriter(settings, metrics=metrics, spool=_spool(settings, metrics))
    shadows = shadows or ShadowRunner(settings, holder, metrics=metrics)

    from daemon.gateway import Gateway

    # Every endpoint depends on ``authenticate`` (API key, scope, rate limit; daemon/auth.py).
    app = FastAPI(title="thalamus", version="0.1.0", lifespan=lifespan, dependencies=[Depends(authenticate)],
                  responses=error_responses(401, 403, 429))
    state = app.state
    state.settings, state.holder, state.writer, state.metrics = settings, holder, writer, metrics
    state.probe, state.experts = DatabaseProbe(settings), ExpertCache()
    state.keys, state.rate_limits = KeyCache(settings), RateLimits(settings)
    state.gateway = Gateway(settings, holder, writer, metrics, state.experts)
    state.shadows = shadows

    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(CountRequests, metrics=metrics, endpoints=api_paths(ROUTERS))
    install_error_handlers(app)
    install_openai_errors(app)
    install_openapi(app, settings)
    return app


def _spool(settings: Settings, metrics: Metrics) -> Spool | None:
    """The request spool in ``THALAMUS_HOME/spool`` when ``THALAMUS_SPOOL=on``."""
    if not settings.spool:
        return None

    def observe(seconds: float, rows: int) -> None:
        metrics.spool_commit.observe(seconds)
        metrics.spool_batch.observe(rows)

    return Spool(settings.spool_dir, on_commit=observe, on_wait=metrics.spool_wait.observe)
