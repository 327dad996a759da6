"""Shadow routers: start and stop them, and report how a shadow compares with the router that served.

A shadow is a candidate (or approved) version with ``router_versions.shadow_share`` set: every
daemon also routes that share of live requests with it, off the response path, and logs its choice
in ``shadow_decisions`` (``daemon/shadow.py``). Who started or stopped a shadow, when and why is
appended to the version's ``metrics["shadow_log"]``; the change is NOTIFYed like an activation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.errors import JobInputError
from store.queries import notify_shadows
from store.schema import Expert, ExpertLoss, RouterVersion, ShadowDecision, utcnow
from store.schema import Request as RequestRow
from store.states import VersionStatus

log = logging.getLogger(__name__)

SHADOW_STATUSES = (VersionStatus.CANDIDATE, VersionStatus.APPROVED)
"""Versions that may be shadows: not yet decided. Activating or rejecting one ends its shadow."""

CONFIDENCE = 0.95
_Z95 = 1.959963984540054
_BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class ShadowChange:
    """One version's shadow share before and after a start or stop (None: not a shadow)."""

    version_id: int
    previous_share: float | None
    share: float | None


def check_share(share: float) -> float:
    """The share of live requests a shadow routes: in (0, 1]."""
    if not math.isfinite(share) or not 0 < share <= 1:
        raise JobInputError(f"the shadow share must be in (0, 1], got {share:g}")
    return float(share)


def start_shadow(session: Session, version_id: int, share: float, actor: str,
                 reason: str | None = None) -> ShadowChange:
    """Make a candidate or approved version a shadow routing ``share`` of live requests (or change its share).

    Its bundle must load the way a daemon loads it, so a shadow that cannot be served is refused here.
    """
    from jobs.router_store import load_problem  # imports torch

    share = check_share(share)
    version = session.get(RouterVersion, version_id, with_for_update=True)
    if version is None:
        raise JobInputError(f"router version {version_id} does not exist")
    if version.status not in SHADOW_STATUSES:
        raise JobInputError(f"router version {version_id} is {version.status}; only a candidate or an approved "
                            "version can be a shadow")
    problem = load_problem(session, version)
    if problem is not None:
        raise JobInputError(f"router version {version_id} cannot be a shadow because its bundle does not load: "
                            f"{problem}")
    previous = version.shadow_share
    version.shadow_share = share
    _record(version, "start" if previous is None else "share", share, actor, reason)
    notify_shadows(session, version.id)
    log.info("router version %s is a shadow at share %g (was %s), by %s: %s", version.id, share, previous, actor,
             reason)
    return ShadowChange(version.id, previous, share)


def stop_shadows(session: Session, version_id: int | None, actor: str, reason: str | None = None) -> list[ShadowChange]:
    """Stop one shadow (``version_id``), or every shadow when it is None; returns what was stopped."""
    if version_id is not None:
        version = session.get(RouterVersion, version_id, with_for_update=True)
        if version is None:
            raise JobInputError(f"router version {version_id} does not exist")
        if version.shadow_share is None:
            raise JobInputError(f"router version {version_id} is not a shadow")
        targets = [version]
    else:
        targets = list(session.scalars(select(RouterVersion).where(RouterVersion.shadow_share.is_not(None))
                                       .order_by(RouterVersion.id).with_for_update()))
    changes = []
    for version in targets:
        changes.append(ShadowChange(version.id, version.shadow_share, None))
        version.shadow_share = None
        _record(version, "stop", None, actor, reason)
        notify_shadows(session, version.id)
        log.info("router version %s is no longer a shadow, by %s: %s", version.id, actor, reason)
    return changes


def _record(version: RouterVersion, event: str, share: float | None, actor: str, reason: str | None) -> None:
    """Append who did what when to ``metrics["shadow_log"]`` (a new dict, so the JSON column is written)."""
    metrics = dict(version.metrics or {})
    entry = {"event": event, "share": share, "actor": actor, "reason": reason, "at": utcnow().isoformat()}
    metrics["shadow_log"] = [*metrics.get("shadow_log", []), entry]
    version.metrics = metrics


# --- the report -------------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_means(columns: Sequence[np.ndarray], resamples: int = _BOOTSTRAP_RESAMPLES,
                    seed: int = 0) -> list[tuple[float, float]]:
    """Percentile bootstrap 95 % intervals of each column's mean, resampling rows together (paired)."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))
    alpha = (1 - CONFIDENCE) / 2
    intervals = []
    for column in columns:
        means = np.asarray(column, dtype=np.float64)[index].mean(axis=1)
        low, high = np.quantile(means, [alpha, 1 - alpha])
        intervals.append((float(low), float(high)))
    return intervals


def _labelled_losses(session: Session, hashes: set[str]) -> dict[tuple[str, str], float]:
    """Loss of (prompt, expert) for the expert's current version: the mean of its computed and reported losses."""
    found: dict[tuple[str, str], float] = {}
    ordered = sorted(hashes)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        rows = session.execute(
            select(ExpertLoss.prompt_hash, ExpertLoss.expert, func.avg(ExpertLoss.loss))
            .join(Expert, (Expert.name == ExpertLoss.expert) & (Expert.version == ExpertLoss.expert_version))
            .where(ExpertLoss.prompt_hash.in_(chunk))
            .group_by(ExpertLoss.prompt_hash, ExpertLoss.expert)
        ).all()
        for prompt_hash, expert, loss in rows:
            if loss is not None and math.isfinite(float(loss)):
                found[(prompt_hash, expert)] = float(loss)
    return found


def _mean_with_interval(values: np.ndarray, interval: tuple[float, float]) -> dict[str, float]:
    return {"mean": float(values.mean()), "low": interval[0], "high": interval[1]}


def shadow_summary(session: Session, version_id: int) -> dict[str, Any] | None:
    """How shadow ``version_id`` compares with the routers that served the same requests; None without decisions.

    ``agreement``: the share of its decisions that chose the served expert (Wilson 95 % interval).
    ``loss``: on labelled rows — requests whose prompt has a known loss (computed or reported, for the
    expert's current version) for both the shadow's and the served expert — the mean loss of the
    shadow's choice and of the served choice, and their paired difference (shadow − served), each
    with a 95 % percentile-bootstrap interval (2,000 resamples, seeded).
    """
    rows = session.execute(
        select(ShadowDecision.expert, ShadowDecision.served_expert, RequestRow.prompt_hash,
               ShadowDecision.created_at)
        .outerjoin(RequestRow, RequestRow.id == ShadowDecision.request_id)
        .where(ShadowDecision.router_version_id == version_id)
        .order_by(ShadowDecision.id)
    ).all()
    if not rows:
        return None
    n = len(rows)
    agree = sum(1 for expert, served, _, _ in rows if expert == served)
    low, high = wilson_interval(agree, n)
    losses = _labelled_losses(session, {h for _, _, h, _ in rows if h is not None})
    shadow_losses, served_losses = [], []
    for expert, served, prompt_hash, _ in rows:
        mine, theirs = losses.get((prompt_hash, expert)), losses.get((prompt_hash, served))
        if mine is not None and theirs is not None:
            shadow_losses.append(mine)
            served_losses.append(theirs)
    loss: dict[str, Any] = {"n": len(shadow_losses), "shadow": None, "served": None, "difference": None}
    if shadow_losses:
        mine_a, theirs_a = np.array(shadow_losses), np.array(served_losses)
        difference = mine_a - theirs_a
        intervals = bootstrap_means([mine_a, theirs_a, difference])
        loss.update(shadow=_mean_with_interval(mine_a, intervals[0]),
                    served=_mean_with_interval(theirs_a, intervals[1]),
                    difference=_mean_with_interval(difference, intervals[2]))
    chosen: dict[str, int] = {}
    for expert, _, _, _ in rows:
        chosen[expert] = chosen.get(expert, 0) + 1
    return {
        "version": version_id, "decisions": n, "confidence": CONFIDENCE,
        "first_at": min(r[3] for r in rows).isoformat(), "last_at": max(r[3] for r in rows).isoformat(),
        "agreement": {"n": n, "agree": agree, "rate": agree / n, "low": low, "high": high},
        "loss": loss, "chosen": dict(sorted(chosen.items())),
    }
