"""Checks the scheduler makes before a scheduled trigger: is there anything for the job to do?

A gate returns None (run it) or a ``Skip`` (record the trigger as ``skipped`` with its message).
Manual triggers (``thalamus jobs run``) are never gated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from store.db import session_scope
from store.schema import ExpertLoss, JobRun
from store.settings import Settings
from store.states import JobStatus


@dataclass(frozen=True)
class Skip:
    message: str
    details: dict[str, Any]


Gate = Callable[[Settings, str], Skip | None]  # (settings, job name)


def enough_new_loss_rows(settings: Settings, kind: str) -> Skip | None:
    """Skip when fewer than THALAMUS_MIN_NEW_ROWS_TO_TRAIN loss rows were written (inserted, or
    updated with a newer loss) since the last successful run of ``kind`` started.

    Rows written while that run went on count as new: it may not have read them. With no
    successful run yet every row counts. (On PostgreSQL ``started_at`` is the database's clock and
    ``created_at`` the writer's: hosts' clocks should agree to well within a training run.)
    """
    minimum = settings.min_new_rows_to_train
    if minimum <= 0:
        return None
    with session_scope(settings) as session:
        last = session.execute(
            select(JobRun.id, JobRun.started_at)
            .where(JobRun.kind == kind, JobRun.status == JobStatus.SUCCEEDED)
            .order_by(JobRun.id.desc()).limit(1)
        ).first()
        count = select(func.count()).select_from(ExpertLoss)
        if last is not None and last.started_at is not None:
            count = count.where(ExpertLoss.created_at >= last.started_at)
        new_rows = int(session.scalar(count) or 0)
    if new_rows >= minimum:
        return None
    since = "ever" if last is None else f"{kind} run {last.id} started"
    return Skip(f"skipped: {new_rows} new loss rows since {since}; "
                f"THALAMUS_MIN_NEW_ROWS_TO_TRAIN is {minimum}",
                {"new_rows": new_rows, "min_new_rows_to_train": minimum,
                 "since_run": None if last is None else last.id})
