"""The admin HTTP API (``admin`` scope): router versions, job runs, experts, API keys.

Each endpoint calls the function its ``thalamus`` verb calls (``cli/admin.py``, ``cli/jobs.py``,
``cli/experts.py``, ``cli/keys.py``): there is no second implementation. Decisions are recorded with
the calling key's application as the actor. Bad input is 404 (no such version or job) or 409 (the
version is not in a state that allows it), one sentence, nothing written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from cli import admin, experts, jobs
from cli._common import CliError
from daemon.auth import Principal, PrincipalDep
from daemon.deps import SettingsDep
from daemon.schemas import Text, _TextRule, error_responses

router = APIRouter(prefix="/v1/admin", tags=["admin"])

VersionId = Path(ge=1, le=2**31 - 1, description="router version id")


class Decision(_TextRule):
    reason: Text | None = Field(None, min_length=1, max_length=2000)


class Approval(Decision):
    force: bool = Field(False, description="approve although the promotion gate refuses (needs a reason)")


class Activation(_TextRule):
    reason: Text = Field(min_length=1, max_length=2000)


class JobTrigger(_TextRule):
    params: dict[str, Any] = Field(default_factory=dict, description="job parameters, as `--param KEY=VALUE`")


class Change(BaseModel):
    version: admin.VersionInfo
    reason: str
    actor: str


class Queued(BaseModel):
    run: int
    kind: str
    status: str


def _actor(principal: Principal) -> str:
    return principal.app if principal.authenticated and principal.app else "admin"


@contextlib.contextmanager
def _as_http() -> Iterator[None]:
    """The verbs' one-sentence errors as HTTP: no such thing → 404, not allowed in this state → 409."""
    from jobs.errors import JobInputError, JobLocked

    try:
        yield
    except CliError as exc:
        raise HTTPException(404, str(exc)) from None
    except JobInputError as exc:
        status = 404 if "does not exist" in str(exc) or str(exc).startswith("unknown job") else 409
        raise HTTPException(status, str(exc)) from None
    except JobLocked as exc:
        raise HTTPException(409, str(exc)) from None


def _change(change: admin.VersionChange, actor: str) -> dict[str, Any]:
    return {"version": change.version, "reason": change.reason, "actor": actor}


@router.get("/versions", response_model=list[admin.VersionInfo], responses=error_responses(503))
def list_versions(settings: SettingsDep, principal: PrincipalDep) -> list[admin.VersionInfo]:
    """Router versions, oldest first (``thalamus admin versions``)."""
    return admin.versions(settings)


@router.get("/versions/{version_id}", response_model=dict[str, Any], responses=error_responses(404, 422, 503))
def show_version(settings: SettingsDep, principal: PrincipalDep, version_id: int = VersionId) -> dict[str, Any]:
    """One router version's report: the version, holdout, off-policy estimates, gate (``admin show --json``)."""
    with _as_http():
        return admin.show(settings, version_id, as_json=True).to_json()


_DECISION_ERRORS = error_responses(400, 404, 409, 422, 503)


@router.post("/versions/{version_id}/approve", response_model=Change, responses=_DECISION_ERRORS)
def approve(settings: SettingsDep, principal: PrincipalDep, body: Approval | None = None,
            version_id: int = VersionId) -> dict[str, Any]:
    """Approve and activate a candidate unless the promotion gate refuses it; every daemon hot-swaps to it
    (``thalamus admin approve``)."""
    actor, body = _actor(principal), body or Approval()
    with _as_http():
        return _change(admin.approve(settings, version_id, actor=actor, reason=body.reason, force=body.force), actor)


@router.post("/versions/{version_id}/activate", response_model=Change, responses=_DECISION_ERRORS)
def activate(settings: SettingsDep, principal: PrincipalDep, body: Activation,
             version_id: int = VersionId) -> dict[str, Any]:
    """Activate a version that was not rejected, e.g. a retired one (``thalamus admin activate``)."""
    actor = _actor(principal)
    with _as_http():
        return _change(admin.activate(settings, version_id, reason=body.reason, actor=actor), actor)


@router.post("/versions/{version_id}/reject", response_model=Change, responses=_DECISION_ERRORS)
def reject(settings: SettingsDep, principal: PrincipalDep, body: Activation,
           version_id: int = VersionId) -> dict[str, Any]:
    """Reject a candidate (``thalamus admin reject``)."""
    actor = _actor(principal)
    with _as_http():
        return _change(admin.reject(settings, version_id, reason=body.reason, actor=actor), actor)


@router.post("/rollback", response_model=Change, responses=error_responses(400, 409, 422, 503))
def rollback(settings: SettingsDep, principal: PrincipalDep, body: Decision | None = None) -> dict[str, Any]:
    """Re-activate the previously active version (``thalamus admin rollback``)."""
    actor = _actor(principal)
    with _as_http():
        return _change(admin.rollback(settings, actor=actor, reason=body.reason if body else None), actor)


@router.get("/jobs", response_model=list[jobs.RunLine], responses=error_responses(422, 503))
def list_runs(settings: SettingsDep, principal: PrincipalDep, request: Request,
              limit: int = Query(20, ge=1, le=1000)) -> list[jobs.RunLine]:
    """Recent job runs, newest first (``thalamus jobs list``)."""
    unknown = sorted(set(request.query_params) - {"limit"})
    if unknown:  # a misspelt parameter is not silently ignored
        raise HTTPException(422, f"unknown query parameter {unknown[0]!r}; the only one is 'limit'")
    return jobs.list_runs(settings, limit=limit)


@router.post("/jobs/{name}", status_code=202, response_model=Queued, responses=error_responses(400, 404, 422, 503))
def trigger(settings: SettingsDep, principal: PrincipalDep, name: str = Path(min_length=1, max_length=60),
            body: JobTrigger | None = None) -> dict[str, Any]:
    """Queue a job run on the workers and return its id (``thalamus jobs run NAME --no-wait``)."""
    with _as_http():
        outcome = jobs.run(settings, name, params=body.params if body else {}, wait=False)
    return {"run": outcome.run, "kind": outcome.kind, "status": outcome.status}


@router.get("/experts", response_model=list[experts.ExpertInfo], responses=error_responses(503))
def list_experts(settings: SettingsDep, principal: PrincipalDep) -> list[experts.ExpertInfo]:
    """Active experts (``thalamus experts list``)."""
    return experts.list_experts(settings)
