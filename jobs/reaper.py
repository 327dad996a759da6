"""Find runs whose worker died (heartbeat silent too long), mark them lost and queue a new attempt.

Race-safe by construction: the runs are taken by one conditional ``UPDATE … WHERE status='running'
AND heartbeat_at < cutoff RETURNING``. On PostgreSQL a second reaper's UPDATE waits on the row lock
and then re-checks the WHERE against the committed row (now ``lost``), so it returns nothing; on
SQLite writers are serialised. Only the reaper that got a row back inserts its re-run, in the same
transaction. (RETURNING, not ``rowcount``: psycopg 3 reports -1 for some statements.)

Sending the re-run's Celery task is the caller's business (``workers.dispatch.reap``): jobs never
import the Celery layer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from jobs.runs import JobStatus, as_utc, db_now
from store.schema import JobRun, utcnow
from store.settings import Settings

_RUNS = JobRun.__table__


@dataclass(frozen=True)
class Reaped:
    """One lost run: its re-run's id, or None when it had used up its attempts (then it is failed)."""

    run_id: int
    kind: str
    worker: str | None
    attempt: int
    retry_id: int | None


def stale_cutoff(settings: Settings) -> object:
    """Heartbeats older than this are silent too long (database clock on PostgreSQL)."""
    window = dt.timedelta(seconds=settings.job_lost_after_seconds)
    return utcnow() - window if settings.is_sqlite else func.now() - window


def _since(value: dt.datetime | None) -> str:
    return "ever" if value is None else as_utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def reap_lost(session: Session, settings: Settings) -> list[Reaped]:
    """Mark silent runs lost and add their re-runs in ``session``'s transaction (the caller commits)."""
    now = db_now(settings)
    lost = session.execute(
        update(_RUNS)
        .where(_RUNS.c.status == JobStatus.RUNNING.value, _RUNS.c.heartbeat_at < stale_cutoff(settings))
        .values(status=JobStatus.LOST.value, finished_at=now)
        .returning(_RUNS.c.id, _RUNS.c.kind, _RUNS.c.params, _RUNS.c.trigger, _RUNS.c.attempt, _RUNS.c.worker,
                   _RUNS.c.heartbeat_at, _RUNS.c.progress)
    ).all()
    reaped = []
    for row in sorted(lost, key=lambda r: r.id):
        lost_at = f"lost at {100 * row.progress:.1f} %"
        silent = f"no heartbeat from {row.worker or 'its worker'} since {_since(row.heartbeat_at)}"
        if row.attempt >= settings.job_max_attempts:
            session.execute(update(_RUNS).where(_RUNS.c.id == row.id).values(
                status=JobStatus.FAILED.value,
                message=f"{lost_at}, gave up after {row.attempt} attempts (THALAMUS_JOB_MAX_ATTEMPTS): {silent}"))
            reaped.append(Reaped(row.id, row.kind, row.worker, row.attempt, None))
            continue
        retry = JobRun(kind=row.kind, params=row.params or {}, trigger=row.trigger, status=JobStatus.QUEUED.value,
                       attempt=row.attempt + 1, retry_of=row.id,
                       message=f"queued: re-run of lost run {row.id} "
                               f"(attempt {row.attempt + 1} of {settings.job_max_attempts})")
        session.add(retry)
        session.flush()
        session.execute(update(_RUNS).where(_RUNS.c.id == row.id).values(
            message=f"{lost_at}, re-queued as run {retry.id}: {silent}"))
        reaped.append(Reaped(row.id, row.kind, row.worker, row.attempt, retry.id))
    return reaped
