"""Silent regressions of external experts, found in the request log, and the loss rows they make stale.

An upstream model behind an external expert can get worse (or better) while its name and URL stay
the same: nothing bumps its version, so the router keeps training on losses that no longer hold and
keeps sending it traffic. The request log has what is needed to notice: every served request
carries the router's predicted losses, and feedback brings the observed loss. For each external
expert, over the feedback rows at its current version in the order the requests were served, the
residual ``observed − predicted`` should not jump. A change point is the split that maximises the
standardised difference of mean residuals (a CUSUM-style scan, both sides ≥ ``min_rows``); it is a
regression (or an improvement) when

- that difference is significant: Welch's z, two-sided p, multiplied by the number of splits the scan
  tried (Bonferroni: the scan reports the best of them, so an unadjusted p is far too small), is below
  ``p_value``. Unadjusted, a stationary series of 0/1 losses (dcrouter's) crossed p < 1e-4 on 0.4-1.1 %
  of checks (n = 100-500, 30 rows a side; one check per expert per training), mostly at a split 30 rows
  from the end; in a ``bench loop`` run with labelled feedback that "improvement" of gemma-2-9b-it left
  26 lucky rows at its new version, the next router sent it 92 % of traffic at a true loss 0.10 worse.
  Adjusted: 0-0.1 % of checks; and
- it exceeds ``min_shift`` residual standard deviations after subtracting the same period's shift of
  the *other* experts' residuals (a control: new kinds of prompts move every expert's residuals;
  a regression moves one).

Residuals are only compared when the **same router version** predicted them: a hot-swap changes the
predictions (a cold start's constants become a trained router's estimates), which moves every
residual without any expert changing. So the series of an expert is its rows at its current
version predicted by the router that predicted its newest row, and the control uses the other
experts' rows of that router too. (Found by ``bench loop --scenario cold``: every swap away from
the cold start was read as a "regression" of the experts it had mispredicted.)

A detected shift bumps the expert's version, exactly as re-registering a changed expert does: its
older loss rows become stale, the next training sees only the new regime, and the residual series
restarts (so the same shift is never found twice). Local experts are skipped: their weights are
content-hashed, so they cannot change silently.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.schema import Expert, ExpertLoss, Feedback
from store.schema import Request as RequestRow

log = logging.getLogger(__name__)

MAX_ROWS = 50_000
"""Newest feedback rows read per check: bounds the cost on a long-lived deployment."""


@dataclass(frozen=True)
class Shift:
    """A change of one expert's residuals at ``at`` (the first request of the new regime)."""

    expert: str
    version: int  # the version whose rows became stale
    at: dt.datetime
    n_before: int
    n_after: int
    before: float  # mean residual (observed − predicted loss) before the change
    after: float
    control: float  # the other experts' mean residual shift over the same split
    z: float
    p_value: float  # two-sided, adjusted for the splits scanned (Bonferroni)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


def change_point(residuals: np.ndarray, min_rows: int) -> tuple[int, float] | None:
    """(split index, Welch z) of the split with the largest standardised mean difference, or None
    when the series is too short for ``min_rows`` on each side."""
    n = len(residuals)
    if n < 2 * min_rows:
        return None
    cumsum = np.cumsum(residuals)
    cumsq = np.cumsum(residuals**2)
    best: tuple[int, float] | None = None
    for k in range(min_rows, n - min_rows + 1):
        n1, n2 = k, n - k
        m1, m2 = cumsum[k - 1] / n1, (cumsum[-1] - cumsum[k - 1]) / n2
        v1 = max(cumsq[k - 1] / n1 - m1**2, 0.0) * n1 / max(n1 - 1, 1)
        v2 = max((cumsq[-1] - cumsq[k - 1]) / n2 - m2**2, 0.0) * n2 / max(n2 - 1, 1)
        z = (m2 - m1) / math.sqrt(max(v1 / n1 + v2 / n2, 1e-12))
        if best is None or abs(z) > abs(best[1]):
            best = (k, float(z))
    return best


Row = tuple[dt.datetime, float, int, int | None]
"""(served at, residual, expert version, router version that predicted it)."""


def _series(session: Session) -> dict[str, list[Row]]:
    """{expert: [row, ...]} in serving order, from feedback joined to requests."""
    rows = session.execute(
        select(Feedback.payload, RequestRow.created_at, RequestRow.predicted_losses, RequestRow.router_version_id)
        .join(RequestRow, RequestRow.id == Feedback.request_id)
        .order_by(Feedback.id.desc()).limit(MAX_ROWS)
    ).all()
    series: dict[str, list[Row]] = defaultdict(list)
    for payload, served_at, predicted, router_version in rows:
        name, loss, version = payload.get("expert"), payload.get("loss"), payload.get("expert_version")
        guess = (predicted or {}).get(name)
        if name is None or loss is None or version is None or guess is None:
            continue
        series[name].append((_aware(served_at), float(loss) - float(guess), int(version), router_version))
    for values in series.values():
        values.sort(key=lambda item: item[0])
    return series


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _control_shift(series: dict[str, list[Row]], expert: str, at: dt.datetime, router_version: int | None,
                   min_rows: int) -> float:
    """Mean residual after ``at`` minus before, over every other expert's rows predicted by the same
    router version; 0 when too few to tell."""
    others = [(t, r) for name, rows in series.items() if name != expert
              for t, r, _, predictor in rows if predictor == router_version]
    before = [r for t, r in others if t < at]
    after = [r for t, r in others if t >= at]
    if len(before) < min_rows or len(after) < min_rows:
        return 0.0
    return float(np.mean(after) - np.mean(before))


def detect(session: Session, *, min_rows: int, p_value: float, min_shift: float) -> list[Shift]:
    """Every external expert whose residuals changed at its current version (see the module docstring)."""
    experts = {e.name: e for e in session.scalars(select(Expert).where(Expert.status == "active"))}
    series = _series(session)
    found = []
    for name, rows in series.items():
        expert = experts.get(name)
        if expert is None or expert.kind != "external":
            continue
        at_version = [row for row in rows if row[2] == expert.version]
        if not at_version:
            continue
        predictor = at_version[-1][3]  # the router that predicted the newest row
        current = [(t, r) for t, r, _, by in at_version if by == predictor]
        residuals = np.array([r for _, r in current])
        split = change_point(residuals, min_rows)
        if split is None:
            continue
        k, z = split
        splits = len(residuals) - 2 * min_rows + 1  # every split change_point scanned
        p = min(1.0, math.erfc(abs(z) / math.sqrt(2.0)) * splits)
        before, after = float(residuals[:k].mean()), float(residuals[k:].mean())
        at = current[k][0]
        control = _control_shift(series, name, at, predictor, min_rows)
        scale = float(residuals[:k].std(ddof=1)) or 1e-12
        if p < p_value and abs((after - before) - control) >= min_shift * scale:
            found.append(Shift(name, int(expert.version), at, k, len(residuals) - k, before, after, control, z, p))
    return found


def make_stale(session: Session, shifts: list[Shift]) -> None:
    """Bump each shifted expert's version: its loss rows from before the change become stale, as for a
    changed expert; the rows reported since the change move to the new version (they describe it)."""
    for shift in shifts:
        expert = session.scalars(select(Expert).where(Expert.name == shift.expert).with_for_update()).one()
        if expert.version != shift.version:
            continue  # someone re-registered it meanwhile: its rows are already stale
        expert.version = shift.version + 1
        since = [row_id for row_id, created in session.execute(
            select(ExpertLoss.id, ExpertLoss.created_at).where(
                ExpertLoss.expert == shift.expert, ExpertLoss.expert_version == shift.version,
                ExpertLoss.source == "reported"))
            if _aware(created) >= shift.at]
        for start in range(0, len(since), 500):
            session.execute(update(ExpertLoss).where(ExpertLoss.id.in_(since[start : start + 500]))
                            .values(expert_version=expert.version))
        log.warning("expert %s: residuals moved from %+.3f to %+.3f (control %+.3f, z %.1f) at %s; "
                    "version %d → %d, so its older loss rows no longer train the router",
                    shift.expert, shift.before, shift.after, shift.control, shift.z, shift.at.isoformat(),
                    shift.version, expert.version)
    session.flush()
