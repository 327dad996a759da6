"""The HTTP API: route, infer, feedback, status, health and metrics.

Routing is CPU-bound torch, so the endpoints are plain ``def`` functions that FastAPI runs in its
threadpool. Each request reads ``holder.current`` once and finishes on that bundle even if a swap
happens meanwhile. Bad input is rejected before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.health import DATABASE_ERRORS, DatabaseProbe, unavailable_response
from daemon.holder import Decision, LoadedRouter, RouterHolder
from daemon.logwriter import RequestLogWriter
from daemon.metrics import CONTENT_TYPE_LATEST, Metrics
from daemon.schemas import (
    ExpertStatus,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    InferRequest,
    InferResponse,
    RouteRequest,
    RouteResponse,
    StatusResponse,
    error_responses,
)
from daemon.spool import Spool, SpoolError
from router.hashing import Salt, stable_fraction
from store.db import session_scope
from store.loss_bounds import loss_problem, max_loss
from store.queries import active_experts, active_router_version, expert_by_name, insert_feedback, upsert_losses
from store.schema import ExpertLoss, Feedback, Request as RequestRow, utcnow
from store.settings import Settings
from store.text import printable

log = logging.getLogger(__name__)

_ENDPOINTS = ("/v1/route", "/v1/infer", "/v1/feedback", "/v1/status", "/healthz", "/metrics")
_BOOTSTRAP_WAIT_SECONDS = 120.0


def create_app(settings: Settings, holder: RouterHolder | None = None,
               writer: RequestLogWriter | None = None) -> FastAPI:
    """The daemon's ASGI app; its lifespan bootstraps a router, starts the watcher and the log writer."""
    from router.constraints import validate_lambdas

    validate_lambdas(settings.default_lambdas)  # a misconfigured default fails at start-up, not per request
    holder = holder or RouterHolder(settings)
    writer = writer or RequestLogWriter(settings, metrics=holder.metrics, spool=_spool(settings, holder.metrics))
    metrics = holder.metrics
    probe = DatabaseProbe(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        writer.start()
        await run_in_threadpool(_bootstrap, settings, holder)
        holder.start()
        try:
            yield
        finally:
            holder.stop()
            probe.close()
            await run_in_threadpool(writer.close)

    app = FastAPI(title="thalamus", version="0.1.0", lifespan=lifespan)
    app.state.settings, app.state.holder, app.state.writer = settings, holder, writer
    app.add_middleware(_CountRequests, metrics=metrics)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for error in (*DATABASE_ERRORS, SpoolError):
        app.add_exception_handler(error, unavailable_response)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    experts = _expert_cache()

    def routed(body: RouteRequest) -> tuple[LoadedRouter, str, dict[str, float], Decision, float]:
        prompt, lambdas = _prompt_and_lambdas(settings, body)
        loaded = holder.current
        if loaded is None:
            raise HTTPException(503, f"no router is loaded yet: {holder.last_error or 'starting up'}")
        started = time.perf_counter()
        decision = loaded.route(prompt, lambdas)
        seconds = time.perf_counter() - started
        metrics.route_latency.observe(seconds)
        return loaded, prompt, lambdas, decision, 1000 * seconds

    def answer(body: RouteRequest, loaded: LoadedRouter, prompt: str, lambdas: dict[str, float],
               decision: Decision, latency_ms: float) -> dict[str, Any]:
        """Log the decision (asynchronously) and build the response body."""
        request_id = str(uuid.uuid4())
        sampled = _sampled(prompt, settings.label_share)
        writer.submit({
            "id": request_id, "created_at": utcnow(), "prompt": prompt, "lambdas": lambdas,
            "router_version_id": loaded.version_id, "expert": decision.expert,
            "predicted_losses": decision.predicted, "propensity": 1.0, "sampled": sampled,
            "latency_ms": latency_ms, "app": body.app,
        })
        metrics.chosen.labels(decision.expert).inc()
        return {"request_id": request_id, "expert": decision.expert, "predicted_losses": decision.predicted,
                "objective": decision.objective, "router_version": loaded.version_id, "lambdas": lambdas,
                "sampled": sampled, "propensity": 1.0, "latency_ms": round(latency_ms, 3)}

    @app.post("/v1/route", response_model=RouteResponse, responses=error_responses(400, 422, 503))
    def route(body: RouteRequest) -> dict[str, Any]:
        """Choose the expert: argmin of predicted loss + Σ λ·constraint."""
        return answer(body, *routed(body))

    @app.post("/v1/infer", response_model=InferResponse, responses=error_responses(400, 409, 422, 503))
    def infer(body: InferRequest) -> dict[str, Any]:
        """Route, then run the chosen local expert (fill-mask or generation)."""
        from experts.local import LOCAL_KINDS, ExpertError

        loaded, prompt, lambdas, decision, latency_ms = routed(body)
        info = loaded.expert(decision.expert)
        if info is None or not info.registered:
            raise HTTPException(409, f"expert {decision.expert!r} is not registered, so it cannot run here")
        if info.kind not in LOCAL_KINDS or not info.uri:
            raise HTTPException(409, f"expert {decision.expert!r} is {info.kind}: call it yourself (use "
                                     "POST /v1/route to choose) and report its loss with POST /v1/feedback")
        try:
            output = experts.get(info.name, info.kind, info.uri, info.version or 1).infer(
                prompt, max_new_tokens=body.max_new_tokens)
        except ExpertError as exc:
            raise HTTPException(422, f"expert {decision.expert!r} cannot answer: {exc}") from None
        return {**answer(body, loaded, prompt, lambdas, decision, latency_ms), "output": output}

    @app.post("/v1/feedback", status_code=202, response_model=FeedbackResponse,
              responses=error_responses(400, 404, 422, 503))
    def feedback(body: FeedbackRequest) -> dict[str, Any]:
        """Record a reported loss for a served request (idempotent on ``idempotency_key``)."""
        request = _find_request(settings, writer, body.request_id)
        if request is None:
            raise HTTPException(404, f"unknown request_id {body.request_id!r}")
        name = body.expert or request["expert"]
        loss = body.effective_loss
        key = body.idempotency_key or f"{body.request_id}:{name}"
        with session_scope(settings) as session:
            expert = expert_by_name(session, name)
            if expert is None:
                raise HTTPException(422, f"unknown expert {name!r}; registered experts are listed by GET /v1/status")
            problem = loss_problem(loss, max_loss(expert.attributes, settings.max_loss))
            if problem is not None:
                raise HTTPException(422, f"{problem} for expert {name!r}")
            payload = {**body.model_dump(exclude_none=True), "expert": name, "expert_version": expert.version,
                       "loss": loss}
            fresh = insert_feedback(session, key, body.app, body.request_id, payload)
            if fresh:
                upsert_losses(session, [{"prompt_hash": request["prompt_hash"], "expert": name,
                                         "expert_version": expert.version, "loss": loss, "source": "reported"}])
        return {"status": "accepted" if fresh else "duplicate", "idempotency_key": key, "expert": name, "loss": loss}

    @app.get("/v1/status", response_model=StatusResponse, responses=error_responses(503))
    def status() -> dict[str, Any]:
        """What is served, what the database says is active, counts, and the log writer's state."""
        loaded, fallback = holder.current, holder.fallback
        with session_scope(settings) as session:
            active = active_router_version(session)
            registered = active_experts(session)
            counts = {
                "requests": session.scalar(select(func.count()).select_from(RequestRow)) or 0,
                "loss_rows": session.scalar(select(func.count()).select_from(ExpertLoss)) or 0,
                "feedback": session.scalar(select(func.count()).select_from(Feedback)) or 0,
            }
            active_id = active.id if active is not None else None
        in_router = set(loaded.expert_names) if loaded else set()
        listed = [ExpertStatus(name=e.name, kind=e.kind, version=e.version, status=e.status,
                               attributes=dict(e.attributes or {}), in_router=e.name in in_router)
                  for e in registered]
        names = {e.name for e in registered}
        listed += [ExpertStatus(name=i.name, kind=i.kind, version=i.version, status=i.status,
                                attributes=dict(i.attributes), in_router=True)
                   for i in (loaded.experts if loaded else ()) if i.name not in names]
        return {
            "router_version": loaded.version_id if loaded else None,
            "router_sha256": loaded.sha256 if loaded else None,
            "loaded_at": _iso(loaded.loaded_at if loaded else None),
            "active_in_db": active_id,
            "serving_fallback": fallback is not None,
            "active_load_error": fallback.error if fallback is not None else None,
            "last_checked_at": _iso(holder.last_checked_at),
            "last_swap_error": holder.last_error,
            "last_swap_error_at": _iso(holder.last_error_at),
            "swaps": holder.swaps, "swap_failures": holder.failures, "listening": holder.listening,
            "experts": listed, "counts": counts,
            "writer": {"queue_depth": writer.depth, "written": writer.written, "dropped": writer.dropped,
                       "last_error": writer.last_error,
                       "spooled": writer.spool.depth if writer.spool is not None else None},
            "default_lambdas": dict(settings.default_lambdas), "label_share": settings.label_share,
        }

    @app.get("/healthz", response_model=HealthResponse,
             responses={503: {"model": HealthResponse, "description": "No router is loaded yet."}})
    def healthz() -> JSONResponse:
        """503 until a router is loaded; then 200, ``degraded`` while the database is unreachable (routing works)."""
        loaded = holder.current
        if loaded is None:
            return JSONResponse({"status": "starting", "detail": holder.last_error or "no router loaded yet"}, 503)
        problem = probe.problem()
        if problem is not None:
            return JSONResponse({"status": "degraded", "router_version": loaded.version_id, "detail": problem})
        return JSONResponse({"status": "ok", "router_version": loaded.version_id})

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format 0.0.4.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def prometheus() -> Response:
        """Prometheus text exposition."""
        body = metrics.render()
        if writer.metrics is not metrics:
            body += writer.metrics.render()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


# -- request handling helpers ------------------------------------------------------------------


def _prompt_and_lambdas(settings: Settings, body: RouteRequest) -> tuple[str, dict[str, float]]:
    """The prompt with flags stripped and the λ in force: request > flags > defaults. Raises 422."""
    from router.constraints import LambdaError, validate_lambdas
    from router.flags import FlagError, parse_flags

    raw = body.prompt
    if not raw.strip():
        raise HTTPException(422, "prompt is empty")
    if len(raw) > settings.max_prompt_chars:
        raise HTTPException(422, f"prompt has {len(raw)} characters; the limit is {settings.max_prompt_chars}")
    try:
        prompt, flagged = parse_flags(raw)
    except FlagError as exc:
        raise HTTPException(422, str(exc)) from None
    if not prompt.strip():
        raise HTTPException(422, "prompt is empty once its flags are removed")
    try:
        requested = validate_lambdas(body.lambdas or {})
    except LambdaError as exc:
        raise HTTPException(422, f"lambdas: {exc}") from None
    return prompt, {**validate_lambdas(settings.default_lambdas), **flagged, **requested}


def _sampled(prompt: str, share: float) -> bool:
    """Deterministic per prompt: the same text is always sampled for labels, or never."""
    if share <= 0:
        return False
    return stable_fraction(prompt, salt=Salt.LABEL_SAMPLE) < share


def _find_request(settings: Settings, writer: RequestLogWriter, request_id: str) -> dict[str, Any] | None:
    """The logged request, waiting for the log writer if it still holds it."""
    for attempt in range(2):
        with session_scope(settings) as session:
            row = session.get(RequestRow, request_id)
            if row is not None:
                return {"expert": row.expert, "prompt_hash": row.prompt_hash}
        if attempt == 0 and writer.pending(request_id) is None:
            return None
        writer.flush(timeout=10.0)
    return None


def _spool(settings: Settings, metrics: Metrics) -> Spool | None:
    """The request spool in ``THALAMUS_HOME/spool`` when ``THALAMUS_SPOOL=on``."""
    if not settings.spool:
        return None

    def observe(seconds: float, rows: int) -> None:
        metrics.spool_commit.observe(seconds)
        metrics.spool_batch.observe(rows)

    return Spool(settings.spool_dir, on_commit=observe, on_wait=metrics.spool_wait.observe)


def _expert_cache() -> Any:
    from experts.local import ExpertCache

    return ExpertCache()


def _bootstrap(settings: Settings, holder: RouterHolder) -> None:
    """Make sure a router version is active (cold start if none), then load it."""
    from jobs.bootstrap import ensure_active_router
    from jobs.errors import JobInputError, JobLocked

    deadline = time.monotonic() + _BOOTSTRAP_WAIT_SECONDS
    while True:
        try:
            ensure_active_router(settings)
            break
        except JobLocked:  # another daemon is creating the cold-start router
            if time.monotonic() > deadline:
                log.error("gave up waiting for another process to create the cold-start router")
                break
            time.sleep(1.0)
        except JobInputError as exc:
            holder.last_error = str(exc)
            log.error("cannot start routing yet: %s", exc)
            break
        except Exception:
            log.exception("creating the cold-start router failed; the watcher will keep looking for one")
            break
    holder.load_active()


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's document, plus what only the settings know: the prompt length limit."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
        for name in ("RouteRequest", "InferRequest"):
            prompt = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {}).get("prompt")
            if prompt is not None:
                prompt["maxLength"] = settings.max_prompt_chars
        app.openapi_schema = schema
    return app.openapi_schema


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    """One readable sentence in ``detail`` (plus the structured errors); 400 for malformed JSON."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    parts, malformed = [], False
    for error in errors:
        loc = [printable(p) for p in error.get("loc", ()) if p != "body"]
        message = printable(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            malformed = True
            message = f"malformed JSON: {error.get('ctx', {}).get('error', message)}"
            loc = []
        elif error.get("type") == "missing" and not loc:
            message = "a JSON object body is required"
        parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
    brief = [{"type": str(e.get("type")), "loc": [printable(p) for p in e.get("loc", ())],
              "msg": printable(e.get("msg", ""))} for e in errors]
    body = {"detail": "; ".join(parts) or "invalid request", "errors": brief}
    return JSONResponse(body, status_code=400 if malformed else 422)


class _CountRequests:
    """Pure ASGI middleware: count responses by endpoint and status code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
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

