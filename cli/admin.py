"""Router versions: list and show them, approve, activate, reject, roll back, run them as shadows.

Every change of the active version goes through ``jobs.promote`` (a load check of the bundle, one
transaction, a NOTIFY the daemons act on).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cli._common import CliError, Group, arg, positive_int, print_json, unit_share, verb
from store.schema import RouterVersion
from store.settings import Settings

if TYPE_CHECKING:
    from jobs.shadows import ShadowChange


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
    shadow: dict[str, Any] | None = None  # shadow_report(), filled by ``show``

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
        return dataclasses.replace(VersionInfo.of(version), shadow=_shadow_report(session, version))


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


@dataclass(frozen=True)
class ShadowOutcome:
    """What ``admin shadow`` changed: the version it started (or re-shared), or the shadows it stopped."""

    started: ShadowChange | None
    stopped: list[ShadowChange]


def shadow(settings: Settings, version_id: int | None = None, *, share: float | None = None, stop: bool = False,
           actor: str = "admin", reason: str | None = None) -> ShadowOutcome:
    """Make a candidate a shadow router: it routes a share of live requests off the response path and logs its choice.

    ``--stop`` stops the shadow ID, or every shadow without an ID. The default share is
    THALAMUS_SHADOW_SHARE. ``admin show ID`` reports a shadow's agreement with the served router and
    its estimated loss.
    """
    from jobs.shadows import start_shadow, stop_shadows
    from store.db import session_scope

    if stop:
        if share is not None:
            raise CliError("--share does not go with --stop")
        with session_scope(settings) as session:
            return ShadowOutcome(None, stop_shadows(session, version_id, actor=actor, reason=reason))
    if version_id is None:
        raise CliError("give the router version ID to run as a shadow, or --stop")
    with session_scope(settings) as session:
        change = start_shadow(session, version_id, settings.shadow_share if share is None else share,
                              actor=actor, reason=reason)
        return ShadowOutcome(change, [])


def _shadow_report(session: Any, version: RouterVersion) -> dict[str, Any] | None:
    from jobs.shadows import shadow_summary

    report = shadow_summary(session, version.id)
    if report is not None:
        report["share"] = version.shadow_share
    return report


def shadow_report(settings: Settings, version_id: int) -> dict[str, Any] | None:
    """The shadow section of ``admin show``: agreement and loss (``jobs.shadows.shadow_summary``) plus the
    current share (None: not a shadow now); None when the version has no shadow decisions."""
    from store.db import session_scope

    with session_scope(settings) as session:
        version = session.get(RouterVersion, version_id)
        if version is None:
            raise CliError(f"router version {version_id} does not exist")
        return _shadow_report(session, version)


def print_shadow_report(report: dict[str, Any]) -> None:
    """Print the shadow section for a person: rounded numbers with their 95 % intervals."""
    share = report.get("share")
    state = f"a shadow at share {share:g}" if share is not None else "not a shadow now"
    print(f"Shadow routing (router version {report['version']}, {state})")
    print(f"  decisions          {report['decisions']:,}  ({report['first_at'][:19]} to {report['last_at'][:19]})")
    agreement = report["agreement"]
    print(f"  agreement          {agreement['rate']:.3f}  [{agreement['low']:.3f}, {agreement['high']:.3f}]  "
          f"with the served router's choice, n={agreement['n']:,}")
    loss = report["loss"]
    if not loss["n"]:
        print("  loss               no labelled rows yet (no known loss for both choices of any shadowed prompt)")
    else:
        print(f"  mean loss on {loss['n']:,} labelled rows:")
        for label, key, sign in (("shadow", "shadow", ""), ("served", "served", ""),
                                 ("shadow - served", "difference", "+")):
            cell = loss[key]
            print(f"    {label:16} {cell['mean']:{sign}.4f}  [{cell['low']:{sign}.4f}, {cell['high']:{sign}.4f}]")
    chosen = ", ".join(f"{expert} {n:,}" for expert, n in report["chosen"].items())
    print(f"  shadow's choices   {chosen}")


def _show_version(version: VersionInfo) -> None:
    print_json(dataclasses.asdict(version))


def _show_shadow(outcome: ShadowOutcome) -> None:
    if outcome.started is not None:
        change = outcome.started
        was = "" if change.previous_share is None else f" (was {change.previous_share:g})"
        print(f"router version {change.version_id} is a shadow: it routes {change.share:g} of live requests{was}, "
              "off the response path")
    elif outcome.stopped:
        print("stopped shadow router version(s) " + ", ".join(str(c.version_id) for c in outcome.stopped))
    else:
        print("no shadow router was running")


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

GROUP = Group("admin", "router versions (list, show, approve, activate, reject, roll back, shadow)", (
    verb("versions", versions, show=_show_versions),
    verb("show", show, ID, show=_show_version),
    verb("approve", approve, ID, ACTOR, arg("--reason", default=None),
         show=_said("router version {id} approved and active")),
    verb("activate", activate, ID, ACTOR, arg("--reason", required=True),
         show=_said("router version {id} is active: {reason}")),
    verb("reject", reject, ID, ACTOR, arg("--reason", required=True),
         show=_said("router version {id} rejected: {reason}")),
    verb("rollback", rollback, ACTOR, arg("--reason", default=None),
         show=_said("rolled back: router version {id} is active again")),
    verb("shadow", shadow, arg("version_id", metavar="ID", type=positive_int, nargs="?", default=None,
                               help="router version id (a candidate or approved one)"),
         arg("--share", type=unit_share, default=None,
             help="share of live requests it routes, in (0, 1] (default THALAMUS_SHADOW_SHARE, 0.2)"),
         arg("--stop", action="store_true", help="stop the shadow ID, or every shadow without an ID"),
         ACTOR, arg("--reason", default=None), show=_show_shadow),
))
