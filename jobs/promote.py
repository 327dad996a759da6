"""Approve, activate, reject and roll back router versions. Activation is one transaction plus a NOTIFY.

Every verb that makes a version active first loads its bundle the way a daemon does, so a
version whose files were corrupted (or that never loaded) cannot be activated. ``approve`` also asks
the promotion gate (jobs/promotion_gate.py): a candidate whose interval says it is worse than the
active router is refused unless forced with a reason.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import promotion_gate as gate
from jobs.errors import JobInputError
from jobs.router_store import load_problem
from store.db import session_scope
from store.queries import active_router_version, notify_activation
from store.schema import Activation, RouterVersion, utcnow
from store.settings import Settings
from store.states import VersionStatus

_UNDECIDED = (VersionStatus.CANDIDATE, VersionStatus.APPROVED)


def _version(session: Session, version_id: int) -> RouterVersion:
    version = session.get(RouterVersion, version_id, with_for_update=True)
    if version is None:
        raise JobInputError(f"router version {version_id} does not exist")
    return version


def _check_loadable(session: Session, version: RouterVersion) -> None:
    problem = load_problem(session, version)
    if problem is not None:
        raise JobInputError(f"router version {version.id} cannot be activated because its bundle does not load: "
                            f"{problem}")


def activate(session: Session, version: RouterVersion, actor: str, reason: str) -> RouterVersion | None:
    """Make ``version`` the active one; retire the previous one; log and notify. Returns the previous."""
    previous = active_router_version(session)
    if previous is not None and previous.id == version.id:
        return previous
    if previous is not None:
        previous.status = VersionStatus.RETIRED
    version.status = VersionStatus.ACTIVE
    version.decided_by, version.decided_at = actor, utcnow()
    version.shadow_share = None  # an active version is no longer a shadow
    session.flush()
    session.add(Activation(router_version_id=version.id, previous_version_id=previous.id if previous else None,
                           actor=actor, reason=reason))
    notify_activation(session, version.id)
    return previous


class GateRefused(JobInputError):
    """The gate says the candidate is worse than the active router; nothing was activated."""

    def __init__(self, version_id: int, verdict: gate.Verdict) -> None:
        super().__init__(gate.refusal(version_id, verdict))
        self.version_id, self.verdict = version_id, verdict


def approve(session: Session, version_id: int, actor: str, reason: str = "approved", *, force: bool = False,
            min_logged_rows: int | None = None) -> RouterVersion:
    """Activate a candidate if the gate does not say it is worse (``force`` overrides, with a reason).

    The gate's verdict is recorded in ``gate_decisions`` (``promote`` or ``forced``); a refusal raises
    :class:`GateRefused` before anything is written (see :func:`approve_gated` to record it too).
    """
    if force and not reason.strip():
        raise JobInputError("forcing an approval past the gate needs a reason")
    version = _version(session, version_id)
    if version.status == VersionStatus.ACTIVE:
        raise JobInputError(f"router version {version_id} is already active")
    if version.status not in _UNDECIDED:
        hint = "; use `thalamus admin activate` to go back to it" if version.status == VersionStatus.RETIRED else ""
        raise JobInputError(f"router version {version_id} is {version.status}; only a candidate can be approved{hint}")
    active = active_router_version(session)
    rows = min_logged_rows if min_logged_rows is not None else Settings.model_fields["gate_min_logged_rows"].default
    verdict = gate.verdict(version.metrics or {}, active.id if active is not None else None, rows)
    if verdict.worse and not force:
        raise GateRefused(version_id, verdict)
    _check_loadable(session, version)
    gate.record(session, version.id, verdict, gate.FORCED if verdict.worse else gate.PROMOTE, actor, reason)
    activate(session, version, actor, reason)
    return version


def approve_gated(settings: Settings, version_id: int, actor: str, reason: str = "approved", *,
                  force: bool = False) -> RouterVersion:
    """:func:`approve` in its own transaction; a refusal is recorded in ``gate_decisions`` (and nothing else)
    before :class:`GateRefused` is raised again."""
    try:
        with session_scope(settings) as session:
            return approve(session, version_id, actor, reason, force=force,
                           min_logged_rows=settings.gate_min_logged_rows)
    except GateRefused as refused:
        with session_scope(settings) as session:
            gate.record(session, version_id, refused.verdict, gate.REFUSE, actor, reason)
        raise


def activate_version(session: Session, version_id: int, actor: str, reason: str) -> RouterVersion:
    """Make any version that was not rejected the active one (a candidate, or a retired one to go back to)."""
    if not reason.strip():
        raise JobInputError("an activation needs a reason")
    version = _version(session, version_id)
    if version.status == VersionStatus.ACTIVE:
        raise JobInputError(f"router version {version_id} is already active")
    if version.status == VersionStatus.REJECTED:
        raise JobInputError(f"router version {version_id} was rejected ({version.reason}), so it cannot be activated")
    _check_loadable(session, version)
    activate(session, version, actor, reason)
    return version


def reject(session: Session, version_id: int, actor: str, reason: str) -> RouterVersion:
    if not reason.strip():
        raise JobInputError("a rejection needs a reason")
    version = _version(session, version_id)
    if version.status not in _UNDECIDED:
        raise JobInputError(f"router version {version_id} is {version.status}; only a candidate can be rejected")
    version.status, version.reason = VersionStatus.REJECTED, reason
    version.shadow_share = None  # nor is a rejected one
    version.decided_by, version.decided_at = actor, utcnow()
    return version


def rollback(session: Session, actor: str, reason: str = "rollback") -> RouterVersion:
    """Re-activate the version that was active before the current one."""
    current = active_router_version(session)
    if current is None:
        raise JobInputError("no router version is active, so there is nothing to roll back")
    last = session.scalars(
        select(Activation).where(Activation.router_version_id == current.id).order_by(Activation.id.desc())
    ).first()
    if last is None or last.previous_version_id is None:
        raise JobInputError(f"router version {current.id} has no predecessor to roll back to")
    target = _version(session, last.previous_version_id)
    _check_loadable(session, target)
    activate(session, target, actor, reason)
    return target
