"""Expert versions (fine-tunes of local experts): list, approve, reject, roll back.

Part of the ``admin`` group (``thalamus admin experts``, ``admin expert-approve`` ...). Every change
of an expert's served version goes through ``jobs.expert_versions`` (a check of the directory, one
transaction, a NOTIFY the daemons act on).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cli._common import Arg, Verb, arg, positive_int, verb
from store.schema import ExpertVersion
from store.settings import Settings


@dataclass(frozen=True)
class ExpertVersionInfo:
    expert: str
    version: int
    parent: int | None
    status: str
    uri: str
    content_hash: str
    metrics: dict[str, Any]
    training: dict[str, Any]
    decided_by: str | None
    reason: str | None
    created_at: dt.datetime

    @classmethod
    def of(cls, v: ExpertVersion) -> ExpertVersionInfo:
        return cls(v.expert, v.version, v.parent_version, v.status, v.uri, v.content_hash, dict(v.metrics or {}),
                   dict(v.training or {}), v.decided_by, v.reason, v.created_at)


@dataclass(frozen=True)
class ExpertVersionChange:
    version: ExpertVersionInfo
    reason: str


def experts(settings: Settings, *, name: str | None = None) -> list[ExpertVersionInfo]:
    """List expert versions (fine-tuned candidates and the versions they came from) with their metrics."""
    from jobs.expert_versions import versions
    from store.db import session_scope

    with session_scope(settings) as session:
        return [ExpertVersionInfo.of(v) for v in versions(session, name)]


def approve(settings: Settings, name: str, version: int, *, actor: str = "admin",
            reason: str | None = None) -> ExpertVersionChange:
    """Approve a candidate expert version and serve it."""
    from jobs.expert_versions import approve as approve_version
    from store.db import session_scope

    reason = reason or "approved by admin"
    with session_scope(settings) as session:
        row = approve_version(session, name, version, actor=actor, reason=reason)
        return ExpertVersionChange(ExpertVersionInfo.of(row), reason)


def reject(settings: Settings, name: str, version: int, *, reason: str, actor: str = "admin") -> ExpertVersionChange:
    """Reject a candidate expert version."""
    from jobs.expert_versions import reject as reject_version
    from store.db import session_scope

    with session_scope(settings) as session:
        return ExpertVersionChange(ExpertVersionInfo.of(reject_version(session, name, version, actor=actor,
                                                                       reason=reason)), reason)


def rollback(settings: Settings, name: str, *, actor: str = "admin", reason: str | None = None) -> ExpertVersionChange:
    """Serve the expert's previously active version again."""
    from jobs.expert_versions import rollback as roll_back
    from store.db import session_scope

    reason = reason or "rollback by admin"
    with session_scope(settings) as session:
        return ExpertVersionChange(ExpertVersionInfo.of(roll_back(session, name, actor=actor, reason=reason)), reason)


def _change(numbers: dict[str, Any] | None) -> str:
    if not numbers:
        return "-"
    return f"{numbers['before']:.3f}→{numbers['after']:.3f} [{numbers['ci_low']:+.3f},{numbers['ci_high']:+.3f}]"


def _show(rows: list[ExpertVersionInfo]) -> None:
    print(f"{'expert':20} {'ver':>4} {'parent':>6}  {'status':9}  {'created':19}  {'own loss (95% CI of change)':34}  "
          "other experts' prompts")
    for v in rows:
        own, other = _change(v.metrics.get("own")), _change(v.metrics.get("other"))
        print(f"{v.expert[:20]:20} {v.version:>4} {v.parent or '-'!s:>6}  {v.status:9}  "
              f"{v.created_at:%Y-%m-%d %H:%M:%S}  {own:34}  {other}")


def _said(template: str) -> Callable[[ExpertVersionChange], None]:
    return lambda change: print(template.format(name=change.version.expert, version=change.version.version,
                                                reason=change.reason))


NAME = arg("name", metavar="EXPERT", help="the expert's name")
VERSION = arg("version", metavar="VERSION", type=positive_int, help="the expert version")
ACTOR: Arg = arg("--actor", default="admin", help="who decides (recorded with the activation)")

VERBS: tuple[Verb, ...] = (
    verb("experts", experts, arg("--name", default=None, help="only this expert's versions"), show=_show),
    verb("expert-approve", approve, NAME, VERSION, ACTOR, arg("--reason", default=None),
         show=_said("expert {name} version {version} approved and served")),
    verb("expert-reject", reject, NAME, VERSION, ACTOR, arg("--reason", required=True),
         show=_said("expert {name} version {version} rejected: {reason}")),
    verb("expert-rollback", rollback, NAME, ACTOR, arg("--reason", default=None),
         show=_said("rolled back: expert {name} serves version {version} again")),
)
