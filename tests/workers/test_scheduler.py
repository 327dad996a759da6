from __future__ import annotations

from sqlalchemy import select

from store.db import session_scope
from store.schema import JobRun
from workers.scheduler import _trigger, background_scheduler


def test_intervals_become_jobs_and_zero_disables(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    settings = sqlite_settings.model_copy(update={"refresh_interval_minutes": 5.0, "train_interval_minutes": 0.0})
    scheduler = background_scheduler(settings)
    assert [job.id for job in scheduler.get_jobs()] == ["refresh_losses"]
    assert scheduler.get_job("refresh_losses").trigger.interval.total_seconds() == 300


def test_every_trigger_is_recorded_in_job_runs(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    _trigger(sqlite_settings, "refresh_losses")  # sent to the SQLite broker; no worker needed to record it
    with session_scope(sqlite_settings) as session:
        runs = list(session.scalars(select(JobRun)))
    assert [(r.kind, r.trigger, r.status) for r in runs] == [("refresh_losses", "schedule", "queued")]
    assert runs[0].task_id
