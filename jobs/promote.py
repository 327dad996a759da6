"""Approve, activate, reject and roll back router versions. Activation is one transaction plus a NOTIFY.

Every verb that makes a version active first loads its bundle the way a daemon does, so a
version whose files were corrupted (or that never loaded) cannot be activated.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import JobInputError
from jobs.router_store import load_problem
from store.queries import active_router_version, notify_activation
from store.schema import Activation, RouterVersion, utcnow
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


def approve(session: Session, version_id: int, actor: str, reason: str = "approved") -> RouterVersion:
    version = _version(session, version_id)
    if version.status == VersionStatus.ACTIVE:
        raise JobInputError(f"router version {version_id} is already active")
    if version.status not in _UNDECIDED:
        hint = "; use `thalamus admin activate` to go back to it" if version.status == VersionStatus.RETIRED else ""
        raise JobInputError(f"router version {version_id} is {version.status}; only a candidate can be approved{hint}")
    _check_loadable(session, version)
    activate(session, version, actor, reason)
    return version


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
