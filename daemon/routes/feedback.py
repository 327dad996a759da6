"""``POST /v1/feedback``: a reported loss for a served request, idempotent on ``idempotency_key``.

With auth on, only the application whose request it was (its key's ``app``) or an admin key may post
feedback for it (403 otherwise, nothing written); the feedback's ``app`` is the key's.

The loss may be for the expert that served the request (bandit feedback) or for any other expert the
application evaluated on the same prompt (full-information data): either becomes a ``reported`` row
of the loss table for that expert and prompt, which training reads as an observed cell.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from daemon.auth import PrincipalDep
from daemon.deps import MetricsDep, SettingsDep, WriterDep
from daemon.logwriter import RequestLogWriter
from daemon.schemas import FeedbackRequest, FeedbackResponse, error_responses
from store.db import session_scope
from store.loss_bounds import loss_problem, max_loss
from store.queries import expert_by_name, insert_feedback, upsert_losses
from store.schema import Request as RequestRow
from store.settings import Settings

router = APIRouter()


@router.post("/v1/feedback", status_code=202, response_model=FeedbackResponse,
             responses=error_responses(400, 403, 404, 422, 503))
def feedback(body: FeedbackRequest, settings: SettingsDep, writer: WriterDep, metrics: MetricsDep,
             principal: PrincipalDep) -> dict[str, Any]:
    """Record a reported loss for a served request (idempotent on ``idempotency_key``)."""
    request = _find_request(settings, writer, body.request_id)
    if request is None:
        raise HTTPException(404, f"unknown request_id {body.request_id!r}")
    if principal.authenticated and not principal.is_admin and request["app"] != principal.app:
        metrics.auth_failures.labels("owner").inc()
        raise HTTPException(403, f"request {body.request_id} was made by another application; only its own "
                                 "application (or an admin key) may post feedback for it")
    app = principal.app_or(body.app)
    name = body.expert or request.get("served_by") or request["expert"]
    loss = body.effective_loss
    key = body.idempotency_key or f"{body.request_id}:{name}"
    with session_scope(settings) as session:
        expert = expert_by_name(session, name)
        if expert is None:
            raise HTTPException(422, f"unknown expert {name!r}; registered experts are listed by GET /v1/status")
        problem = loss_problem(loss, max_loss(expert.attributes, settings.max_loss))
        if problem is not None:
            raise HTTPException(422, f"{problem} for expert {name!r}")
        # ``served``: bandit feedback for the expert that answered (``served_by`` when the gateway retried on
        # another expert), or full-information data on another expert the application evaluated.
        served = request.get("served_by") or request["expert"]
        payload = {**body.model_dump(exclude_none=True), "app": app, "expert": name,
                   "expert_version": expert.version, "loss": loss, "served": name == served}
        fresh = insert_feedback(session, key, app, body.request_id, payload)
        if fresh:
            upsert_losses(session, [{"prompt_hash": request["prompt_hash"], "expert": name,
                                     "expert_version": expert.version, "loss": loss, "source": "reported"}])
    return {"status": "accepted" if fresh else "duplicate", "idempotency_key": key, "expert": name, "loss": loss}


def _find_request(settings: Settings, writer: RequestLogWriter, request_id: str) -> dict[str, Any] | None:
    """The logged request, waiting for the log writer if it still holds it.

    Read, then (if the writer still holds it) flush, then read again: the second read also finds a row
    the writer committed between the first read and the pending check, which a 404 would have denied.
    """
    found = _read_request(settings, request_id)
    if found is not None:
        return found
    if writer.pending(request_id) is not None:
        writer.flush(timeout=10.0)
    return _read_request(settings, request_id)


def _read_request(settings: Settings, request_id: str) -> dict[str, Any] | None:
    with session_scope(settings) as session:
        row = session.get(RequestRow, request_id)
        if row is None:
            return None
        return {"expert": row.expert, "prompt_hash": row.prompt_hash, "app": row.app, "served_by": row.served_by}
