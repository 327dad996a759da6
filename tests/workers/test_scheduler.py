from __future__ import annotations

from sqlalchemy import select

from store.db import session_scope
from store.schema import JobRun
from workers.scheduler import _trigger, background_scheduler


def test_intervals_become_jobs_and_zero_disables(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    settings = sqlite_settings.model_copy(update={"refresh_interval_minutes": 5.0, "train_interval_minutes": 0.0})
    scheduler = background_scheduler(settings)
    assert [job.id for job in scheduler.get_jobs()] == ["refresh_losses", "reap_lost"]
    assert scheduler.get_job("refresh_losses").trigger.interval.total_seconds() == 300
    assert scheduler.get_job("reap_lost").trigger.interval.total_seconds() == settings.job_heartbeat_seconds == 30


def test_every_trigger_is_recorded_in_job_runs(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    _trigger(sqlite_settings, "refresh_losses")  # sent to the SQLite broker; no worker needed to record it
    with session_scope(sqlite_settings) as session:
        runs = list(session.scalars(select(JobRun)))
    assert [(r.kind, r.trigger, r.status) for r in runs] == [("refresh_losses", "schedule", "queued")]
    assert runs[0].task_id


def test_the_sweep_re_queues_a_silent_run_and_sends_its_task(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    from sqlalchemy import update

    from jobs.runs import claim, create_run, get_run, retry_of
    from store.schema import utcnow
    from workers.scheduler import _sweep

    run_id = create_run(sqlite_settings, "train_router", {}, "schedule")
    claim(sqlite_settings, run_id, "deadhost:1")
    with session_scope(sqlite_settings) as session:
        session.execute(update(JobRun).where(JobRun.id == run_id).values(heartbeat_at=utcnow() - dt.timedelta(hours=1)))
    _sweep(sqlite_settings)
    retry = retry_of(sqlite_settings, run_id)
    assert get_run(sqlite_settings, run_id).status == "lost"
    assert retry.status == "queued" and retry.task_id  # sent to the (SQLite) broker
    _sweep(sqlite_settings)
    assert retry_of(sqlite_settings, run_id).id == retry.id
