"""Router versions: list and show them, approve, activate, reject, roll back.

Every change of the active version goes through ``jobs.promote`` (a load check of the bundle, one
transaction, a NOTIFY the daemons act on).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cli._common import CliError, Group, arg, positive_int, print_json, verb
from cli.expert_versions import VERBS as EXPERT_VERBS
from store.schema import RouterVersion
from store.settings import Settings


@dataclass(frozen=True)
class VersionInfo:
    id: int
    status: str
    parent: int | None
    checkpoint: str
    sha256: str
    experts: list[Any]
    training_window: dict[str, Any]
    metrics: dict[str, Any]
    decided_by: str | None
    decided_at: dt.datetime | None
    reason: str | None
    created_at: dt.datetime

    @classmethod
    def of(cls, v: RouterVersion) -> VersionInfo:
        return cls(v.id, v.status, v.parent_id, v.checkpoint_uri, v.checkpoint_sha256, list(v.expert_order),
                   dict(v.training_window or {}), dict(v.metrics or {}), v.decided_by, v.decided_at, v.reason,
                   v.created_at)

    @property
    def routed_loss(self) -> float | None:
        """The candidate's routed loss on the holdout when it was trained."""
        value = self.metrics.get("candidate", {}).get("routed_loss")
        return None if value is None else float(value)

    @property
    def hit_rate(self) -> float | None:
        value = self.metrics.get("candidate", {}).get("hit_rate")
        return None if value is None else float(value)


@dataclass(frozen=True)
class VersionChange:
    """A version after an admin decision, and the reason recorded for it."""

    version: VersionInfo
    reason: str


def versions(settings: Settings) -> list[VersionInfo]:
    """List router versions."""
    from sqlalchemy import select

    from store.db import session_scope

    with session_scope(settings) as session:
        return [VersionInfo.of(v) for v in session.scalars(select(RouterVersion).order_by(RouterVersion.id))]


def show(settings: Settings, version_id: int) -> VersionInfo:
    """Show one version: checkpoint, experts, training window, holdout metrics, decision."""
    from store.db import session_scope

    with session_scope(settings) as session:
        version = session.get(RouterVersion, version_id)
        if version is None:
            raise CliError(f"router version {version_id} does not exist")
        return VersionInfo.of(version)


def approve(settings: Settings, version_id: int, *, actor: str = "admin", reason: str | None = None) -> VersionChange:
    """Approve and activate a candidate."""
    from jobs.promote import approve as approve_version
    from store.db import session_scope

    reason = reason or "approved by admin"
    with session_scope(settings) as session:
        return VersionChange(VersionInfo.of(approve_version(session, version_id, actor=actor, reason=reason)), reason)


def activate(settings: Settings, version_id: int, *, reason: str, actor: str = "admin") -> VersionChange:
    """Activate any version that was not rejected (e.g. go back to a retired one)."""
    from jobs.promote import activate_version
    from store.db import session_scope

    with session_scope(settings) as session:
        return VersionChange(VersionInfo.of(activate_version(session, version_id, actor=actor, reason=reason)), reason)


def reject(settings: Settings, version_id: int, *, reason: str, actor: str = "admin") -> VersionChange:
    """Reject a candidate."""
    from jobs.promote import reject as reject_version
    from store.db import session_scope

    with session_scope(settings) as session:
        return VersionChange(VersionInfo.of(reject_version(session, version_id, actor=actor, reason=reason)), reason)


def rollback(settings: Settings, *, actor: str = "admin", reason: str | None = None) -> VersionChange:
    """Re-activate the previously active version."""
    from jobs.promote import rollback as roll_back
    from store.db import session_scope

    reason = reason or "rollback by admin"
    with session_scope(settings) as session:
        return VersionChange(VersionInfo.of(roll_back(session, actor=actor, reason=reason)), reason)


def _show_versions(rows: list[VersionInfo]) -> None:
    print(f"{'id':>4}  {'status':10} {'parent':>6}  {'created':19}  {'routed loss':>11}  {'hit rate':>8}")
    for v in rows:
        loss = "-" if v.routed_loss is None else f"{v.routed_loss:.4f}"
        hit = "-" if v.hit_rate is None else f"{v.hit_rate:.3f}"
        print(f"{v.id:>4}  {v.status:10} {v.parent or '-'!s:>6}  {v.created_at:%Y-%m-%d %H:%M:%S}  "
              f"{loss:>11}  {hit:>8}")


def _said(template: str) -> Callable[[VersionChange], None]:
    """A ``show`` that prints one line about a :class:`VersionChange`."""
    return lambda change: print(template.format(id=change.version.id, reason=change.reason))


ID = arg("version_id", metavar="ID", type=positive_int, help="router version id")
ACTOR = arg("--actor", default="admin", help="who decides (recorded with the activation)")

GROUP = Group("admin", "router and expert versions (list, show, approve, activate, reject, roll back)", (
    verb("versions", versions, show=_show_versions),
    verb("show", show, ID, show=lambda version: print_json(dataclasses.asdict(version))),
    verb("approve", approve, ID, ACTOR, arg("--reason", default=None),
         show=_said("router version {id} approved and active")),
    verb("activate", activate, ID, ACTOR, arg("--reason", required=True),
         show=_said("router version {id} is active: {reason}")),
    verb("reject", reject, ID, ACTOR, arg("--reason", required=True),
         show=_said("router version {id} rejected: {reason}")),
    verb("rollback", rollback, ACTOR, arg("--reason", default=None),
         show=_said("rolled back: router version {id} is active again")),
    *EXPERT_VERBS,  # cli/expert_versions.py: experts, expert-approve, expert-reject, expert-rollback
))
