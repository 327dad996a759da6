"""Router versions: list and show them, approve, activate, reject, roll back, run them as shadows.

Every change of the active version goes through ``jobs.promote`` (a load check of the bundle, one
transaction, a NOTIFY the daemons act on). ``approve`` asks the promotion gate first
(jobs/promotion_gate.py). ``show`` is a report for a person, built from :data:`SECTIONS` (each
collects its data in one session and renders it as lines; ``--json`` prints the data): add a
section by appending one :class:`Section`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cli._common import CliError, Group, arg, positive_int, print_json, unit_share, verb
from store.schema import RouterVersion
from store.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

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
    gate: str | None = None  # the last promotion-gate decision on it (``versions`` fills it)

    @classmethod
    def of(cls, v: RouterVersion, gate: str | None = None) -> VersionInfo:
        return cls(v.id, v.status, v.parent_id, v.checkpoint_uri, v.checkpoint_sha256, list(v.expert_order),
                   dict(v.training_window or {}), dict(v.metrics or {}), v.decided_by, v.decided_at, v.reason,
                   v.created_at, gate)

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
    from store.schema import GateDecision

    with session_scope(settings) as session:
        last = {row.router_version_id: row.decision for row in session.scalars(select(GateDecision)
                                                                                .order_by(GateDecision.id))}
        return [VersionInfo.of(v, last.get(v.id)) for v in session.scalars(select(RouterVersion)
                                                                            .order_by(RouterVersion.id))]


@dataclass(frozen=True)
class Section:
    """One part of ``admin show``: its data (JSON-able, read in the report's session) and its lines."""

    name: str
    collect: Callable[[Session, RouterVersion, Settings], Any]
    render: Callable[[Any], list[str]]


@dataclass(frozen=True)
class VersionReport:
    """``admin show``: the version and each section's data; printed as tables, or as JSON with ``--json``."""

    version: VersionInfo
    sections: dict[str, Any]
    as_json: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"version": dataclasses.asdict(self.version), **self.sections}


def show(settings: Settings, version_id: int, *, as_json: bool = False) -> VersionReport:
    """Show one version: holdout metrics beside its parent's, off-policy estimates, the gate's decisions."""
    from store.db import session_scope

    with session_scope(settings) as session:
        version = session.get(RouterVersion, version_id)
        if version is None:
            raise CliError(f"router version {version_id} does not exist")
        return VersionReport(VersionInfo.of(version), {s.name: s.collect(session, version, settings) for s in SECTIONS},
                             as_json)


# ---- the report's sections ------------------------------------------------------------------

def _num(value: Any, digits: int = 4) -> str:
    """A rounded number for a person: ``-`` for none, never 16 digits."""
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def _interval(values: dict[str, Any] | None, signed: bool = False) -> str:
    if not values or values.get("value") is None:
        return "-"
    sign = "+" if signed else ""
    text = f"{values['value']:{sign}.4f}"
    if values.get("low") is not None and values.get("high") is not None:
        text += f" [{values['low']:{sign}.4f}, {values['high']:{sign}.4f}]"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ",
           left: Sequence[int] = (0,)) -> list[str]:
    """Aligned columns: numbers right-aligned, the ``left`` columns (words) left-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return indent + "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), *(line(r) for r in rows)]


HOLDOUT_METRICS = (("routed_loss", "routed loss"), ("regret", "regret"), ("hit_rate", "hit rate"),
                   ("gap_captured", "gap captured"), ("best_single_loss", "best single loss"),
                   ("oracle_loss", "oracle loss"), ("loss_mae", "loss MAE"), ("mean_params", "mean params"),
                   ("n_rows", "prompts"))


def _collect_holdout(session: Session, version: RouterVersion, settings: Settings) -> dict[str, Any]:
    metrics = version.metrics or {}
    return {"candidate": metrics.get("candidate") or {}, "parent": metrics.get("active") or {},
            "parent_version": metrics.get("active_version"), "difference": metrics.get("holdout_difference"),
            "n_holdout": metrics.get("n_holdout")}


def _metric(metrics: dict[str, Any], key: str) -> str:
    return _num(metrics.get(key), 0 if key == "n_rows" else 4)  # n_rows is a count stored as a float


def _render_holdout(data: dict[str, Any]) -> list[str]:
    candidate, parent = data["candidate"], data["parent"]
    if not candidate:
        return ["holdout: no metrics (this version was not trained by train_router)"]
    parent_name = f"parent v{data['parent_version']}" if data["parent_version"] else "parent"
    rows = [[label, _metric(candidate, key), _metric(parent, key) if parent else "-"]
            for key, label in HOLDOUT_METRICS if key in candidate or key in parent]
    lines = [f"holdout ({_num(data['n_holdout'])} prompts kept out of training; metrics on those with every "
             "expert's loss)", *_table(["metric", "this version", parent_name], rows)]
    if data["difference"]:
        d = data["difference"]
        lines.append(f"  routed loss − {parent_name}: {_interval(d, signed=True)} (95 % paired bootstrap, "
                     f"{d.get('n_rows')} prompts)")
    return lines


def _collect_off_policy(session: Session, version: RouterVersion, settings: Settings) -> dict[str, Any] | None:
    return (version.metrics or {}).get("off_policy")


def _render_off_policy(data: dict[str, Any] | None) -> list[str]:
    if not data:
        return ["off-policy: not evaluated yet (thalamus jobs run evaluate_candidate --param version=ID)"]
    head = (f"off-policy ({data['n_rows']} logged requests on {data.get('n_prompts', '-')} holdout prompts, "
            f"{data.get('explored_rows', 0)} explored; vs active v{data.get('active_version') or '-'})")
    if not data["n_rows"] or not data.get("candidate"):
        return [head, "  no logged request has a loss for its served expert on a holdout prompt yet"]
    candidate, active, difference = data["candidate"], data.get("active") or {}, data.get("difference") or {}
    rows = [[name.upper(), _interval(candidate.get(name)), _interval(active.get(name)),
             _interval(difference.get(name), signed=True)] for name in ("ips", "snips", "dr")]
    rows.append(["ESS", _num(candidate.get("ess"), 1), _num(active.get("ess"), 1), ""])
    rows.append(["support", _num(candidate.get("support"), 3), _num(active.get("support"), 3), ""])
    lines = [head, *_table(["estimate (95 %)", "this version", "active", "this − active"], rows)]
    extra = [f"logged mean loss {_num(data.get('logged_mean_loss'))}"]
    if data.get("agreement") is not None:
        extra.append(f"agrees with the active router on {100 * data['agreement']:.1f} % of requests")
    return [*lines, "  " + "; ".join(extra)]


def _collect_gate(session: Session, version: RouterVersion, settings: Settings) -> dict[str, Any]:
    from jobs import promotion_gate as gate
    from store.queries import active_router_version

    active = active_router_version(session)
    now = gate.verdict(version.metrics or {}, active.id if active is not None else None,
                       settings.gate_min_logged_rows)
    return {"now": now.numbers(), "now_text": now.describe(),
            "decisions": [{"at": d.at, "actor": d.actor, "decision": d.decision, "basis": d.basis,
                           "active_version": d.active_version_id, "numbers": d.numbers, "reason": d.reason}
                          for d in gate.decisions(session, version.id)]}


def _render_gate(data: dict[str, Any]) -> list[str]:
    now = data["now"]
    lines = [f"gate now: {now['verdict']} on the {now['basis']} basis — {data['now_text']}"]
    if not data["decisions"]:
        return [*lines, "  no decision recorded"]
    rows = [[f"{d['at']:%Y-%m-%d %H:%M:%S}", d["actor"], d["decision"], d["basis"],
             _interval((d["numbers"] or {}).get("difference"), signed=True), (d["reason"] or "")[:70]]
            for d in data["decisions"]]
    return [*lines, *_table(["at", "actor", "decision", "basis", "this − active", "reason"], rows,
                            left=(0, 1, 2, 3, 5))]


def _collect_shadow(session: Session, version: RouterVersion, settings: Settings) -> dict[str, Any] | None:
    return _shadow_report(session, version)


def _render_shadow(data: dict[str, Any] | None) -> list[str]:
    return [] if data is None else shadow_lines(data)


SECTIONS: list[Section] = [
    Section("holdout", _collect_holdout, _render_holdout),
    Section("off_policy", _collect_off_policy, _render_off_policy),
    Section("gate", _collect_gate, _render_gate),
    Section("shadow", _collect_shadow, _render_shadow),
]
"""The report's sections in order."""


def _header(v: VersionInfo) -> list[str]:
    lines = [f"router version {v.id}: {v.status}, parent {v.parent or '-'}, created {v.created_at:%Y-%m-%d %H:%M:%S}",
             f"  experts: {', '.join(str(e) for e in v.experts)}"]
    window = v.training_window
    if window:
        lines.append("  trained on " + ", ".join(f"{key} {_num(value)}" for key, value in window.items()))
    if v.decided_by:
        when = f" at {v.decided_at:%Y-%m-%d %H:%M:%S}" if v.decided_at else ""
        lines.append(f"  decided by {v.decided_by}{when}" + (f": {v.reason}" if v.reason else ""))
    lines.append(f"  checkpoint {v.checkpoint} (sha256 {v.sha256[:12]}…)")
    return lines


def _show_report(report: VersionReport) -> None:
    if report.as_json:
        print_json(report.to_json())
        return
    blocks = [_header(report.version)] + [s.render(report.sections[s.name]) for s in SECTIONS
                                           if s.name in report.sections]
    blocks = [block for block in blocks if block]
    print("\n\n".join("\n".join(block) for block in blocks))


def approve(settings: Settings, version_id: int, *, actor: str = "admin", reason: str | None = None,
            force: bool = False) -> VersionChange:
    """Approve and activate a candidate, unless the promotion gate says it is worse (``--force --reason``)."""
    from jobs.promote import approve_gated

    if force and not (reason or "").strip():
        raise CliError("--force needs --reason TEXT saying why the gate is overridden; nothing was approved")
    reason = reason or "approved by admin"
    version = approve_gated(settings, version_id, actor=actor, reason=reason, force=force)
    return VersionChange(VersionInfo.of(version), reason)


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


def shadow_lines(report: dict[str, Any]) -> list[str]:
    """The shadow section for a person: rounded numbers with their 95 % intervals."""
    share = report.get("share")
    state = f"a shadow at share {share:g}" if share is not None else "not a shadow now"
    lines = [f"Shadow routing (router version {report['version']}, {state})",
             f"  decisions          {report['decisions']:,}  ({report['first_at'][:19]} to {report['last_at'][:19]})"]
    agreement = report["agreement"]
    lines.append(f"  agreement          {agreement['rate']:.3f}  [{agreement['low']:.3f}, {agreement['high']:.3f}]  "
                 f"with the served router's choice, n={agreement['n']:,}")
    loss = report["loss"]
    if not loss["n"]:
        lines.append("  loss               no labelled rows yet "
                     "(no known loss for both choices of any shadowed prompt)")
    else:
        lines.append(f"  mean loss on {loss['n']:,} labelled rows:")
        for label, key, sign in (("shadow", "shadow", ""), ("served", "served", ""),
                                 ("shadow - served", "difference", "+")):
            cell = loss[key]
            lines.append(f"    {label:16} {cell['mean']:{sign}.4f}  "
                         f"[{cell['low']:{sign}.4f}, {cell['high']:{sign}.4f}]")
    chosen = ", ".join(f"{expert} {n:,}" for expert, n in report["chosen"].items())
    lines.append(f"  shadow's choices   {chosen}")
    return lines


def print_shadow_report(report: dict[str, Any]) -> None:
    """Print the shadow section (``shadow_lines``)."""
    print("\n".join(shadow_lines(report)))


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
    print(f"{'id':>4}  {'status':10} {'parent':>6}  {'created':19}  {'routed loss':>11}  {'hit rate':>8}  "
          f"{'DR − active':>11}  gate")
    for v in rows:
        loss = "-" if v.routed_loss is None else f"{v.routed_loss:.4f}"
        hit = "-" if v.hit_rate is None else f"{v.hit_rate:.3f}"
        dr = ((v.metrics.get("off_policy") or {}).get("difference") or {}).get("dr") or {}
        diff = "-" if dr.get("value") is None else f"{dr['value']:+.4f}"
        print(f"{v.id:>4}  {v.status:10} {v.parent or '-'!s:>6}  {v.created_at:%Y-%m-%d %H:%M:%S}  "
              f"{loss:>11}  {hit:>8}  {diff:>11}  {v.gate or '-'}")


def _said(template: str) -> Callable[[VersionChange], None]:
    """A ``show`` that prints one line about a :class:`VersionChange`."""
    return lambda change: print(template.format(id=change.version.id, reason=change.reason))


ID = arg("version_id", metavar="ID", type=positive_int, help="router version id")
ACTOR = arg("--actor", default="admin", help="who decides (recorded with the activation)")

GROUP = Group("admin", "router versions (list, show, approve, activate, reject, roll back, shadow)", (
    verb("versions", versions, show=_show_versions),
    verb("show", show, ID, arg("--json", dest="as_json", action="store_true", help="print the full data as JSON"),
         show=_show_report),
    verb("approve", approve, ID, ACTOR, arg("--reason", default=None),
         arg("--force", action="store_true",
             help="approve even when the promotion gate says it is worse (needs --reason)"),
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
