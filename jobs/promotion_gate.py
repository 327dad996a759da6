"""The promotion gate: is a candidate better or worse than the active router, by an interval?

The basis is the off-policy doubly robust estimate of candidate − active on logged traffic
(``metrics["off_policy"]``, jobs/evaluate_candidate.py) when at least
``THALAMUS_GATE_MIN_LOGGED_ROWS`` logged requests back it, else the paired bootstrap interval of
the per-prompt routed-loss difference on the training holdout (``metrics["holdout_difference"]``,
jobs/train_router.py), else nothing. Numbers computed against another active version than the
current one are not used. Losses: below 0 is better.

* ``admin approve`` refuses a candidate whose interval lies above 0 (worse) unless forced with a reason.
* The auto-approve policy promotes only when the interval lies below 0 (better), or when no router is active.
  One exception: a **stale** active router, trained on expert versions that are no longer served (an
  expert changed: a detected regression bumped its version, a fine-tuned version was approved, or an
  expert joined that it cannot route to). Its beliefs describe experts that no longer exist, and the
  logged rows that could show it (rows at the current versions) are few right after the change, so
  the burden of proof flips: a candidate trained on the current versions is promoted unless its
  interval says it is worse.
  The same holds over an active router trained on no loss of an expert the candidate learnt
  (:func:`learnt_since`: the placeholder a new expert gets in the first head after its registration).
  A second exception: a candidate trained on at least ``THALAMUS_GATE_GROWTH`` times the prompts of any
  router that has served (the same recipe on a superset of the evidence, :func:`grown`) is promoted
  unless its interval says it is worse, provided there is an interval. Found by ``bench loop --scenario
  cold``: the DR intervals of candidate − active were ±0.15 to ±0.3 wide on a few hundred logged rows
  while successive candidates were truly better by 0.05 to 0.09 (the held-out truth, ±0.03), so the gate
  held seven better candidates in a row and the router trained on the first 500 requests served to the
  end, 0.087 below the best single expert.

Every verdict acted on is written to ``gate_decisions`` with its numbers (:func:`record`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.schema import Activation, GateDecision, RouterVersion

OFF_POLICY, HOLDOUT, NONE = "off-policy", "holdout", "none"
PROMOTE, HOLD, REFUSE, FORCED = "promote", "hold", "refuse", "forced"


@dataclass(frozen=True)
class Verdict:
    """What the gate says about a candidate now; ``difference`` is candidate − active with its 95 % interval."""

    basis: str
    difference: dict[str, float] | None
    n_rows: int
    active_version: int | None
    estimator: str | None = None  # "dr" on the off-policy basis, "routed_loss" on the holdout
    notes: list[str] = field(default_factory=list)

    @property
    def worse(self) -> bool:
        return self.difference is not None and self.difference["low"] > 0

    @property
    def better(self) -> bool:
        return self.difference is not None and self.difference["high"] < 0

    @property
    def word(self) -> str:
        """worse, better, undecided (the interval holds 0) or unknown (no basis)."""
        if self.difference is None:
            return "unknown"
        return "worse" if self.worse else "better" if self.better else "undecided"

    def describe(self) -> str:
        """One clause with the numbers, e.g. ``off-policy DR candidate − active on 812 logged requests:
        +0.0412 [+0.0201, +0.0633]``."""
        if self.difference is None:
            return "no estimate of candidate − active" + (f" ({'; '.join(self.notes)})" if self.notes else "")
        d = self.difference
        what = (f"off-policy DR candidate − active on {self.n_rows} logged requests" if self.basis == OFF_POLICY
                else f"holdout routed loss candidate − active on {self.n_rows} prompts")
        return f"{what}: {d['value']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

    def numbers(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "verdict": self.word}


def _interval(values: Mapping[str, Any] | None) -> dict[str, float] | None:
    if not values or any(values.get(k) is None for k in ("value", "low", "high")):
        return None
    return {k: float(values[k]) for k in ("value", "low", "high")}


def verdict(metrics: Mapping[str, Any], active_version: int | None, min_logged_rows: int) -> Verdict:
    """The gate's verdict from a candidate's stored metrics, against ``active_version`` (None: nothing active)."""
    if active_version is None:
        return Verdict(NONE, None, 0, None, notes=["no router is active"])
    notes: list[str] = []
    off = metrics.get("off_policy") or {}
    if not off:
        notes.append("no off-policy estimate yet (job evaluate_candidate)")
    elif off.get("active_version") != active_version:
        notes.append(f"the off-policy estimate compares with version {off.get('active_version')}, "
                     f"not the active {active_version}")
    elif int(off.get("n_rows") or 0) < min_logged_rows:
        notes.append(f"{int(off.get('n_rows') or 0)} logged requests, fewer than THALAMUS_GATE_MIN_LOGGED_ROWS "
                     f"({min_logged_rows})")
    else:
        interval = _interval((off.get("difference") or {}).get("dr"))
        if interval is not None:
            return Verdict(OFF_POLICY, interval, int(off["n_rows"]), active_version, "dr", notes)
        notes.append("the off-policy DR difference is undefined")
    holdout = metrics.get("holdout_difference") or {}
    interval = _interval(holdout)
    if not holdout or interval is None:
        notes.append("no holdout difference")
    elif holdout.get("active_version") != active_version:
        notes.append(f"the holdout difference compares with version {holdout.get('active_version')}, "
                     f"not the active {active_version}")
    else:
        return Verdict(HOLDOUT, interval, int(holdout.get("n_rows") or 0), active_version, "routed_loss", notes)
    return Verdict(NONE, None, 0, active_version, notes=notes)


def stale_experts(active_trained_on: Mapping[str, int] | None, current: Mapping[str, int]) -> list[str]:
    """What changed since the active router was trained, e.g. ``["api v1 → v2", "fresh (new)"]``.

    ``active_trained_on`` is its ``metrics["expert_versions"]`` (None for a router trained before they were
    recorded: never called stale). An expert retired since is not a change the candidate fixes."""
    if active_trained_on is None:
        return []
    changes = []
    for name, version in sorted(current.items()):
        before = active_trained_on.get(name)
        if before is None:
            changes.append(f"{name} (new)")
        elif int(before) != int(version):
            changes.append(f"{name} v{before} → v{version}")
    return changes


def learnt_since(active_rows: Mapping[str, int] | None, candidate_rows: Mapping[str, int]) -> list[str]:
    """Experts the active router was trained on no loss of and the candidate was, e.g.
    ``["fresh's first losses (24)"]``: the active router's head holds only a placeholder for them.

    Found by ``bench loop --scenario new-expert``: a new expert joins the head of the first router trained
    after its registration with a placeholder loss above every known mean (router/model.py,
    ``expand_experts``), because no request can be routed to it before a router knows it. That router was
    promoted (the expert was new to its parent); once the warm-up's losses came in (the expert was the
    best of the registry: mean loss 0.31 against 0.40), the candidate that had learnt it (it sent the
    expert half of the prompts) was held as undecided, and the placeholder router, which never sends the
    expert a request once the warm-up ends, served for the next 1,500 requests.
    ``active_rows`` is its ``metrics["expert_rows"]`` (None for a router trained before they were recorded)."""
    if active_rows is None:
        return []
    return [f"{name}'s first losses ({int(n)})" for name, n in sorted(candidate_rows.items())
            if int(n) > 0 and int(active_rows.get(name, 0)) == 0]


def grown(candidate_prompts: int | None, served_prompts: int | None, growth: float) -> str | None:
    """The reason's clause when the candidate's training set is ``growth`` times ``served_prompts`` (see
    :func:`most_prompts_served`) or more, e.g. ``trained on 1,600 prompts, at least 1.5× the 800 of any
    router that has served``; None otherwise (also when a count is unknown or ``growth`` is 0)."""
    if growth <= 0 or candidate_prompts is None or not served_prompts or served_prompts <= 0:
        return None
    if candidate_prompts < growth * served_prompts:
        return None
    return (f"trained on {candidate_prompts:,} prompts, at least {growth:g}× the {served_prompts:,} of any router "
            "that has served")


def most_prompts_served(session: Session) -> int | None:
    """The most prompts any router that was ever active had been trained on (None when none records it).

    Against the *active* router alone, an admin's rollback to an older, smaller router would let the
    next scheduled candidate through at once; against every router that has served, a rollback holds
    until the data has grown past what the rolled-back-from router knew."""
    activated = select(Activation.router_version_id).distinct()
    counts = [(metrics or {}).get("n_train") for metrics in
              session.scalars(select(RouterVersion.metrics).where(RouterVersion.id.in_(activated)))]
    known = [int(n) for n in counts if isinstance(n, (int, float))]
    return max(known) if known else None


def policy(v: Verdict, stale: Sequence[str] = (), growth: str | None = None) -> tuple[str, str]:
    """The auto-approve policy: (decision, reason). Promote only on an interval below 0, or with nothing
    active, or over a stale active router (``stale``: :func:`stale_experts`) unless the interval is above 0,
    or when the candidate was trained on a multiple of the served routers' evidence (``growth``: :func:`grown`) and
    there is an interval that is not above 0."""
    if v.active_version is None:
        return PROMOTE, "auto-approved: no router is active"
    if v.better:
        return PROMOTE, f"auto-approved: {v.describe()} lies below 0"
    if stale and not v.worse:
        return PROMOTE, (f"auto-approved: the active router was trained before {', '.join(stale)}, "
                         f"and {v.describe()} is not above 0")
    if growth and v.difference is not None and not v.worse:
        return PROMOTE, f"auto-approved: the candidate was {growth}, and {v.describe()} is not above 0"
    return HOLD, f"not auto-approved: {v.describe()} is not below 0"


def refusal(version_id: int, v: Verdict) -> str:
    """The one sentence ``admin approve`` answers when the gate refuses."""
    return (f"router version {version_id} is worse than the active version {v.active_version} "
            f"({v.describe()}, interval above 0), so it was not approved; "
            "pass --force --reason TEXT to approve it anyway")


def record(session: Session, version_id: int, v: Verdict, decision: str, actor: str,
           reason: str | None) -> GateDecision:
    """Append one ``gate_decisions`` row with the verdict's numbers."""
    row = GateDecision(router_version_id=version_id, active_version_id=v.active_version, decision=decision,
                       basis=v.basis, numbers=v.numbers(), actor=actor, reason=reason)
    session.add(row)
    session.flush()
    return row


def decisions(session: Session, version_id: int) -> list[GateDecision]:
    """Every recorded decision on a version, oldest first."""
    return list(session.scalars(select(GateDecision).where(GateDecision.router_version_id == version_id)
                                .order_by(GateDecision.id)))
