"""What a daemon says about itself: ``GET /v1/status``, ``GET /healthz`` and ``GET /metrics``."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import func, select

from daemon.deps import HolderDep, MetricsDep, ProbeDep, SettingsDep, ShadowsDep, WriterDep
from daemon.metrics import CONTENT_TYPE_LATEST
from daemon.schemas import ExpertStatus, HealthResponse, StatusResponse, error_responses
from store.db import session_scope
from store.queries import active_experts, active_router_version
from store.schema import ExpertLoss, Feedback
from store.schema import Request as RequestRow

router = APIRouter()


@router.get("/v1/status", response_model=StatusResponse, responses=error_responses(503))
def status(settings: SettingsDep, holder: HolderDep, writer: WriterDep, shadows: ShadowsDep) -> dict[str, Any]:
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
        "inference": loaded.inference if loaded else None,
        "pid": os.getpid(),  # which server process answered (THALAMUS_WORKERS > 1 runs several)
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
        "explore": {**settings.explore_policy.as_dict(), "loss_scale": loaded.loss_scale if loaded else None,
                    "opt_out_apps": list(settings.explore_opt_out_apps)},
        "shadows": shadows.status(),
        "shadow_queue": {"depth": shadows.depth, "capacity": shadows.capacity, "last_error": shadows.last_error},
    }


@router.get("/healthz", response_model=HealthResponse,
            responses={503: {"model": HealthResponse, "description": "No router is loaded yet."}})
def healthz(holder: HolderDep, probe: ProbeDep) -> JSONResponse:
    """503 until a router is loaded; then 200, ``degraded`` while the database is unreachable (routing works)."""
    loaded = holder.current
    if loaded is None:
        return JSONResponse({"status": "starting", "detail": holder.last_error or "no router loaded yet"}, 503)
    problem = probe.problem()
    if problem is not None:
        return JSONResponse({"status": "degraded", "router_version": loaded.version_id, "detail": problem})
    return JSONResponse({"status": "ok", "router_version": loaded.version_id})


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format 0.0.4.",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def prometheus(metrics: MetricsDep, writer: WriterDep) -> Response:
    """Prometheus text exposition."""
    body = metrics.render()
    if writer.metrics is not metrics:
        body += writer.metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
