"""Expert versions: register a fine-tuned candidate, approve, reject, activate, roll back.

As for routers (``jobs.promote``), a change of the active version is one transaction (the
``expert_versions`` statuses, the ``experts`` row's ``uri``/``version``/``content_hash``, a row in
``expert_activations``) plus a NOTIFY on the activation channel; daemons re-read the experts and
serve the new directory from the next request on. The ``experts`` row's version is the number its
computed loss rows carry, so activating another version makes the old rows stale (training reads
only the current version's rows; ``refresh_losses`` re-scores the prompts that have stale rows).

Every verb that activates a version first checks its directory: a Hugging Face model directory of
the expert's kind whose content hash is the one recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.errors import JobInputError
from store.queries import expert_by_name, notify_expert_activation
from store.schema import Expert, ExpertActivation, ExpertVersion, utcnow
from store.settings import Settings
from store.states import VersionStatus

LOCAL_KINDS = ("masked-lm", "causal-lm")
_UNDECIDED = (VersionStatus.CANDIDATE, VersionStatus.APPROVED)


def local_expert(session: Session, name: str) -> Expert:
    """The registered, active local expert ``name``; JobInputError naming what is wrong otherwise."""
    expert = expert_by_name(session, name)
    if expert is None:
        known = ", ".join(session.scalars(select(Expert.name).order_by(Expert.name)).all()) or "none"
        raise JobInputError(f"unknown expert {name!r}; registered experts: {known}")
    if expert.kind not in LOCAL_KINDS:
        raise JobInputError(f"expert {name!r} is {expert.kind}: only masked-lm and causal-lm experts run here, "
                            "so only they can be fine-tuned")
    if expert.status != "active":
        raise JobInputError(f"expert {name!r} is {expert.status}, not active")
    return expert


def ensure_base_version(session: Session, expert: Expert) -> ExpertVersion:
    """The ``expert_versions`` row of the expert's current version, created (active) when it has none."""
    row = version_row(session, expert.name, expert.version)
    if row is None:  # first fine-tune, or the expert was re-registered with another model since
        for other in session.scalars(select(ExpertVersion).where(ExpertVersion.expert == expert.name,
                                                                 ExpertVersion.status == VersionStatus.ACTIVE)):
            other.status = VersionStatus.RETIRED
        row = ExpertVersion(expert=expert.name, version=expert.version, parent_version=None, uri=expert.uri or "",
                            content_hash=str((expert.attributes or {}).get("content_hash") or ""),
                            status=VersionStatus.ACTIVE, training={"base": True}, metrics={})
        session.add(row)
        session.flush()
    return row


def version_row(session: Session, name: str, version: int, lock: bool = False) -> ExpertVersion | None:
    query = select(ExpertVersion).where(ExpertVersion.expert == name, ExpertVersion.version == version)
    return session.scalars(query.with_for_update() if lock else query).first()


def next_version(session: Session, name: str, current: int) -> int:
    """A number no version of ``name`` has used: above the current one and every recorded one."""
    highest = session.scalar(select(func.max(ExpertVersion.version)).where(ExpertVersion.expert == name))
    return max(current, int(highest or 0)) + 1


def register_candidate(session: Session, expert: Expert, version: int, uri: Path, digest: str,
                       training: dict[str, Any], metrics: dict[str, Any]) -> ExpertVersion:
    row = ExpertVersion(expert=expert.name, version=version, parent_version=expert.version, uri=str(uri),
                        content_hash=digest, status=VersionStatus.CANDIDATE, training=training, metrics=metrics)
    session.add(row)
    session.flush()
    return row


def versions(session: Session, name: str | None = None) -> list[ExpertVersion]:
    """Every recorded version (of one expert), by expert then version."""
    query = select(ExpertVersion).order_by(ExpertVersion.expert, ExpertVersion.version)
    if name is not None:
        query = query.where(ExpertVersion.expert == name)
    return list(session.scalars(query))


def _load_problem(expert: Expert, row: ExpertVersion) -> str | None:
    from experts.local import ExpertError, check_model_dir
    from experts.registry import content_hash

    try:
        path = check_model_dir(expert.name, expert.kind, row.uri)
    except ExpertError as exc:
        return str(exc)
    if row.content_hash and content_hash(path) != row.content_hash:
        return f"the files in {row.uri} no longer match the content hash recorded for version {row.version}"
    return None


def _target(session: Session, name: str, version: int) -> tuple[Expert, ExpertVersion]:
    expert = session.scalars(select(Expert).where(Expert.name == name).with_for_update()).first()
    if expert is None:
        raise JobInputError(f"unknown expert {name!r}")
    row = version_row(session, name, version, lock=True)
    if row is None:
        raise JobInputError(f"expert {name!r} has no version {version}")
    return expert, row


def activate(session: Session, expert: Expert, row: ExpertVersion, actor: str, reason: str) -> int:
    """Serve ``row`` for ``expert``: statuses, the experts row, the activation log, NOTIFY. Returns the previous."""
    problem = _load_problem(expert, row)
    if problem is not None:
        raise JobInputError(f"expert {expert.name!r} version {row.version} cannot be activated: {problem}")
    previous = ensure_base_version(session, expert)
    if previous.version != row.version:
        previous.status = VersionStatus.RETIRED
    row.status = VersionStatus.ACTIVE
    row.decided_by, row.decided_at = actor, utcnow()
    expert.uri, expert.version = row.uri, row.version
    expert.attributes = {**(expert.attributes or {}), "content_hash": row.content_hash}
    session.add(ExpertActivation(expert=expert.name, version=row.version, previous_version=previous.version,
                                 actor=actor, reason=reason))
    session.flush()
    notify_expert_activation(session, expert.name, row.version)
    return previous.version


def approve(session: Session, name: str, version: int, actor: str, reason: str = "approved") -> ExpertVersion:
    expert, row = _target(session, name, version)
    if row.status == VersionStatus.ACTIVE:
        raise JobInputError(f"expert {name!r} version {version} is already active")
    if row.status not in _UNDECIDED:
        raise JobInputError(f"expert {name!r} version {version} is {row.status}; only a candidate can be approved")
    activate(session, expert, row, actor, reason)
    return row


def reject(session: Session, name: str, version: int, actor: str, reason: str) -> ExpertVersion:
    if not reason.strip():
        raise JobInputError("a rejection needs a reason")
    _, row = _target(session, name, version)
    if row.status not in _UNDECIDED:
        raise JobInputError(f"expert {name!r} version {version} is {row.status}; only a candidate can be rejected")
    row.status, row.reason = VersionStatus.REJECTED, reason
    row.decided_by, row.decided_at = actor, utcnow()
    return row


def rollback(session: Session, name: str, actor: str, reason: str = "rollback") -> ExpertVersion:
    """Re-activate the version that was active before the current one."""
    expert = session.scalars(select(Expert).where(Expert.name == name).with_for_update()).first()
    if expert is None:
        raise JobInputError(f"unknown expert {name!r}")
    last = session.scalars(
        select(ExpertActivation).where(ExpertActivation.expert == name, ExpertActivation.version == expert.version)
        .order_by(ExpertActivation.id.desc())
    ).first()
    if last is None or last.previous_version is None or last.previous_version == expert.version:
        raise JobInputError(f"expert {name!r} version {expert.version} has no predecessor to roll back to")
    _, target = _target(session, name, last.previous_version)
    activate(session, expert, target, actor, reason)
    return target


def auto_approve_reason(settings: Settings, metrics: dict[str, Any]) -> str:
    """The policy (THALAMUS_FINETUNE_AUTO_APPROVE): approve when the 95 % interval of the mean
    (after − before) loss on the expert's own held-out routed prompts lies below 0, and the upper
    bound of that on the other experts' held-out prompts is at most THALAMUS_FINETUNE_MAX_FORGETTING
    (no other prompts: no forgetting to bound). Empty string: do not approve."""
    if not settings.finetune_auto_approve:
        return ""
    own, other = metrics.get("own") or {}, metrics.get("other")
    if not own or own["ci_high"] >= 0:
        return ""
    if other and other["ci_high"] > settings.finetune_max_forgetting:
        return ""
    forgetting = "no other prompts" if not other else f"other prompts' upper bound {other['ci_high']:+.4f}"
    return (f"auto-approved: own held-out loss change {own['diff']:+.4f} (95% CI upper bound {own['ci_high']:+.4f} "
            f"< 0), {forgetting} within {settings.finetune_max_forgetting:g}")
